#!/usr/bin/env bash
# Evaluate a checkpoint.  Usage: bash scripts/run_eval.sh CONFIG CKPT [DEVICE_TARGET] [--key value ...]
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash scripts/run_eval.sh CONFIG CKPT [DEVICE_TARGET] [--key value ...]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONFIG="$1"; CKPT="$2"; shift 2
DEVICE_TARGET="CPU"
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then DEVICE_TARGET="$1"; shift; fi
OUT_DIR="$(dirname "$CKPT")"
LOG="$OUT_DIR/eval.log"
JSON="$OUT_DIR/eval.json"
echo "evaluating $CKPT: log $LOG, results $JSON"
python "$ROOT/eval.py" --config_path "$CONFIG" --ckpt "$CKPT" --device_target "$DEVICE_TARGET" \
    --json_out "$JSON" "$@" 2>&1 | tee "$LOG"
