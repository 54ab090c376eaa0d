# Short entry points. `make setup` is idempotent; every other target runs it first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
SRC := data_pipeline pretrain conf hydra_plugins tests bench
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo finetune-demo test test-fast test-dist test-gpu lint format bench clean

setup: $(VENV)/.installed

# --system-site-packages lets a cluster's preinstalled (CUDA) torch be used as is.
# torch==2.13.0 is the CPU wheel on our machines' disk; installed only when no torch imports.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv --system-site-packages $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,slurm]"
	@touch $@

demo: setup
	bash launch/demo.sh

# LoRA SFT of the demo's base model (runs `make demo` first when checkpoints/demo is missing)
finetune-demo: setup
	bash launch/finetune_demo.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not distributed and not slow" $(PYTEST_ARGS)

test-dist: setup
	$(PY) -m pytest -m distributed $(PYTEST_ARGS)

test-gpu: setup
	$(PY) -m pytest -m gpu -p no:cacheprovider -o addopts="" $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check $(SRC)
	$(PY) -m ruff format --check $(SRC)

format: setup
	$(PY) -m ruff check --fix $(SRC)
	$(PY) -m ruff format $(SRC)

bench: setup
	$(PY) bench/dataprep.py
	$(PY) bench/train.py
	$(PY) bench/checkpoint.py
	$(PY) bench/finetune.py

clean:
	rm -rf checkpoints/data checkpoints/demo*

# GPU machine without network (docs/gpu_check.md): wheels it lacks -> .gpu-wheels/ (here), then
# `bash launch/gpu_check.sh` there (installs them offline, GPU tests, bench/train.py --gpu).
.PHONY: gpu-wheels gpu-check
gpu-wheels: setup
	$(PY) launch/gpu_wheels.py

gpu-check:
	bash launch/gpu_check.sh
