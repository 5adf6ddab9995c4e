#!/usr/bin/env bash
# Run the test suite (sets up .venv on first use). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup-env.sh"
cd "$ROOT"
# Chromium renders the HTML reports in two tests; it is installed where the machine allows it (root with apt-get).
# Never fatal: without it those tests skip and say why. MIXMAG_NO_CHROMIUM=1 skips the attempt.
if [ -z "${MIXMAG_NO_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
  && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's chromium for the report rendering tests"
  { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "chromium could not be installed; the report rendering tests will skip"
fi
# Orthanc with its DICOMweb plugin serves the DICOMweb slide tests (tests/test_dicomweb.py start it on 127.0.0.1);
# installed the same way, never fatal: without it those tests skip and say why. MIXMAG_NO_ORTHANC=1 skips the attempt.
if [ -z "${MIXMAG_NO_ORTHANC:-}" ] && ! command -v Orthanc >/dev/null 2>&1 \
  && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's orthanc and orthanc-dicomweb for the DICOMweb slide tests"
  { timeout 300 apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq orthanc orthanc-dicomweb; } \
    >/dev/null 2>&1 || echo "orthanc could not be installed; the DICOMweb slide tests will skip"
fi
# lint and format check first (line length 120, settings in pyproject.toml [tool.ruff])
# (two commands, not `a && b`: under set -e a failing `a` in an && list would not stop the script)
python -m ruff check src tests scripts benchmarks
python -m ruff format --check src tests scripts benchmarks
# types (mypy, settings in pyproject.toml [tool.mypy]: strict on the records in store.py and runs.py); ~35 CPU-seconds
# cold, about one warm (.mypy_cache)
python -m mypy
python -m pytest "$@"
