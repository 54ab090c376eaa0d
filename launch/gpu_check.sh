#!/usr/bin/env bash
# launch/gpu_check.sh: the whole GPU path on one offline CUDA machine, in under 9 minutes
# (docs/gpu_check.md). Run from anywhere; it works in the repository root:
#   1. env      torch / CUDA / GPU / Transformer Engine / Apex (no CUDA: say so, skip the rest)
#   2. install  .gpu-wheels/*.whl (from `make gpu-wheels`) and the project's own wheel (built
#               here from this tree) offline into a --target folder on PYTHONPATH; imports; pip check
#   3. data     python -m data_pipeline on the embedded corpus (8k BPE), in the background
#   4. tests    make test-gpu (pytest -m gpu) against this python, no venv, no network
#   5. bench    bench/train.py --gpu --data DIR: ~1B Llama-style model, bf16, tokens/s, MFU
# then one summary block (launch/gpu_check_report.py), also as JSON in $OUT/gpu_check.json when
# $OUT is set (and the full log as $OUT/gpu_check.log).
# Exit: 0 pass; 1 a phase or a test failed; 2 no torch / no CUDA / no wheels (nothing run).
# Environment: GPU_PYTHON (default python3: the image's torch), GPU_WHEELS (.gpu-wheels),
# GPU_CHECK_DIR (/tmp/gpu_check), GPU_CHECK_BENCH_STEPS (6), GPU_CHECK_BENCH_WARMUP (2),
# per-phase limits in seconds GPU_CHECK_T_ENV (45) _INSTALL (60) _DATA (150) _TESTS (240)
# _BENCH (170); the sum of env, install, tests and bench is the budget (data overlaps tests);
# GPU_CHECK_DATA_ARGS: more data_pipeline overrides; GPU_CHECK_FORCE=1 runs every phase even
# without CUDA (to try the script on a CPU machine: the GPU tests then skip, the bench refuses).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
WORK=${GPU_CHECK_DIR:-/tmp/gpu_check}
WHEELS=${GPU_WHEELS:-$REPO/.gpu-wheels}
T_ENV=${GPU_CHECK_T_ENV:-45} T_INSTALL=${GPU_CHECK_T_INSTALL:-60} T_DATA=${GPU_CHECK_T_DATA:-150}
T_TESTS=${GPU_CHECK_T_TESTS:-240} T_BENCH=${GPU_CHECK_T_BENCH:-170}
BENCH_STEPS=${GPU_CHECK_BENCH_STEPS:-6} BENCH_WARMUP=${GPU_CHECK_BENCH_WARMUP:-2}
BUDGET=$((T_ENV + T_INSTALL + T_TESTS + T_BENCH))
SITE=$WORK/site LOGS=$WORK/logs DATA=$WORK/data/stdlib_code
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} WANDB_MODE=${WANDB_MODE:-offline}
export WANDB_SILENT=true HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

rm -rf "$SITE" "$LOGS" "$WORK/data" "$WORK/venv" "$WORK"/{phases.tsv,env.json,gpu_tests.xml,total_s}
mkdir -p "$LOGS" || exit 2
echo "$BUDGET" >"$WORK/budget_s"
T0=$(date +%s.%N)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
banner() { printf '\n\033[1m== gpu_check %s\033[0m\n' "$*"; }

# run_phase NAME LIMIT_S CMD...: output to the screen and logs/NAME.log, one line in phases.tsv.
run_phase() {
  local name=$1 limit=$2 start rc
  shift 2
  banner "$name (limit ${limit} s): ${PHASE_DESC:-$*}"
  PHASE_DESC=
  start=$(now)
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  rc=${PIPESTATUS[0]}
  record "$name" "$rc" "$(since "$start")" "$limit"
  return "$rc"
}
record() {  # NAME RC WALL LIMIT
  local status=ok
  if [[ $2 == 124 || $2 == 137 ]]; then status=timeout; elif [[ $2 != 0 ]]; then status=failed; fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$status" "$2" "$3" "$4" >>"$WORK/phases.tsv"
  echo "-- $1: $status (rc $2, $3 s)"
}
skip() { for p in "$@"; do printf '%s\tskipped\t0\t0\t0\n' "$p" >>"$WORK/phases.tsv"; done; }
finish() {
  since "$T0" >"$WORK/total_s"
  local py=$PY
  command -v "$py" >/dev/null 2>&1 || py=python3
  "$py" "$REPO/launch/gpu_check_report.py" "$WORK" "${OUT:+$OUT/gpu_check.json}"
  exit $?
}
no_gpu() {  # REASON: record it, skip the rest, summary, exit 2
  echo "gpu_check: $1" >&2
  "$PY" - "$WORK/env.json" "$1" <<'EOF' 2>/dev/null || printf '{"skip_reason": "%s"}\n' "$1" >"$WORK/env.json"
import json, sys
path, reason = sys.argv[1:]
try:
    env = json.load(open(path))
except Exception:
    env = {}
env["skip_reason"] = reason
json.dump(env, open(path, "w"))
EOF
  skip install data tests bench
  finish
}

