#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install mixmag into it.
# Sourced by scripts/demo.sh and scripts/test.sh, so a fresh clone needs nothing else.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
# shellcheck disable=SC1091
. "$ROOT/.venv/bin/activate"
STAMP="$ROOT/.venv/.mixmag-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ "$ROOT/scripts/constraints.txt" -nt "$STAMP" ]; then
  python -m pip install -q --upgrade pip
  # PyTorch first, pinned: this machine keeps these wheels on disk (timm needs torchvision).
  python -m pip install -q "torch==${MIXMAG_TORCH:-2.14.1}" "torchvision==${MIXMAG_TORCHVISION:-0.29.1}"
  # the versions the test suite last passed with (scripts/constraints.txt, `pip freeze` of that environment): without
  # them pip's resolver can backtrack through moto[server]'s dependencies to releases that no longer build
  python -m pip install -q -e "$ROOT[dev]" -c "$ROOT/scripts/constraints.txt"
  touch "$STAMP"
fi
