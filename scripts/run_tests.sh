#!/usr/bin/env bash
# Set up the environment if needed and run the whole test suite.
# Usage: bash scripts/run_tests.sh [pytest args]   (e.g. tests/test_api.py -k dead: one file, some
# tests; with no file or folder named, pytest.ini's testpaths run the whole suite)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh
set -euo pipefail   # setup_env.sh leaves the calling shell lenient (set +e)
# The real Fashion-MNIST subset tests use the data when it can be had; they skip otherwise.
bash scripts/get_fashion_mnist.sh "$ROOT/data/fashion_mnist" >/dev/null 2>&1 \
    || echo "[tests] Fashion-MNIST not available: its tests will be skipped"
export FASHION_MNIST_DIR="$ROOT/data/fashion_mnist"
# one worker more than cores, each taking whole test files (their module fixtures are built once):
# the launcher and signal tests spend seconds waiting on processes, which the extra worker fills
# (2 cores, quiet: 6:49 with 3 workers, 7:36 with 2); `-n 0` after it runs everything in this process
WORKERS=$(( $(nproc 2>/dev/null || echo 1) + 1 ))
python -m pytest -q -n "$WORKERS" --dist loadfile "$@"
