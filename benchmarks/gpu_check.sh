#!/usr/bin/env bash
# One call on a GPU machine (docs/speed.md, "On a GPU"), at most 360 s (each step stopped at its
# limit, killed 10 s later if it goes on), correctness first: the machine, the CUDA tests,
# device decoding's pixels against PIL's (benchmarks/decoding.py), then benchmarks/gpu.py with
# its profile, the main process's cost per image of the loader (benchmarks/image_loader.py) and
# what a call costs whatever its size (benchmarks/call_cost.py).
# Everything lands in $OUT (default ./gpu-out), each step's exit status in its log. Needs the
# folder `make gpu-assets` fills (weights and photos), carried along with the tree.
#   OUT=/somewhere AML_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_check.sh
# BENCH_ARGS adds flags to the benchmark: a rehearsal on the CPU at a small size,
#   BENCH_ARGS="--images 12 --image-size 128 --tuples 10 --workers 1 --training" bash benchmarks/gpu_check.sh
# or, in a second call, the sections the first one's budget left out, e.g.
#   BENCH_ARGS="--networks= --no-cold-start --training" BENCH_BUDGET=300 BENCH_TIMEOUT=330 bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
# python3: the interpreter that holds torch on the GPU machines (their images may have no `python`)
export PYTHON=${PYTHON:-python3}
export AML_WEIGHTS_PATH="$PWD/gpu-assets/networks" AML_COMMIT="${AML_COMMIT:-unknown}" PYTHONPATH="$PWD"

step() {  # step SECONDS LOG COMMAND...: run, its output and exit status in LOG
  local seconds=$1 log=$2
  shift 2
  timeout -k 10 "$seconds" "$@" > "$log" 2>&1  # KILL 10 s after a TERM not heeded
  echo "rc=$?" >> "$log"
}

step 30 "$OUT/env.txt" bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; "$PYTHON" -c "
import os, sys, numpy, PIL, timm, torch, torchvision
print(sys.version.split()[0], {module.__name__: module.__version__ for module in (torch, torchvision, numpy, PIL, timm)})
print(torch.backends.cudnn.version(), torch.cuda.get_device_name(), os.cpu_count())"'
# the tests of the CUDA paths (their device-parametrised cases and the CUDA-only ones)
step "${TESTS_TIMEOUT:-60}" "$OUT/cudatests.log" "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda \
  tests/data/test_encoded_images.py tests/data/test_resampling.py tests/descriptors/test_extraction.py \
  tests/training/test_device_path.py tests/evaluation/test_whitening.py
step 20 "$OUT/decoding.log" "$PYTHON" benchmarks/decoding.py --json "$OUT/decoding.json"  # nvJPEG's pixels
step "${BENCH_TIMEOUT:-210}" "$OUT/gpu.log" "$PYTHON" benchmarks/gpu.py --photos gpu-assets/photos --profile \
  --budget "${BENCH_BUDGET:-160}" --json "$OUT/gpu.json" ${BENCH_ARGS:-}
step 20 "$OUT/image_loader.log" "$PYTHON" benchmarks/image_loader.py --workers 8 --repeats 3 \
  --json "$OUT/image_loader.json"
step 20 "$OUT/call_cost.log" "$PYTHON" benchmarks/call_cost.py --repeats 3 --json "$OUT/call_cost.json"
tail -n 3 "$OUT"/*.log
# a failing section or row is recorded in the JSON and the benchmark goes on (its rc stays 0)
if [ -f "$OUT/gpu.json" ]; then
    echo "sections and rows that failed in gpu.json: $(grep -c '"error"' "$OUT/gpu.json")"
fi
