#!/usr/bin/env bash
# Data-parallel training through msrun.
# Usage: bash scripts/run_distribute_train.sh DEVICE_NUM CONFIG DEVICE_TARGET [--key value ...]
# Multi-node: set NODE_RANK (this node, 0..), NODE_NUM (nodes), MASTER_ADDR (node 0's address),
# MASTER_PORT; DEVICE_NUM is then the number of devices on THIS node (see README).
# Failure: if a worker dies, msrun kills the others and this script exits 1, within ~30 s (the
# scheduler's node timeout, MS_NODE_TIMEOUT) when training had started, within CLUSTER_TIME_OUT seconds
# (default 300: the time other nodes have to join) when it dies while the cluster is forming.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: bash scripts/run_distribute_train.sh DEVICE_NUM CONFIG DEVICE_TARGET [--key value ...]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEVICE_NUM="$1"; CONFIG="$2"; DEVICE_TARGET="$3"; shift 3
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
case "$DEVICE_TARGET" in CPU|GPU|Ascend) ;; *) echo "error: DEVICE_TARGET must be CPU, GPU or Ascend" >&2; exit 2;; esac
NODE_NUM="${NODE_NUM:-1}"
NODE_RANK="${NODE_RANK:-0}"
for pair in "DEVICE_NUM=$DEVICE_NUM" "NODE_NUM=$NODE_NUM"; do
    [[ "${pair#*=}" =~ ^[1-9][0-9]*$ ]] || { echo "error: ${pair%%=*} must be a positive integer, got '${pair#*=}'" >&2; exit 2; }
done
[[ "$NODE_RANK" =~ ^[0-9]+$ ]] && [ "$NODE_RANK" -lt "$NODE_NUM" ] \
    || { echo "error: NODE_RANK must be an integer in [0, NODE_NUM=$NODE_NUM), got '$NODE_RANK'" >&2; exit 2; }
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-8118}"
WORKER_NUM=$((DEVICE_NUM * NODE_NUM))
ARGS=(--config_path "$CONFIG" --device_target "$DEVICE_TARGET" --run_distribute true "$@")
# the recipe and output_dir are checked before msrun starts: a refused run writes nothing
OUTPUT_DIR="$(python "$ROOT/scripts/_preflight.py" "${ARGS[@]}")"
LOG_DIR="$OUTPUT_DIR/msrun_log"
mkdir -p "$LOG_DIR"
echo "distributed training: $WORKER_NUM workers ($DEVICE_NUM on node $NODE_RANK of $NODE_NUM), logs in $LOG_DIR"
msrun --worker_num="$WORKER_NUM" --local_worker_num="$DEVICE_NUM" --node_rank="$NODE_RANK" \
      --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --log_dir="$LOG_DIR" \
      --join=True --cluster_time_out="${CLUSTER_TIME_OUT:-300}" \
      "$ROOT/train.py" "${ARGS[@]}" \
    || { echo "distributed training failed; last lines of the workers' logs ($LOG_DIR/worker_*.log):" >&2
         for log in "$LOG_DIR"/worker_*.log; do
             [ -f "$log" ] || continue
             { grep -v '^\[WARNING\]\|^\[INFO\]\|^ *$' "$log" || true; } | tail -n 3 | sed "s|^|  $(basename "$log"): |" >&2
         done
         exit 1; }
echo "done: $OUTPUT_DIR/last.ckpt"
