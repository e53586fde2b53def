# calid-lightning: every entry point a user needs. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch to install. Default: the CPU wheel 2.13.0. On a CUDA cluster, e.g.
#   make install TORCH="torch==2.6.0 --index-url https://download.pytorch.org/whl/cu124"
# or TORCH=none to keep the torch already in a venv created with --system-site-packages.
TORCH ?= torch==2.13.0
PROFILE ?= quick
DATA ?= data_modules/phantom.yaml
PYTEST_FAST := -m "not slow and not ddp and not gpu"

.PHONY: help install test test-slow lint format phantom train-vae train-spatial train-2dt upsample bench bench-data bench-train reproduce-table sweep clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

install:  ## create .venv and install the package with its test tools
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ "$(TORCH)" != "none" ]; then $(PY) -m pip install -q $(TORCH); fi
	$(PY) -m pip install -q -e '.[dev]'

test:  ## the default (fast) test suite, CPU only
	$(PY) -m pytest -q $(PYTEST_FAST)

test-slow:  ## the slow, DDP and end-to-end tests
	$(PY) -m pytest -q -m "slow or ddp"

lint:  ## ruff check and format check
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format:  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

phantom:  ## write 20 phantom subjects to data/phantom
	$(VENV)/bin/calid phantom --out data/phantom --subjects 20 --seed 0

bench-data:  ## phantom generation and DataModule throughput
	$(PY) benchmarks/bench_data.py

clean:  ## remove runs, results and caches (keeps .venv and data)
	rm -rf runs results cache lightning_logs wandb
