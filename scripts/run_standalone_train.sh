#!/usr/bin/env bash
# Train on one device.  Usage: bash scripts/run_standalone_train.sh CONFIG [DEVICE_TARGET] [--key value ...]
# The recipe's device_target is used unless DEVICE_TARGET (CPU, GPU or Ascend) is given.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash scripts/run_standalone_train.sh CONFIG [DEVICE_TARGET] [--key value ...]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/_launcher.sh"
LAUNCHER_ARGS=("$@")
CONFIG="$1"; shift
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
ARGS=(--config_path "$CONFIG")
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then ARGS+=(--device_target "$1"); shift; fi
ARGS+=("$@")
# exits 2 with the config error on stderr if the recipe, an override or the output_dir is wrong
OUTPUT_DIR="$(python "$ROOT/scripts/_preflight.py" "${ARGS[@]}")"
mkdir -p "$OUTPUT_DIR"
LOG="$OUTPUT_DIR/train_stdout.log"
THIS_RUN="$(mktemp)"
trap 'rm -f "$THIS_RUN"' EXIT
echo "training: log $LOG, checkpoints in $OUTPUT_DIR"
set +e
python "$ROOT/train.py" "${ARGS[@]}" > "$THIS_RUN" 2>&1 &
TRAIN=$!
# a SIGTERM (or Ctrl-C) to this script alone is passed on: train.py saves and exits 130
trap 'SIGNALLED=1; kill -TERM "$TRAIN" 2>/dev/null' INT TERM
STATUS=""
while [ -z "$STATUS" ]; do
    SIGNALLED=0
    wait "$TRAIN" 2>/dev/null; RC=$?
    [ "$SIGNALLED" = 1 ] || STATUS=$RC  # else a trapped signal cut the wait short
done
set -e
cat "$THIS_RUN" >> "$LOG"
if [ "$STATUS" -eq 130 ] || grep -q '^interrupted at step' "$THIS_RUN"; then  # it saved, said where
    interrupted_report "$(grep '^interrupted' "$THIS_RUN" | tail -n 1)" "$0" "${LAUNCHER_ARGS[@]}" >&2
    exit 130
fi
if [ "$STATUS" -ne 0 ]; then
    echo "training failed (exit $STATUS); last lines of this run in $LOG:" >&2
    grep -v '^\[WARNING\]' "$THIS_RUN" | tail -n 5 >&2 || true
    exit "$STATUS"
fi
say_done "$OUTPUT_DIR"
