#!/usr/bin/env bash
# Train on one device.  Usage: bash scripts/run_standalone_train.sh CONFIG [DEVICE_TARGET] [--key value ...]
# The recipe's device_target is used unless DEVICE_TARGET (CPU, GPU or Ascend) is given.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash scripts/run_standalone_train.sh CONFIG [DEVICE_TARGET] [--key value ...]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONFIG="$1"; shift
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
ARGS=(--config_path "$CONFIG")
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then ARGS+=(--device_target "$1"); shift; fi
ARGS+=("$@")
# exits 2 with the config error on stderr if the recipe or an override is wrong
OUTPUT_DIR="$(python "$ROOT/scripts/_config_value.py" output_dir "${ARGS[@]}")"
mkdir -p "$OUTPUT_DIR"
LOG="$OUTPUT_DIR/train_stdout.log"
echo "training: log $LOG, checkpoints in $OUTPUT_DIR"
set +e
python "$ROOT/train.py" "${ARGS[@]}" >> "$LOG" 2>&1
STATUS=$?
set -e
if [ "$STATUS" -ne 0 ]; then
    echo "training failed (exit $STATUS); last lines of $LOG:" >&2
    grep -v '^\[WARNING\]' "$LOG" | tail -n 5 >&2
    exit "$STATUS"
fi
echo "done: $OUTPUT_DIR/last.ckpt"
