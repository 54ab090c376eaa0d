#!/usr/bin/env bash
# `make finetune-demo`: LoRA supervised fine-tuning of the `make demo` base model for code generation,
# on CPU with 2 ranks at TP=2, on the embedded code-instruction corpus (docs/finetuning.md):
#   0. the base: checkpoints/demo (trained by launch/demo.sh first when it is missing)
#   1. prepare prompt/completion pairs from the running Python's standard library (signature +
#      docstring -> body), train and held-out modules apart, with the base model's tokenizer
#   2. SFT with LoRA (objective=sft peft=lora) at TP=2 on 2 CPU ranks, held-out loss before and after
#   3. export: the base, the merged model and the adapter alone (PEFT format)
#   4. generate a function body for a held-out signature with the merged model
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BASE_RUN=${DEMO_RUN:-demo}
RUN=${FINETUNE_RUN:-demo-sft}
STEPS=${FINETUNE_STEPS:-200}
BASE=checkpoints/$BASE_RUN
TRAIN_DATA=checkpoints/data/stdlib_instruct
HELDOUT_DATA=checkpoints/data/stdlib_instruct_heldout
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} WANDB_MODE=${WANDB_MODE:-offline}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning,ignore::FutureWarning,ignore::DeprecationWarning}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [[ ! -f "$BASE/latest" ]]; then
  step "0/4 no base model in $BASE: running the pretraining demo first (launch/demo.sh)"
  DEMO_RUN="$BASE_RUN" bash launch/demo.sh
fi
TOKENIZER=checkpoints/data/stdlib_code/tokenizer.model

step "1/4 prepare code-instruction pairs from the stdlib (train and held-out modules)"
for SUBSET in train heldout; do
  OUT=$TRAIN_DATA; [[ $SUBSET == heldout ]] && OUT=$HELDOUT_DATA
  "$PY" -m data_pipeline input=stdlib_instruct input.subset="$SUBSET" output.dir="$OUT" \
    tokenizer=pretrained tokenizer.model="$TOKENIZER" input.max_tokens=257 input.overlong=drop
done
"$PY" -m data_pipeline.inspect "$HELDOUT_DATA" --samples 1

step "2/4 SFT with LoRA of $BASE at TP=2 on 2 CPU ranks, $STEPS steps"
rm -rf "checkpoints/$RUN"
"$PY" -m torch.distributed.run --nproc-per-node 2 -m pretrain model=tiny parallel=tp2 \
  objective=sft peft=lora checkpoint.load="$BASE/latest" checkpoint.weights_only=true \
  "data.paths=[$TRAIN_DATA]" "data.valid_paths=[$HELDOUT_DATA]" run.name="$RUN" \
  train=demo train.seq_length=256 train.max_steps="$STEPS" train.log_interval=10 \
  optim.lr=1e-2 optim.min_lr=1e-3 optim.warmup_steps=10 eval.at_start=true eval.interval=50 \
  eval.iters=4 sample.enabled=false
"$PY" - "checkpoints/$RUN/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
valid = [(r["step"], r["valid_loss"]) for r in rows if "valid_loss" in r]
(s0, before), (s1, after) = valid[0], valid[-1]
print(f"held-out completion loss (mean over completion tokens): step {s0}: {before:.3f} -> step {s1}: {after:.3f}")
PYEOF

step "3/4 export the base, the merged model and the LoRA adapter (PEFT format)"
"$PY" -m pretrain.export_hf checkpoint="$BASE/latest" output="checkpoints/$RUN/base_hf" \
  overwrite=true sample_prompt=null
"$PY" -m pretrain.export_hf checkpoint="checkpoints/$RUN/latest" output="checkpoints/$RUN/hf" \
  adapter_output="checkpoints/$RUN/adapter" adapter_base="checkpoints/$RUN/base_hf" \
  overwrite=true sample_prompt=null

step "4/4 generate a function body for a held-out signature (merged model)"
# the prompt (mask-0 tokens) of the first held-out example, decoded with the data's tokenizer
PROMPT=$("$PY" - "$HELDOUT_DATA" <<'PYEOF'
import json, sys, warnings
from pathlib import Path
import sentencepiece as spm
warnings.simplefilter("ignore")
from megatron.core.datasets.indexed_dataset import IndexedDataset
data = Path(sys.argv[1])
manifest = json.loads((data / "manifest.json").read_text())
shard = manifest["shards"][0]
tokens_ds = IndexedDataset(str(data / shard["prefix"]))  # keep: its arrays view the mmap
mask_ds = IndexedDataset(str(data / shard["loss_mask"]["prefix"]))
tokens, mask = tokens_ds[0], mask_ds[0]
prompt = [int(t) for t, m in zip(tokens, mask) if m == 0]
sp = spm.SentencePieceProcessor(model_file=str(data / manifest["tokenizer"]["path"]))
sys.stdout.write(sp.decode(prompt) + ".")  # "." keeps the trailing newline through $(...)
PYEOF
)
PROMPT=${PROMPT%.}
printf -- '---- prompt (held-out module) ----\n%s' "$PROMPT"
echo "---- base model ----"
"$PY" -m pretrain.generate hf="checkpoints/$RUN/base_hf" prompt="$PROMPT" max_new_tokens=64 temperature=0
echo
echo "---- fine-tuned (merged LoRA) ----"
"$PY" -m pretrain.generate hf="checkpoints/$RUN/hf" prompt="$PROMPT" max_new_tokens=64 temperature=0
echo
echo "Run folder: checkpoints/$RUN (metrics.jsonl, iter_*/ adapters only, hf/, adapter/, base_hf/)"