main() {
# -- 1. env ------------------------------------------------------------------------------------
PY=${GPU_PYTHON:-python3}
if ! PY=$(command -v "$PY"); then
  PY=${GPU_PYTHON:-python3}
  record env 127 0 "$T_ENV"
  no_gpu "no interpreter '$PY' on PATH (set GPU_PYTHON=/path/to/python with a CUDA torch)"
fi
run_phase env "$T_ENV" "$PY" - "$WORK/env.json" <<'EOF'
import importlib, json, platform, shutil, subprocess, sys

env = {"python": platform.python_version(), "python_path": sys.executable}
try:
    import torch
except Exception as e:  # noqa: BLE001
    env["skip_reason"] = f"{sys.executable} cannot import torch ({e}); set GPU_PYTHON"
    json.dump(env, open(sys.argv[1], "w"))
    print(env["skip_reason"])
    sys.exit(0)
env.update(torch=torch.__version__, cuda=torch.version.cuda, gpus=torch.cuda.device_count())
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    env.update(gpu=props.name, gpu_mem_gib=round(props.total_memory / 2**30, 1),
               capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    torch.ones(1, device="cuda").sum().item()  # the driver really answers
else:
    env["skip_reason"] = (
        f"no CUDA: torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no GPU"
        " (torch.cuda.is_available() is False); the GPU tests and the benchmark need one"
    )
if shutil.which("nvidia-smi"):
    q = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    r = subprocess.run(q, capture_output=True, text=True)
    env["driver"] = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout else None
for key, mod in (("te", "transformer_engine"), ("apex", "apex"), ("flash_attn", "flash_attn")):
    try:
        m = importlib.import_module(mod)
        env[key] = getattr(m, "__version__", "importable")
    except Exception as e:  # noqa: BLE001
        env[key] = f"not importable ({type(e).__name__})"
json.dump(env, open(sys.argv[1], "w"))
print(json.dumps(env, indent=1))
EOF
[[ -s $WORK/env.json ]] || no_gpu "the env probe with $PY failed (see above)"
REASON=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("skip_reason") or "")' \
  "$WORK/env.json")
if [[ -n $REASON ]]; then
  if [[ ${GPU_CHECK_FORCE:-0} == 1 && $REASON == "no CUDA"* ]]; then
    echo "gpu_check: $REASON; GPU_CHECK_FORCE=1: running every phase anyway"
    "$PY" -c 'import json,sys; p=sys.argv[1]; e=json.load(open(p)); e["forced"]=True
json.dump(e, open(p, "w"))' "$WORK/env.json"
  else
    no_gpu "$REASON"
  fi
fi

# -- 2. install --------------------------------------------------------------------------------
shopt -s nullglob
WHL=("$WHEELS"/*.whl)
if ((${#WHL[@]} == 0)); then
  no_gpu "no wheels in $WHEELS: run 'make gpu-wheels' where pip reaches PyPI, and name .gpu-wheels in the device call's carry"
fi
# The project is installed too, as a wheel built here from this tree (conf/ ships as the package
# pretrain_pipeline_conf), with setuptools from $WHEELS/build (the image's if that fails).
# shellcheck disable=SC2317  # run by the timeout-guarded bash below
do_install() {
  set -e
  local src=$WORK/src dist=$WORK/dist
  rm -rf "$src" "$dist"
  mkdir -p "$src"
  tar -C "$REPO" --exclude=./.git --exclude=./.gpu-wheels --exclude=./.venv --exclude=./.gl \
    --exclude=./.whl --exclude=./checkpoints --exclude=./build --exclude=__pycache__ \
    --exclude='*.egg-info' -cf - . | tar -C "$src" -xf -
  echo "+ pip wheel --no-index --no-deps --find-links $WHEELS/build $src"
  "$PY" -m pip wheel -q --no-index --no-deps --find-links "$WHEELS/build" -w "$dist" "$src" ||
    "$PY" -m pip wheel -q --no-index --no-deps --no-build-isolation -w "$dist" "$src"
  echo "+ pip install --no-index --no-deps --target $SITE $WHEELS/*.whl $(cd "$dist" && echo *.whl)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl "$dist"/*.whl
  (cd "$WORK" && "$PY" -W ignore -c "
import megatron.core, hydra, omegaconf, datasets, wandb, kitoken, zstandard
import pretrain, pretrain.train, data_pipeline, pretrain_pipeline_conf
print('imports ok from', pretrain.__file__.rsplit('/', 2)[0])
print('megatron-core', megatron.core.__version__, '| hydra-core', hydra.__version__,
      '| datasets', datasets.__version__, '| wandb', wandb.__version__)")
  echo "pip check (the image and the carried wheels together; informational):"
  "$PY" -m pip check 2>&1 | head -20 | sed "s/^/  /" || true
}
export -f do_install
export PY REPO WORK SITE WHEELS
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
PHASE_DESC="build the project's wheel; pip install --no-index --no-deps --target $SITE (${#WHL[@]} carried wheels + it); imports; pip check"
run_phase install "$T_INSTALL" bash -c do_install
INSTALL_RC=$?
"$PY" -W ignore - "$WORK/env.json" <<'EOF' || true
import json, sys
env = json.load(open(sys.argv[1]))
try:
    import megatron.core
    env["megatron_core"] = megatron.core.__version__
except Exception as e:  # noqa: BLE001
    env["megatron_core"] = f"not importable ({type(e).__name__})"
json.dump(env, open(sys.argv[1], "w"))
EOF
if ((INSTALL_RC != 0)); then
  skip data tests bench
  finish
fi

# -- 3. data (background; the benchmark waits for it) --------------------------------------------
NPROC=$(nproc)
WORKERS=$((NPROC > 2 ? NPROC / 2 : 1))
DATA_CMD=("$PY" -m data_pipeline "output.dir=$DATA" output.overwrite=true "workers=$WORKERS"
  "tokenizer.train_threads=$WORKERS" progress=false)
read -r -a EXTRA <<<"${GPU_CHECK_DATA_ARGS:-}"
DATA_CMD+=("${EXTRA[@]}")
banner "data (background, limit ${T_DATA} s): ${DATA_CMD[*]}"
DATA_START=$(now)
(timeout -k 5 "$T_DATA" "${DATA_CMD[@]}" >"$LOGS/data.log" 2>&1) &
DATA_PID=$!

# -- 4. tests: `make test-gpu` with this python as the "venv" ----------------------------------
# The Makefile's setup would make a venv (whose --system-site-packages would be the base Python,
# without torch) and pip install from the network. A venv folder whose bin/python runs $PY and
# whose .installed stamp is newer than pyproject.toml makes `make test-gpu VENV=...` skip setup.
SHIM=$WORK/venv
mkdir -p "$SHIM/bin"
printf '#!/bin/sh\nexec "%s" "$@"\n' "$PY" >"$SHIM/bin/python"
chmod +x "$SHIM/bin/python"
touch "$SHIM/.installed"
PYTEST_ARGS="-q -rfEs --junitxml=$WORK/gpu_tests.xml"
if command -v make >/dev/null && ! make -s -n test-gpu VENV="$SHIM" | grep -q "pip install"; then
  run_phase tests "$T_TESTS" make --no-print-directory test-gpu VENV="$SHIM" PYTEST_ARGS="$PYTEST_ARGS"
else  # no make, or setup would run: the same pytest command as the Makefile's test-gpu
  # shellcheck disable=SC2086
  run_phase tests "$T_TESTS" "$PY" -m pytest -m gpu -p no:cacheprovider -o addopts="" $PYTEST_ARGS
fi

# -- 5. bench ----------------------------------------------------------------------------------
banner "data: waiting for the background preparation"
wait "$DATA_PID"
DATA_RC=$?
tail -n 5 "$LOGS/data.log"
record data "$DATA_RC" "$(since "$DATA_START")" "$T_DATA"
if ((DATA_RC != 0)) || [[ ! -f $DATA/manifest.json ]]; then
  echo "data preparation failed; last lines of $LOGS/data.log:"
  tail -n 30 "$LOGS/data.log"
  skip bench
  finish
fi
# bench/train.py in this process, then the peak GPU memory of that process (both its models)
run_phase bench "$T_BENCH" "$PY" - --gpu --steps "$BENCH_STEPS" --warmup "$BENCH_WARMUP" \
  --data "$DATA" <<'EOF'
import json, runpy, sys
import torch
sys.argv = ["bench/train.py", *sys.argv[1:]]
code = 0
try:
    runpy.run_path("bench/train.py", run_name="__main__")
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
finally:
    if torch.cuda.is_available():
        gib = 2**30
        print("BENCH_MEM " + json.dumps({
            "max_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 2),
            "max_reserved_gib": round(torch.cuda.max_memory_reserved() / gib, 2),
        }))
sys.exit(code)
EOF
finish
}

main 2>&1 | tee "$WORK/gpu_check.log"
RC=${PIPESTATUS[0]}
if [[ -n ${OUT:-} ]]; then cp "$WORK/gpu_check.log" "$OUT/gpu_check.log"; fi
exit "$RC"
