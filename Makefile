# Litespark: `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.litespark-installed

.PHONY: venv demo test test-fast lint format gpu-test ds-configs clean

# torch==2.14.1 first: pip takes the wheel on local disk, and requirements.txt's torch>=2.6 is then met.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

DATA := data
DEMO_RUN := runs/demo
TRAIN := OMP_NUM_THREADS=1 $(PY) -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29533 \
	-m litespark.train --preset tiny --data $(DATA)/sample_train --run-dir $(DEMO_RUN) \
	--set data.tokenizer=$(DATA)/tokenizer.model --set data.split=95,5,0 --set optim.decay_iters=290 \
	--set run.log_interval=25 --set run.eval_interval=100 --set run.eval_iters=4 --set checkpoint.save_interval=100

# Sample corpus -> tokenizer -> indexed dataset (kept when present), then tiny on 2 CPU processes
# (DP=2, ZeRO-1): 150 steps, then the same job to 300 steps, which resumes from the checkpoint.
demo: venv $(DATA)/sample_train.idx
	rm -rf $(DEMO_RUN)
	$(TRAIN) --train-iters 150
	$(TRAIN) --train-iters 300
	@echo "demo run: $(DEMO_RUN) (metrics.jsonl, tensorboard/, checkpoints/)"

$(DATA)/tokenizer.model:
	$(PY) data_prep/make_sample.py --out $(DATA)/sample
	$(PY) data_prep/train_tokenizer.py --input $(DATA)/sample/train --vocab-size 512 --out $@

$(DATA)/sample_train.idx: $(DATA)/tokenizer.model
	$(PY) data_prep/tokenize_slimpajama.py --input $(DATA)/sample/train --tokenizer $< --output-prefix $(DATA)/sample_train

# Every CPU test (what CI runs); GPU tests skip themselves without CUDA.
test: venv
	$(PY) -m pytest -q -rs

# The edit loop: the tests not marked slow (no subprocesses, no process groups of several processes).
test-fast: venv
	$(PY) -m pytest -q -rs -m "not slow"

# ruff (lint + format check), mypy over the package, the patches and data_prep, and the generated
# ds_configs/ compared with the code; CI runs it before the tests.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) ds_configs/generate.py --check

# Rewrite the files in place with ruff's fixes and formatter.
format: venv
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# On a CUDA host with Transformer Engine installed (see docs/gpu.md).  Only the *_gpu.py files are
# collected: the CPU tests' own imports (zstandard, datasets) need not be installed there.
gpu-test:
	python -m pytest -v -m gpu tests/*/*_gpu.py

ds-configs: venv
	$(PY) ds_configs/generate.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
