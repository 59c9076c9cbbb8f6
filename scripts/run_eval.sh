#!/usr/bin/env bash
# Evaluate a checkpoint.  Usage: bash scripts/run_eval.sh CONFIG CKPT [DEVICE_TARGET] [--key value ...]
# Results go to eval.json / eval.log beside the checkpoint; if those exist (an earlier evaluation),
# to eval_2.json / eval_2.log and so on: an earlier result is never replaced. A failed evaluation
# writes no result, only eval_failed.log. The name is reserved atomically (the .log is created
# only if absent), so evaluations started together take different numbers; a folder a live
# training run holds is refused with one line (scripts/_preflight.py, src/run_lock.py).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash scripts/run_eval.sh CONFIG CKPT [DEVICE_TARGET] [--key value ...]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/_launcher.sh"
CONFIG="$1"; CKPT="$2"; shift 2
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
[ -f "$CKPT" ] || { echo "error: checkpoint not found: $CKPT" >&2; exit 1; }
ARGS=(--config_path "$CONFIG" --ckpt "$CKPT")
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then ARGS+=(--device_target "$1"); shift; fi
OUT_DIR="$(dirname "$CKPT")"
python "$ROOT/scripts/_preflight.py" --check_folder "$OUT_DIR"
TMP_LOG="$(mktemp "$OUT_DIR/.eval.log.XXXXXX")"
NAME="eval"; N=1
# noclobber: '>' fails if the file exists, so two evaluations never reserve the same name
while [ -e "$OUT_DIR/$NAME.json" ] || ! (set -C; : > "$OUT_DIR/$NAME.log") 2> /dev/null; do
    [ -e "$OUT_DIR/$NAME.json" ] || [ -e "$OUT_DIR/$NAME.log" ] \
        || { rm -f "$TMP_LOG"; echo "error: cannot write $OUT_DIR/$NAME.log" >&2; exit 1; }
    N=$((N + 1)); NAME="eval_$N"
done
LOG="$OUT_DIR/$NAME.log"; JSON="$OUT_DIR/$NAME.json"
DONE=0
trap 'rm -f "$TMP_LOG"; [ "$DONE" = 1 ] || rm -f "$LOG"' EXIT  # the reserved name, if unused
echo "evaluating $CKPT: results $JSON, log $LOG"
set +e
python "$ROOT/eval.py" "${ARGS[@]}" --json_out "$JSON" "$@" > "$TMP_LOG" 2>&1
STATUS=$?
set -e
if [ "$STATUS" -ne 0 ]; then
    cat "$TMP_LOG" >> "$OUT_DIR/eval_failed.log"  # every failed evaluation, oldest first
    echo "evaluation failed (exit $STATUS), no result written; last lines (kept in $OUT_DIR/eval_failed.log):" >&2
    grep -v '^\[WARNING\]' "$TMP_LOG" | tail -n 5 >&2 || true
    exit "$STATUS"
fi
mv "$TMP_LOG" "$LOG"
chmod "$(printf '%o' $(( 0666 & ~0$(umask) )))" "$LOG"   # mktemp made it 0600; the umask decides, as for eval.json
DONE=1
# the log holds both streams; eval.py's own warnings (a dead network) go back to stderr
grep -v -e '^\[WARNING\]' -e '^warning: ' "$LOG" || true
grep '^warning: ' "$LOG" >&2 || true
