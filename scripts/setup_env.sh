#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the pinned requirements.
# Usage: source scripts/setup_env.sh   (activates .venv in the calling shell)
# PRUNE_VENV=DIR: another environment, the one the launchers then run (scripts/_launcher.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PRUNE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if ! python - "$ROOT/requirements.txt" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
pins = {"mindspore": "2.8.0", "numpy": "1.26.4"}
for name, wanted in pins.items():
    assert version(name) == wanted
import yaml, pytest, xdist, matplotlib  # noqa: F401
PY
then
    echo "[setup] installing requirements (MindSpore is a ~770 MB download the first time)"
    python -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"
fi
set +euo pipefail
