#!/usr/bin/env bash
# Launch pretraining on one node (or one node of a multi-node job) with torchrun.
#
#   launch/torchrun.sh [NPROC] [hydra overrides...]
#   launch/torchrun.sh 8 model=llama-1b parallel=tp2 data.paths=[/data/web] precision=bf16
#
# Multi-node without Slurm: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on every node.
set -euo pipefail
NPROC=${1:-2}
shift || true
PY=${PYTHON:-python}
exec "$PY" -m torch.distributed.run \
  --nnodes "${NNODES:-1}" \
  --node-rank "${NODE_RANK:-0}" \
  --nproc-per-node "$NPROC" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" \
  --master-port "${MASTER_PORT:-29500}" \
  -m pretrain "$@"
