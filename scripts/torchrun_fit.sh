#!/bin/bash
# `calid fit` on NNODES nodes x GPUS processes with torchrun (no SLURM; under SLURM use scripts/slurm/train.sbatch).
#
# Run the same command on every node, each with its own NODE_RANK (0 .. NNODES-1); MASTER_ADDR is node 0:
#   NNODES=2 NODE_RANK=0 GPUS=4 MASTER_ADDR=node0.example.org MASTER_PORT=29500 \
#     scripts/torchrun_fit.sh -c experiments/calid_spatial.yaml -c data_modules/ukbb.yaml [--more.overrides]
# One machine, 4 GPUs: GPUS=4 scripts/torchrun_fit.sh -c ... (NNODES=1, MASTER_ADDR=127.0.0.1 by default).
#
# Lightning detects torchrun (TorchElasticEnvironment); this script sets trainer.strategy=ddp, devices=GPUS and
# num_nodes=NNODES to match. The learning rate is used as configured, never scaled: the run prints and logs
# its effective global batch size (batch_size x GPUS x NNODES x accumulate_grad_batches).
# Data: only global rank 0 runs the DataModule's prepare_data (phantom generation); other nodes must see its
# files (a shared filesystem), or prepare the data first (e.g. `make phantom`).
#
# Variables: NNODES (default 1), NODE_RANK (0), GPUS (1), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500),
#            PYTHON (python: the environment's interpreter, e.g. .venv/bin/python).
set -euo pipefail

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
GPUS=${GPUS:-1}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-python}

exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --nproc-per-node="$GPUS" --node-rank="$NODE_RANK" \
  --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" \
  -m calid_lightning.cli fit "$@" \
  --trainer.strategy=ddp --trainer.devices="$GPUS" --trainer.num_nodes="$NNODES"
