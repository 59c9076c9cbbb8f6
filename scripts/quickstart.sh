#!/usr/bin/env bash
# One command from a fresh clone to a trained, evaluated and exported pruned model:
# venv + requirements, Fashion-MNIST, a short RPG training of ResNet-20 at 90 % sparsity,
# evaluation (accuracy, sparsity, per-layer rank) and a verified MINDIR export.
# Usage: bash scripts/quickstart.sh [OUTPUT_DIR]   (a relative OUTPUT_DIR is read from where you are)
# Any folder works, names with spaces or non-ASCII letters included (the clone's and OUTPUT_DIR).
# QUICKSTART_SMOKE=1: 1 epoch of 512 images, 256 evaluated: checks the pipeline, not the accuracy
# (tests/test_unusual_paths.py runs it from a clone under a folder named "My Prüfung ü").
# Time on 2 CPU cores with .venv and the data in place: 86 s on an idle machine, 211 s on a busy
# one; a new machine adds the venv and the ~770 MB MindSpore download. See README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/output/quickstart}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac   # relative to where you are, as the launchers
cd "$ROOT"
if [ $# -eq 0 ]; then  # never replace an earlier quick start: number a new folder instead
    N=1; BASE="$OUT"
    while [ -e "$OUT" ]; do N=$((N + 1)); OUT="${BASE}_$N"; done
fi
source scripts/setup_env.sh
set -euo pipefail   # setup_env.sh leaves the calling shell lenient (set +e): a failing step must fail the quick start
DATA="$(bash scripts/get_fashion_mnist.sh "$ROOT/data/fashion_mnist" | tail -n 1)"
CONFIG=config/rpg_resnet20_fashion_mnist_s90.yaml
EPOCHS=3; SAMPLES=8192; EVAL_SAMPLES=2000; DELTA=16
if [ "${QUICKSTART_SMOKE:-0}" = 1 ]; then EPOCHS=1; SAMPLES=512; EVAL_SAMPLES=256; DELTA=2; fi
echo "[quickstart] training ResNet-20 with RPG to 90 % sparsity on $SAMPLES Fashion-MNIST images"
python train.py --config_path "$CONFIG" --data_path "$DATA" --output_dir "$OUT" \
    --epoch_size "$EPOCHS" --train_samples "$SAMPLES" --eval_samples "$EVAL_SAMPLES" \
    --delta "$DELTA" --log_interval 16
echo "[quickstart] evaluating"
python eval.py --config_path "$CONFIG" --data_path "$DATA" --ckpt "$OUT/last.ckpt" \
    --eval_samples "$EVAL_SAMPLES" --json_out "$OUT/eval.json" --report_png "$OUT/layers.png"
echo "[quickstart] exporting MINDIR"
python export.py --config_path "$CONFIG" --ckpt "$OUT/last.ckpt" --file_format MINDIR \
    --file_name "$OUT/resnet20_rpg_s90"
echo "[quickstart] done: $OUT (last.ckpt, eval.json, layers.png, resnet20_rpg_s90.mindir)"
