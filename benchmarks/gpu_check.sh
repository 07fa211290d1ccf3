#!/usr/bin/env bash
# One call on a GPU machine (docs/speed.md, "On a GPU"): the machine, benchmarks/gpu.py with
# its profile, the main process's cost per image of the loader (benchmarks/image_loader.py),
# what a call costs whatever its size (benchmarks/call_cost.py), device decoding's pixels
# against PIL's (benchmarks/decoding.py), then the CUDA tests, within 570 s. Everything lands in $OUT (default ./gpu-out). Needs the folder `make
# gpu-assets` fills (weights and photos), carried along with the tree.
#   OUT=/somewhere AML_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_check.sh
# BENCH_ARGS adds flags to the benchmark: a rehearsal on the CPU at a small size,
#   BENCH_ARGS="--images 12 --image-size 128 --tuples 10 --workers 1 --training" bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export AML_WEIGHTS_PATH="$PWD/gpu-assets/networks" AML_COMMIT="${AML_COMMIT:-unknown}" PYTHONPATH="$PWD"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c 'import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__,
torch.backends.cudnn.version(), torch.cuda.get_device_name(), __import__("os").cpu_count())'
} > "$OUT/env.txt" 2>&1
timeout "${BENCH_TIMEOUT:-400}" python benchmarks/gpu.py --photos gpu-assets/photos --profile \
  --json "$OUT/gpu.json" ${BENCH_ARGS:-} > "$OUT/gpu.log" 2>&1
echo "rc=$?" >> "$OUT/gpu.log"
timeout 20 python benchmarks/image_loader.py --workers 8 --repeats 3 --json "$OUT/image_loader.json" \
  > "$OUT/image_loader.log" 2>&1
timeout 30 python benchmarks/call_cost.py --repeats 3 --json "$OUT/call_cost.json" > "$OUT/call_cost.log" 2>&1
timeout 30 python benchmarks/decoding.py --json "$OUT/decoding.json" > /dev/null 2>&1  # nvJPEG's pixels against PIL's
timeout "${TESTS_TIMEOUT:-90}" python -m pytest -q -p no:cacheprovider -k "cuda or precision" \
  tests/data/test_encoded_images.py tests/data/test_resampling.py tests/descriptors/test_extraction.py \
  tests/networks/test_precision.py tests/training/test_device_path.py tests/evaluation/test_whitening.py \
  > "$OUT/cudatests.log" 2>&1
echo "rc=$?" >> "$OUT/cudatests.log"
tail -n 5 "$OUT/gpu.log" "$OUT/cudatests.log"
