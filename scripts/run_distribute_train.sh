#!/usr/bin/env bash
# Data-parallel training through msrun.
# Usage: bash scripts/run_distribute_train.sh DEVICE_NUM CONFIG DEVICE_TARGET [--key value ...]
# Multi-node: set NODE_RANK (this node, 0..), NODE_NUM (nodes), MASTER_ADDR (node 0's address),
# MASTER_PORT; DEVICE_NUM is then the number of devices on THIS node (see README).
# Failure: if a worker dies, msrun kills the others and this script exits 1, within ~30 s (the
# scheduler's node timeout, MS_NODE_TIMEOUT) when training had started, within CLUSTER_TIME_OUT seconds
# (default 300: the time other nodes have to join) when it dies while the cluster is forming.
# Ctrl-C or SIGTERM (to this script or its process group): msrun runs in a session of its own (its
# SIGINT handler would SIGKILL the workers, and a SIGTERM would orphan them), this script passes one
# SIGTERM to each worker, they agree on a step, rank 0 saves, and the script exits 130 with
# `interrupted at step N/T; saved FILE; resume with: <command>` (see README, Distributed training).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: bash scripts/run_distribute_train.sh DEVICE_NUM CONFIG DEVICE_TARGET [--key value ...]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/_launcher.sh"
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
# the recipe, output_dir and the scheduler's port are checked before msrun starts: a refused run
# writes nothing
OUTPUT_DIR="$(python "$ROOT/scripts/_preflight.py" "${ARGS[@]}")"
if [ "$NODE_RANK" -eq 0 ]; then python "$ROOT/scripts/_preflight.py" --check_port "$MASTER_ADDR" "$MASTER_PORT"; fi
LOG_DIR="$OUTPUT_DIR/msrun_log"
mkdir -p "$LOG_DIR"
TRAIN_LOG="$OUTPUT_DIR/train.log"
LOG_FROM=$(( $(stat -c %s "$TRAIN_LOG" 2>/dev/null || echo 0) + 1 ))  # this session's part of it
echo "distributed training: $WORKER_NUM workers ($DEVICE_NUM on node $NODE_RANK of $NODE_NUM), logs in $LOG_DIR"

STOP_SIGNAL=""; SIGNALLED=0; SENT=" "; MSRUN=""
workers() {  # msrun starts each worker in a session of its own: the children that lead their group
    [ -n "$MSRUN" ] || return 0
    ps -o pid=,pgid= --ppid "$MSRUN" 2>/dev/null | awk '$1 == $2 {print $1}'
}
tell_workers() {  # one SIGTERM to each worker not told yet (workers may start after the signal)
    local pid
    for pid in $(workers); do
        [[ "$SENT" == *" $pid "* ]] && continue
        kill -TERM "$pid" 2>/dev/null && SENT+="$pid "
    done
}
workers_alive() {  # a worker told to stop still there (until msrun reaps it), or a new one
    local pid
    for pid in $SENT; do kill -0 "$pid" 2>/dev/null && return 0; done
    [ -n "$(workers)" ]
}
on_signal() {  # a second signal is passed on again: the workers abort at once (src/interrupt.py)
    if [ -n "$STOP_SIGNAL" ]; then SENT=" "; fi
    STOP_SIGNAL="$1"; SIGNALLED=1
    tell_workers
}
LAUNCHED=$(date +%s)
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
# its own session: the terminal's Ctrl-C (or a SIGTERM to this group) reaches this script only;
# msrun's stderr (its warnings, and a traceback when a worker exits non-zero) goes to msrun.log
setsid msrun --worker_num="$WORKER_NUM" --local_worker_num="$DEVICE_NUM" --node_rank="$NODE_RANK" \
      --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --log_dir="$LOG_DIR" \
      --join=True --cluster_time_out="${CLUSTER_TIME_OUT:-300}" \
      "$ROOT/train.py" "${ARGS[@]}" 2>>"$LOG_DIR/msrun.log" &
MSRUN=$!
set +e
STATUS=""
{ while [ -z "$STATUS" ]; do
    if [ -n "$STOP_SIGNAL" ]; then  # tell workers that start late; end msrun once none is left
        IDLE=0
        while kill -0 "$MSRUN" 2>/dev/null; do
            tell_workers
            if workers_alive; then IDLE=0; else IDLE=$((IDLE + 1)); fi
            # msrun waits for its scheduler, which waits ~30 s for the workers that did not say goodbye
            [ "$IDLE" -lt 2 ] || kill -KILL -- "-$MSRUN" 2>/dev/null
            sleep 0.2
        done
    fi
    SIGNALLED=0
    wait "$MSRUN" 2>/dev/null; RC=$?
    [ "$SIGNALLED" = 1 ] || STATUS=$RC  # else a trapped signal cut the wait short
done; } 2>/dev/null  # not bash's "Killed" notice for msrun
set -e

interrupted_line() {  # rank 0 logs it before any worker exits; else a worker's stderr line
    local log line
    line="$(tail -c +"$LOG_FROM" "$TRAIN_LOG" 2>/dev/null | grep -o 'interrupted at step .*' | tail -n 1)"
    if [ -n "$line" ]; then echo "$line"; return; fi
    for log in "$LOG_DIR"/worker_*.log; do  # this session's logs only (msrun rewrites them)
        [ -f "$log" ] && [ "$(stat -c %Y "$log")" -ge "$LAUNCHED" ] && grep -h '^interrupted' "$log"
    done | tail -n 1
}
LINE="$(interrupted_line || true)"
if [ -n "$LINE" ] || { [ -n "$STOP_SIGNAL" ] && [ "$STATUS" -ne 0 ]; }; then
    interrupted_report "$LINE" "$0" "$DEVICE_NUM" "$CONFIG" "$DEVICE_TARGET" "$@" >&2
    exit 130
fi
if [ "$STATUS" -ne 0 ]; then
    echo "distributed training failed; last lines of the workers' logs ($LOG_DIR/worker_*.log):" >&2
    for log in "$LOG_DIR"/worker_*.log; do
        [ -f "$log" ] || continue
        { grep -v '^\[WARNING\]\|^\[INFO\]\|^ *$' "$log" || true; } | tail -n 3 | sed "s|^|  $(basename "$log"): |" >&2
    done
    { grep -v '^ *$' "$LOG_DIR/msrun.log" 2>/dev/null || true; } | tail -n 1 | sed 's|^|  msrun.log: |' >&2
    exit 1
fi
say_done "$OUTPUT_DIR"
