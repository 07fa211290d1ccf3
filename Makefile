# One-command set-up, demo, tests and benchmark. Override PYTHON, VENV or DATA_ROOT if needed.
PYTHON ?= python3
VENV ?= .venv
DATA_ROOT ?= data
PY := $(VENV)/bin/python

# pytest-xdist: 2 workers of one thread each keep 2 cores busier than one worker of two
# threads (loading, Python and small tensors run in parallel too); tests of a file share a
# worker, and so their module fixtures.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile
# The tests whose outcome depends on float rounding, under another machine's CPU kernels: few
# and long, so spread one by one (the torchrun tests stay together: xdist_group).
ROUNDING := $(PY) -m pytest -q -n 2 --dist loadgroup -m "learning or kernels"
AVX2 := ATEN_CPU_CAPABILITY=avx2//env:ONEDNN_MAX_CPU_ISA=AVX2
SSE41 := ATEN_CPU_CAPABILITY=default//env:ONEDNN_MAX_CPU_ISA=SSE41

.PHONY: install demo test test-other-isa test-avx2 test-sse41 bench clean-data

$(VENV)/.installed: requirements.txt requirements-data.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-data.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m aml.demo --data-root $(DATA_ROOT)

test: install
	$(PYTEST) tests

# A machine without AVX-512 (e.g. AMD EPYC): ATen's and oneDNN's AVX2 code.
test-avx2: install
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(ROUNDING) tests

# An older machine: ATen's scalar kernels and oneDNN's SSE4.1 code.
test-sse41: install
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 $(ROUNDING) tests

# Both at once: one pytest-xdist worker per kernel set, each running every such test.
test-other-isa: install
	$(PY) -m pytest -q --dist each --tx "popen//env:$(AVX2)" --tx "popen//env:$(SSE41)" -m "learning or kernels" tests

bench: install
	$(PY) benchmarks/extract.py

clean-data:
	rm -rf $(DATA_ROOT)/train/synth-sfm $(DATA_ROOT)/test/synth-oxford $(DATA_ROOT)/test/synth-paris $(DATA_ROOT)/demo
