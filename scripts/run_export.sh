#!/usr/bin/env bash
# Export a checkpoint.  Usage: bash scripts/run_export.sh CONFIG CKPT FILE_FORMAT FILE_NAME [--key value ...]
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: bash scripts/run_export.sh CONFIG CKPT MINDIR|ONNX|AIR|SPARSE FILE_NAME [--key value ...]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/_launcher.sh"
CONFIG="$1"; CKPT="$2"; FORMAT="$3"; NAME="$4"; shift 4
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
[ -f "$CKPT" ] || { echo "error: checkpoint not found: $CKPT" >&2; exit 1; }
# export.log goes beside the checkpoint: not into a folder a live training run holds
python "$ROOT/scripts/_preflight.py" --check_folder "$(dirname "$CKPT")"
LOG="$(dirname "$CKPT")/export.log"
THIS_RUN="$(mktemp)"
trap 'rm -f "$THIS_RUN"' EXIT
echo "exporting $CKPT as $FORMAT to $NAME: log $LOG"
set +e
python "$ROOT/export.py" --config_path "$CONFIG" --ckpt "$CKPT" --file_format "$FORMAT" \
    --file_name "$NAME" "$@" > "$THIS_RUN" 2>&1
STATUS=$?
set -e
cat "$THIS_RUN" >> "$LOG"  # the log keeps every export of this folder
if [ "$STATUS" -ne 0 ]; then
    echo "export failed (exit $STATUS); last lines:" >&2
    grep -v '^\[WARNING\]' "$THIS_RUN" | tail -n 5 >&2 || true
    exit "$STATUS"
fi
grep -v '^\[WARNING\]' "$THIS_RUN" || true
