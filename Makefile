# Quick start: `make demo` (the demo on the shipped data and models) and `make test` (the tests) each set everything up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned only here, to the CPU build on this project's machines; the package itself accepts a range.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-slow demo bench bench-targets clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The demo needs only the package and its demo extra (nilearn, pydicom-data), not the test tools.
$(VENV)/.installed-demo: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	touch $@

# Builds the demo data (offline), restores its test scans with the shipped models, writes demo_output/.
demo: $(VENV)/.installed-demo
	$(BIN)/restore-rwkv demo --out demo_output --data data/demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -m slow

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/wkv.py
	$(BIN)/python benchmarks/model.py

# Issue-3 targets with the peer models (deepinv needs torchvision, hence its own environment).
BENCH_VENV ?= .venv-bench
BENCH_TORCH ?= torch==2.14.1 torchvision==0.29.1

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet $(BENCH_TORCH)
	$(BENCH_VENV)/bin/python -m pip install --quiet -e ".[bench]"
	touch $@

bench-targets: $(BENCH_VENV)/.installed
	cd benchmarks && ../$(BENCH_VENV)/bin/python targets.py --peers

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info src/*.egg-info .pytest_cache demo_output data/demo
