#!/usr/bin/env bash
# Run the test suite (sets up .venv on first use). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup-env.sh"
cd "$ROOT"
# lint and format check first (line length 120, settings in pyproject.toml [tool.ruff])
# (two commands, not `a && b`: under set -e a failing `a` in an && list would not stop the script)
python -m ruff check src tests scripts benchmarks
python -m ruff format --check src tests scripts benchmarks
python -m pytest "$@"
