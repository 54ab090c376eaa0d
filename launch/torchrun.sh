#!/usr/bin/env bash
# Launch pretraining with torchrun on one node, or on one node of a multi-node job.
#
#   launch/torchrun.sh [NPROC] [hydra overrides...]
#   launch/torchrun.sh 8 model=llama-1b parallel=tp2 data.paths=[/data/web] precision=bf16
#
# Multi-node (docs/multinode.md): run it on every node with the same NNODES, MASTER_ADDR,
# MASTER_PORT and RDZV_ID, and NODE_RANK=0 on the node at MASTER_ADDR (it hosts torchrun's c10d
# rendezvous store), 1..NNODES-1 elsewhere:
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 launch/torchrun.sh 8 parallel=tp8   # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 launch/torchrun.sh 8 parallel=tp8   # on node1
#
# Environment (defaults in brackets):
#   NNODES [1]            nodes; >1 uses a c10d rendezvous at MASTER_ADDR:MASTER_PORT
#   NODE_RANK [0]         0 on the MASTER_ADDR node; unset with NNODES>1: torch decides by host name
#   MASTER_ADDR           the rendezvous host [127.0.0.1 on one node; required with NNODES>1]
#   MASTER_PORT [29500]   the rendezvous (and, on one node, the process group's) port
#   RDZV_ID [pretrain]    the job's rendezvous id, the same on every node
#   RDZV_JOIN_TIMEOUT [300]  seconds a node waits for all NNODES nodes to join
#   RDZV_READ_TIMEOUT [60]   seconds to connect to the rendezvous store (and per store request)
#   PYTHON [python]
# Under Slurm (SLURM_JOB_ID and SLURM_NNODES set, NNODES not; one task per node, e.g.
# `srun --ntasks-per-node=1 launch/torchrun.sh 8 ...`), NNODES, NODE_RANK, MASTER_ADDR, RDZV_ID
# and MASTER_PORT come from the job: SLURM_NNODES, SLURM_NODEID, the first host of
# SLURM_JOB_NODELIST, SLURM_JOB_ID and 29500 + SLURM_JOB_ID % 1000 (set ones win, but NODE_RANK).
# Exit: torchrun's (1 for any failure), or 2 for a bad variable here.
set -euo pipefail
NPROC=${1:-2}
shift || true
PY=${PYTHON:-python}

die() {
  echo "torchrun.sh: $*" >&2
  exit 2
}

positive_int() {  # NAME VALUE
  [[ $2 =~ ^[0-9]+$ && $2 -gt 0 ]] || die "$1=$2 must be a positive integer"
}

if [[ -z ${NNODES:-} && -n ${SLURM_JOB_ID:-} && -n ${SLURM_NNODES:-} ]]; then
  NNODES=$SLURM_NNODES
  NODE_RANK=${SLURM_NODEID:-${NODE_RANK:-}}
  if [[ -z ${MASTER_ADDR:-} ]]; then
    MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}" |
      head -n 1) || die "cannot read the first host of SLURM_JOB_NODELIST with scontrol"
  fi
  RDZV_ID=${RDZV_ID:-$SLURM_JOB_ID}
  if [[ -z ${MASTER_PORT:-} && $SLURM_JOB_ID =~ ^[0-9]+$ ]]; then
    MASTER_PORT=$((29500 + SLURM_JOB_ID % 1000))  # two jobs sharing a node: other ports
  fi
fi
NNODES=${NNODES:-1}
MASTER_PORT=${MASTER_PORT:-29500}
[[ $NPROC =~ ^([0-9]+|auto|cpu|gpu|xpu)$ && $NPROC != 0 ]] ||
  die "NPROC=$NPROC: the first argument is the processes per node (a number, auto or gpu);" \
    "usage: launch/torchrun.sh [NPROC] [hydra overrides...]"
positive_int NNODES "$NNODES"
positive_int MASTER_PORT "$MASTER_PORT"

if [[ $NNODES -eq 1 ]]; then
  MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
  echo "torchrun.sh: 1 node x $NPROC process(es); master $MASTER_ADDR:$MASTER_PORT" >&2
  exec "$PY" -m torch.distributed.run \
    --nnodes 1 \
    --node-rank "${NODE_RANK:-0}" \
    --nproc-per-node "$NPROC" \
    --master-addr "$MASTER_ADDR" \
    --master-port "$MASTER_PORT" \
    -m pretrain "$@"
fi

