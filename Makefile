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

.PHONY: help install test test-slow mutation lint format phantom train-vae train-spatial train-inflated train-pixel train-segmenter evaluate upsample bench bench-data bench-train bench-generalisation reproduce-table sweep clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

install:  ## create .venv and install the package with its test tools
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ "$(TORCH)" != "none" ]; then $(PY) -m pip install -q $(TORCH); fi
	$(PY) -m pip install -q -e '.[dev]'

test:  ## the default (fast) test suite, CPU only
	$(PY) -m pytest -q $(PYTEST_FAST)

test-slow:  ## the slow, DDP and end-to-end tests
	$(PY) -m pytest -q -m "slow or ddp"

# Not in the default suite: a fresh run takes ~20 min on 2 cores. Configured in pyproject [tool.mutmut]
# (the modules mutated, the fast tests run); `mutmut show NAME` prints a surviving mutant's diff.
mutation:  ## mutation testing of the core modules (mutmut): killed ratio and the surviving mutants
	rm -rf mutants
	nice -n 19 $(VENV)/bin/mutmut run --max-children $(or $(JOBS),2) > /dev/null
	$(VENV)/bin/mutmut export-cicd-stats
	$(PY) -c "import json; s = json.load(open('mutants/mutmut-cicd-stats.json')); \
		print(f\"killed {s['killed']} of {s['total']} mutants ({100 * s['killed'] / s['total']:.1f} %)\")"
	$(VENV)/bin/mutmut results

lint:  ## ruff check and format check
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format:  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

CALID := $(VENV)/bin/calid
# Profile overrides come last so they win over the data config: PROFILE=paper uses the GPU-cluster sizes.
profile = $(if $(filter paper,$(PROFILE)),-c experiments/profiles/paper/$(1).yaml)
SPATIAL_CKPT ?= runs/calid_spatial/$(PROFILE)/checkpoints/last.ckpt

phantom:  ## write 20 phantom subjects to data/phantom
	$(CALID) phantom --out data/phantom --subjects 20 --seed 0

train-vae:  ## train the VAE (PROFILE=quick|paper, DATA=data_modules/<source>.yaml)
	$(CALID) fit -c experiments/vae.yaml -c $(DATA) $(call profile,vae) $(ARGS)

train-spatial:  ## train the spatial CaLID interpolator on the trained VAE
	$(CALID) fit -c experiments/calid_spatial.yaml -c $(DATA) $(call profile,calid_spatial) $(ARGS)

train-inflated:  ## inflate the trained spatial CaLID into 2D+T (temporal layers) and fine-tune it on cines
	$(CALID) fit -c experiments/calid_inflated.yaml -c $(DATA) $(call profile,calid_inflated) $(ARGS)

train-pixel:  ## train the pixel-space diffusion interpolator (the latent-vs-pixel reference)
	$(CALID) fit -c experiments/pixel_spatial.yaml -c $(DATA) $(call profile,pixel_spatial) $(ARGS)

train-segmenter:  ## train the downstream segmenter on the dense ground-truth slices
	$(CALID) fit -c experiments/segmenter.yaml -c $(DATA) $(call profile,segmenter) $(ARGS)

evaluate:  ## held-out PSNR/SSIM of CaLID and the baselines at FACTOR (default 4) -> results/eval/
	$(CALID) evaluate --data $(DATA) --checkpoint $(SPATIAL_CKPT) --factor $(or $(FACTOR),4) \
		--methods calid,lerp,slerp,linear,cubic,nearest --out results/eval/spatial_x$(or $(FACTOR),4).csv $(ARGS)

upsample:  ## upsample INPUT=sparse.nii.gz to OUTPUT=dense.nii.gz with the trained CaLID (FACTOR=4)
	$(CALID) upsample --checkpoint $(SPATIAL_CKPT) --input $(INPUT) --output $(OUTPUT) --factor $(or $(FACTOR),4)

sweep:  ## W&B sweep (SWEEP=experiments/sweeps/vae.yaml COUNT=8); offline sweeps engine without credentials
	$(CALID) sweep $(or $(SWEEP),experiments/sweeps/vae.yaml) --count $(or $(COUNT),8) $(ARGS)

bench-data:  ## seconds per phantom subject, DataModule samples/s (0 and 2 workers)
	$(PY) benchmarks/bench_phantom.py
	$(PY) benchmarks/bench_datamodule.py

# CPU: ARGS="--slices 4 --steps 10" keeps the pixel-space model to minutes; the defaults (50 steps) suit a GPU.
bench:  ## s/volume x4 per method and the pixel/CaLID ratio (CHECKPOINT=, PIXEL_CHECKPOINT= or untrained)
	$(PY) benchmarks/bench_upsample.py $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
		$(if $(PIXEL_CHECKPOINT),--pixel-checkpoint $(PIXEL_CHECKPOINT)) $(ARGS)

bench-generalisation:  ## the table's models on phantom settings they were not trained on (RUNS=, after reproduce-table)
	bash benchmarks/generalisation.sh $(or $(RUNS),runs/table/quick/phantom)

reproduce-table:  ## the whole chain: data, models, evaluation, figures -> results/table.md (PROFILE=, DATA=)
	$(CALID) reproduce --profile experiments/reproduce/$(PROFILE).yaml --data $(DATA) $(ARGS)

# CPU: ARGS="--threads 2 --steps 5 --batches 20"; GPU: ARGS="--profile paper" (fp32 and bf16-mixed)
bench-train:  ## training samples/s per model, data loading vs compute share
	$(PY) benchmarks/bench_train.py $(ARGS)

clean:  ## remove runs, results and caches (keeps .venv and data)
	rm -rf runs results cache lightning_logs wandb
