#!/usr/bin/env bash
# Submit launch/slurm_pretrain.sbatch after validating the config on this (login) node for the
# job's world size, so that a bad layout or a missing dataset fails in seconds, not after the
# queue:
#
#   launch/sbatch_pretrain.sh [sbatch options] -- [hydra overrides]
#   launch/sbatch_pretrain.sh --nodes=4 --gpus-per-node=8 --partition=gpu --account=proj \
#       --time=24:00:00 -- model=llama-8b parallel=tp8 'data.paths=[/data/web]'
#
# World size = nodes (--nodes/-N, default 1) x processes per node (NPROC_PER_NODE, else
# --gpus-per-node, else 1). Exit 2 with the config error and nothing queued; else sbatch's
# output (the job id). Environment as for the sbatch script (PYTHON, NPROC_PER_NODE, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OPTS=() NODES=1 GPUS=
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --nodes=*) NODES=${1#*=} ;;
    -N | --nodes) OPTS+=("$1"); shift; NODES=${1:?--nodes needs a value} ;;
    -N*) NODES=${1#-N} ;;
    --gpus-per-node=*) GPUS=${1#*=} GPUS=${GPUS##*:} ;;
    --gpus-per-node) OPTS+=("$1"); shift; GPUS=${1:?--gpus-per-node needs a value} GPUS=${GPUS##*:} ;;
  esac
  OPTS+=("$1")
  shift
done
[ "${1:-}" = "--" ] && shift
NODES=${NODES%%-*}  # --nodes=2-4: validate for the minimum
NPROC=${NPROC_PER_NODE:-${GPUS:-1}}
WORLD=$((NODES * NPROC))
echo "validating the config for $NODES node(s) x $NPROC processes = world size $WORLD"
"$PY" -m pretrain.launch.resolve --check --world-size "$WORLD" "$@" >/dev/null
exec sbatch "${OPTS[@]}" launch/slurm_pretrain.sbatch "$@"
