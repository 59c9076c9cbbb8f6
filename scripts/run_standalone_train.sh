#!/usr/bin/env bash
# Train on one device.  Usage: bash scripts/run_standalone_train.sh CONFIG [DEVICE_TARGET] [--key value ...]
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash scripts/run_standalone_train.sh CONFIG [DEVICE_TARGET] [--key value ...]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONFIG="$1"; shift
DEVICE_TARGET="CPU"
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then DEVICE_TARGET="$1"; shift; fi
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
ARGS=(--config_path "$CONFIG" --device_target "$DEVICE_TARGET" "$@")
OUTPUT_DIR="$(python "$ROOT/scripts/_config_value.py" output_dir "${ARGS[@]}")"
mkdir -p "$OUTPUT_DIR"
LOG="$OUTPUT_DIR/train_stdout.log"
echo "training: log $LOG, checkpoints in $OUTPUT_DIR"
python "$ROOT/train.py" "${ARGS[@]}" > "$LOG" 2>&1 || { echo "training failed; see $LOG" >&2; tail -n 3 "$LOG" >&2; exit 1; }
echo "done: $OUTPUT_DIR/last.ckpt"
