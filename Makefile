# Litespark: `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.litespark-installed

.PHONY: venv demo test test-fast gpu-test ds-configs clean

# torch==2.14.1 first: pip takes the wheel on local disk, and requirements.txt's torch>=2.6 is then met.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m litespark.train --preset tiny --print-config
	$(PY) -m litespark.train --preset tiny --smoke

test: venv
	$(PY) -m pytest -q -rs

test-fast: venv
	$(PY) -m pytest -q -rs -m "not slow"

# On a CUDA host with Transformer Engine installed (see docs/gpu.md).
gpu-test:
	python -m pytest -v -m gpu tests/test_gpu.py

ds-configs: venv
	$(PY) ds_configs/generate.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
