#!/usr/bin/env bash
# Data preparation on a Slurm cluster as a job array, in three steps:
#   1. train (or copy) the tokenizer once, here on the login/submit node, so every task uses the same model;
#   2. an array of N tasks, task i tokenizing slice i of the shards into the same output dir;
#   3. a job depending on the whole array that verifies every shard and writes manifest.json.
# The result is byte-identical to a single `python -m data_pipeline` run with the same overrides.
#
#   launch/prepare_slurm.sh NUM_TASKS [hydra overrides...]
#   launch/prepare_slurm.sh 16 input=files 'input.paths=[/data/raw/*.jsonl.zst]' \
#       output.dir=/data/web output.num_shards=64 tokenizer=bpe_32k
#
# Environment: PYTHON (default .venv/bin/python), CPUS_PER_TASK (default 8: CPUs per array task),
# SLURM_LOG_DIR (default checkpoints: where the slurm-*.out logs go).
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:?usage: launch/prepare_slurm.sh NUM_TASKS [hydra overrides...]}
shift
PY=${PYTHON:-.venv/bin/python}
LOGS=${SLURM_LOG_DIR:-checkpoints}
mkdir -p "$LOGS"
"$PY" -m data_pipeline "$@" stage=tokenizer
array=$(sbatch --parsable --array=0-$((TASKS - 1)) --cpus-per-task="${CPUS_PER_TASK:-8}" \
  --output="$LOGS/slurm-%x-%A_%a.out" launch/slurm_prepare_array.sbatch "$@")
final=$(sbatch --parsable --dependency=afterok:"$array" --job-name=prepare-finalize \
  --output="$LOGS/slurm-%x-%j.out" --wrap "$PY -m data_pipeline $(printf '%q ' "$@") stage=finalize")
echo "submitted array job $array ($TASKS tasks) and finalize job $final"
