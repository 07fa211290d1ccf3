# One-command set-up, demo, tests and benchmark. Override PYTHON, VENV or DATA_ROOT if needed.
PYTHON ?= python3
VENV ?= .venv
DATA_ROOT ?= $(or $(AML_DATA_ROOT),data)
PY := $(VENV)/bin/python

# pytest-xdist: 2 workers of one thread each keep 2 cores busier than one worker of two
# threads (loading, Python and small tensors run in parallel too); tests of a file share a
# worker, and so their module fixtures. The files go out in the order tests/conftest.py sets
# (the longest first), not reordered by their number of tests.
XDIST := --dist loadfile --no-loadscope-reorder
# Where the tests write (pytest's tmp_path, 4.5 GB at make test's peak): a RAM disk
# (/dev/shm, a writable tmpfs) where it has 12 GB free, the machine 16 GB of memory available
# (the files and the tests' processes) and TMPDIR is not given, since the tests' training runs
# fsync every checkpoint (aml.utils.atomic), slower on a virtual disk (docs/tests.md, "Disk",
# says by how much). Elsewhere $TMPDIR (or /tmp) as it is.
RAM_DISK := $(shell [ "$$(stat -f -c %T /dev/shm 2> /dev/null)" = tmpfs ] && [ -w /dev/shm ] && \
	awk '/^MemAvailable:/ && $$2 >= 16 * 1048576 {found = 1} END {exit !found}' /proc/meminfo && \
	df -Pk /dev/shm | awk 'NR == 2 && $$4 >= 12 * 1048576 {print "/dev/shm"}')
TEST_TMPDIR := $(if $(TMPDIR),,$(RAM_DISK:%=TMPDIR=%))
PYTEST := $(TEST_TMPDIR) $(PY) -m pytest -q -n 2 $(XDIST)
# The tests whose outcome depends on float rounding, under another machine's CPU kernels, one
# thread per worker; the tests of a file on one worker, which trains its teacher (or starts its
# torchrun jobs) once.
# Only the files that mark such tests are collected (collecting the whole suite costs each
# worker 6 s); tests/test_conftest.py checks that every such test is marked in its own file.
ROUNDING_FILES := $(sort $(shell grep -rlE 'mark\.(learning|kernels)' tests --include='test_*.py'))
ROUNDING := $(TEST_TMPDIR) OMP_NUM_THREADS=1 $(PY) -m pytest -q $(XDIST) -m "learning or kernels" $(ROUNDING_FILES)
AVX2_WORKERS ?= 2
SSE41_WORKERS ?= 2

.PHONY: install demo test test-other-isa test-avx2 test-sse41 test-torch-2.11 bench gpu-assets lint docs docs-tables clean-data

# pip compiles every installed file (a minute for torch's CUDA build); instead, compile what
# aml's commands and tests import, once, by importing it (also where PYTHONDONTWRITEBYTECODE
# is set, which would otherwise make every process compile them again).
PRECOMPILE := import importlib, pkgutil, aml; [importlib.import_module(m.name) for m in \
	pkgutil.walk_packages(aml.__path__, "aml.") if not m.name.endswith("__main__")]; \
	import torch.distributed.run, torch.onnx, torch.utils.serialization, onnx, onnxruntime, faiss, timm, pytest, xdist; \
	import matplotlib.pyplot, matplotlib.backends.backend_agg; from PIL import Image; Image.init()

$(VENV)/.installed: requirements.txt requirements-data.txt requirements-docs.txt requirements-lint.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -r requirements.txt -r requirements-docs.txt -r requirements-lint.txt
	$(PY) -m pip install -q --no-compile --no-deps -r requirements-data.txt
	$(PY) -m pip install -q --no-compile --no-deps --no-build-isolation -e .
	env -u PYTHONDONTWRITEBYTECODE $(PY) -c '$(PRECOMPILE)'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m aml.demo --data-root $(DATA_ROOT)

test: install
	$(PYTEST) tests