[[ -n ${MASTER_ADDR:-} ]] || die "NNODES=$NNODES needs MASTER_ADDR (the host of NODE_RANK=0)"
RDZV_ID=${RDZV_ID:-pretrain}
RDZV_JOIN_TIMEOUT=${RDZV_JOIN_TIMEOUT:-300}
RDZV_READ_TIMEOUT=${RDZV_READ_TIMEOUT:-60}
positive_int RDZV_JOIN_TIMEOUT "$RDZV_JOIN_TIMEOUT"
positive_int RDZV_READ_TIMEOUT "$RDZV_READ_TIMEOUT"
RDZV_CONF="join_timeout=$RDZV_JOIN_TIMEOUT,read_timeout=$RDZV_READ_TIMEOUT"
NODE="node rank ${NODE_RANK:-?}"
if [[ -n ${NODE_RANK:-} ]]; then
  [[ $NODE_RANK =~ ^[0-9]+$ && $NODE_RANK -lt $NNODES ]] ||
    die "NODE_RANK=$NODE_RANK must be 0..$((NNODES - 1)) (NNODES=$NNODES)"
  # Node 0 hosts the rendezvous store; the others only connect to it (never host their own).
  RDZV_CONF+=",is_host=$([[ $NODE_RANK -eq 0 ]] && echo 1 || echo 0)"
fi
echo "torchrun.sh: $NNODES nodes x $NPROC process(es), $NODE; rendezvous c10d" \
  "$MASTER_ADDR:$MASTER_PORT id $RDZV_ID; join timeout ${RDZV_JOIN_TIMEOUT} s," \
  "store timeout ${RDZV_READ_TIMEOUT} s" >&2

# torchrun runs as a child (not exec) so that a failure can be explained below; its stderr is
# also copied to a temporary file for that. It runs as its own job (set -m: a script's
# background child would otherwise ignore SIGINT) and gets the signals this script gets.
ERRLOG=$(mktemp "${TMPDIR:-/tmp}/torchrun-sh.XXXXXX")
trap 'rm -f "$ERRLOG"' EXIT
set -m
"$PY" -m torch.distributed.run \
  --nnodes "$NNODES" \
  --nproc-per-node "$NPROC" \
  --rdzv-backend c10d \
  --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" \
  --rdzv-id "$RDZV_ID" \
  --rdzv-conf "$RDZV_CONF" \
  --max-restarts 0 \
  -m pretrain "$@" </dev/null 2> >(tee "$ERRLOG" >&2) &
AGENT=$!
for sig in TERM INT HUP QUIT USR1 USR2; do
  trap "kill -s $sig $AGENT 2>/dev/null || true" "$sig"
done
STARTED=$SECONDS
while true; do
  rc=0
  wait "$AGENT" 2>/dev/null || rc=$?  # 2>/dev/null: no "[1]+ Terminated" job notice
  kill -0 "$AGENT" 2>/dev/null || break  # else a trapped signal interrupted `wait`
done
wait || true  # let tee finish copying
[[ $rc -eq 0 ]] && exit 0

ELAPSED=$((SECONDS - STARTED))
WHERE="$MASTER_ADDR:$MASTER_PORT (id $RDZV_ID)"
if [[ $rc -gt 128 ]]; then
  echo "torchrun.sh: torchrun was killed by signal $((rc - 128)) after $ELAPSED s" >&2
elif grep -q "RendezvousTimeoutError" "$ERRLOG"; then
  echo "torchrun.sh: not all $NNODES nodes joined the rendezvous at $WHERE within" \
    "RDZV_JOIN_TIMEOUT=$RDZV_JOIN_TIMEOUT s: start launch/torchrun.sh on every node with the" \
    "same NNODES, MASTER_ADDR, MASTER_PORT and RDZV_ID (see the other nodes' output)" >&2
elif grep -Eq "exitcode *: *75 " "$ERRLOG"; then
  echo "torchrun.sh: the trainers saved a checkpoint after a preemption signal (exit 75):" \
    "rerun the same command on every node to resume" >&2
elif grep -Eq "^pretrain: |ChildFailedError" "$ERRLOG"; then
  echo "torchrun.sh: a trainer on this node failed after $ELAPSED s: its 'pretrain:' line or" \
    "torchrun's failure summary above says why" >&2
elif grep -Eq "trying to connect to|failed to connect" "$ERRLOG"; then
  echo "torchrun.sh: cannot reach the rendezvous store at $WHERE (gave up after $ELAPSED s," \
    "RDZV_READ_TIMEOUT=$RDZV_READ_TIMEOUT s): start NODE_RANK=0 on MASTER_ADDR first, check" \
    "MASTER_ADDR/MASTER_PORT and that the port is open between the nodes" >&2
elif grep -Eq "RendezvousConnectionError|DistNetworkError" "$ERRLOG"; then
  echo "torchrun.sh: lost the rendezvous store at $WHERE after $ELAPSED s: node 0's torchrun" \
    "(it hosts the store) died or was killed; rerun the job on every node to resume" >&2
fi
exit "$rc"
