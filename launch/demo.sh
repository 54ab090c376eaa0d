#!/usr/bin/env bash
# `make demo`: the whole spine on CPU with 2 ranks, on the embedded corpus (the Python standard library):
#   1. prepare the corpus (SentencePiece BPE + Megatron indexed shards + manifest)
#   2. train model=tiny with torchrun --nproc-per-node 2 at TP=2 for DEMO_STEPS/2 steps, checkpointing
#   3. stop, resume from the checkpoint and continue to DEMO_STEPS steps (checkpoint.resume=auto)
#   4. export the final checkpoint to a Hugging Face folder, sample from it (pretrain.generate)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUN=${DEMO_RUN:-demo}
STEPS=${DEMO_STEPS:-600}
HALF=$((STEPS / 2))
DATA=checkpoints/data/stdlib_code
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} WANDB_MODE=${WANDB_MODE:-offline}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
# megatron-core and torch print deprecation notices that say nothing about this run.
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning,ignore::FutureWarning,ignore::DeprecationWarning}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/4 prepare the embedded corpus -> $DATA"
"$PY" -m data_pipeline output.dir="$DATA"
"$PY" -m data_pipeline.inspect "$DATA" --samples 1

TRAIN_ARGS=(model=tiny parallel=tp2 train=demo "data.paths=[$DATA]" run.name="$RUN" train.max_steps="$STEPS")
step "2/4 train model=tiny at TP=2 on 2 CPU ranks, stop after $HALF of $STEPS steps"
rm -rf "checkpoints/$RUN"
"$PY" -m torch.distributed.run --nproc-per-node 2 -m pretrain "${TRAIN_ARGS[@]}" \
  train.stop_at_step="$HALF"

step "3/4 resume from checkpoints/$RUN/latest and continue to step $STEPS"
"$PY" -m torch.distributed.run --nproc-per-node 2 -m pretrain "${TRAIN_ARGS[@]}"

step "4/4 export to Hugging Face format and sample from the exported model"
"$PY" -m pretrain.export_hf checkpoint="checkpoints/$RUN/latest" output="checkpoints/$RUN/hf" \
  overwrite=true sample_prompt=null
# the default prompt (sample.prompt, "def main(args):\n") encoded as the data was: no BOS,
# no trailing space; the text printed is the prompt + the continuation decoded in context
echo "---- sample from the exported Hugging Face model (python -m pretrain.generate) ----"
"$PY" -m pretrain.generate hf="checkpoints/$RUN/hf" max_new_tokens=64 temperature=0.8 top_k=40 \
  seed=0
echo
echo "Run folder: checkpoints/$RUN (metrics.jsonl, report.png, iter_*/, hf/, wandb/)"