# A machine without AVX-512 (e.g. an AMD EPYC before Zen 4): ATen's and oneDNN's AVX2 code.
test-avx2: install
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(ROUNDING) -n $(AVX2_WORKERS)

# An older machine: ATen's scalar kernels and oneDNN's SSE4.1 code.
test-sse41: install
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 $(ROUNDING) -n $(SSE41_WORKERS)

# Both at once (CI), on two workers each: the SSE4.1 set (ATen's scalar kernels, 2 to 5 times
# slower) takes the cores the AVX2 set leaves. Each set's output comes whole when it ends (make -O).
test-other-isa: install
	$(MAKE) --no-print-directory -j2 -O test-avx2 test-sse41

# The oldest torch aml supports (requirements-torch-2.11.txt), in a venv of its own: the tests of
# the code that follows torch's API from release to release (DistributedDataParallel, the
# extraction's streams and autocast, torch.fx, the exports), and of the benchmarks that
# benchmarks/gpu_check.sh runs on the GPU machine, whose torch is 2.11 (gpu.py and what it
# imports, decoding, image_loader, call_cost), not of those that run here alone.
OLD_VENV ?= .venv-torch-2.11
OLD_PY := $(OLD_VENV)/bin/python
GPU_CHECK_BENCHMARKS := $(addprefix tests/benchmarks/test_,call_cost.py decoding.py gpu_benchmark.py \
	gpu_targets.py image_loader.py record.py)
TORCH_API_TESTS := tests/training/test_distributed.py tests/training/test_parallel.py \
	tests/training/test_device_path.py tests/descriptors/test_extraction.py tests/networks \
	tests/data/test_encoded_images.py tests/data/test_resampling.py tests/export $(GPU_CHECK_BENCHMARKS)

# torch 2.11 comes from PyPI, a CUDA build: 6.8 GB of disk at most while pip installs it, 5.1 GB in
# the venv after; nothing is kept in pip's cache (--no-cache-dir), which would hold the downloads again.
# Its bytecode is compiled once, as in `install`: without it each of the lane's processes (the
# torchrun jobs' too) compiles torch again where PYTHONDONTWRITEBYTECODE is set, 5 s each.
$(OLD_VENV)/.installed: requirements.txt requirements-torch-2.11.txt requirements-data.txt setup.py
	$(PYTHON) -m venv $(OLD_VENV)
	$(OLD_PY) -m pip install -q --no-compile --no-cache-dir -r requirements-torch-2.11.txt \
		$$(sed -e 's/#.*//' requirements.txt | grep -E -v '^(torch|torchvision)==')
	$(OLD_PY) -m pip install -q --no-compile --no-deps -r requirements-data.txt
	env -u PYTHONDONTWRITEBYTECODE PYTHONPATH=$(CURDIR) $(OLD_PY) -c '$(PRECOMPILE)'
	touch $@

# aml itself from this folder (PYTHONPATH, inherited by the torchrun jobs the tests start).
test-torch-2.11: $(OLD_VENV)/.installed
	$(TEST_TMPDIR) PYTHONPATH=$(CURDIR) $(OLD_PY) -m pytest -q -n 2 $(XDIST) $(TORCH_API_TESTS)

bench: install
	$(PY) benchmarks/extract.py

# What benchmarks/gpu.py needs on a GPU machine without the weight packages (carried there).
gpu-assets: install
	$(PY) benchmarks/gpu_assets.py gpu-assets

# The code's checks (settings in pyproject.toml): lint, formatting, types.
lint: install
	$(VENV)/bin/ruff check aml
	$(VENV)/bin/ruff format --check aml
	$(VENV)/bin/mypy aml

# The site, strictly: a broken link, a missing page or an out-of-date table fails.
docs: install
	$(PY) docs/generate.py --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The docs' tables and plots, from benchmarks/results/*.json.
docs-tables: install
	$(PY) docs/generate.py

clean-data:
	rm -rf $(DATA_ROOT)/train/synth-sfm $(DATA_ROOT)/test/synth-oxford $(DATA_ROOT)/test/synth-paris $(DATA_ROOT)/demo
