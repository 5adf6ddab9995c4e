#!/usr/bin/env bash
# Bring (here, where pip works) what the lent GPU machine needs to run this checkout, into .whl/ (ignored by git):
# mixmag's own wheel, built from this tree, and the Python 3.12 x86-64 wheels of every package mixmag needs, directly
# or through another, that the machine's image lacks (scripts/device-packages.txt), at the versions of .venv.
# Then run scripts/gpu-checks.sh there with `.whl` carried (README, Benchmark). About 45 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { echo "run scripts/setup-env.sh first (versions are taken from .venv)"; exit 1; }
pins=$(PYTHONPATH=$PWD/src "$PY" - <<'PY'
import tomllib
from pathlib import Path
from mixmag.bench.environment import python_environment, read_package_list, wheels_needed

roots = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
present = set(read_package_list(Path("scripts/device-packages.txt")))
print(" ".join(f"{n}=={v}" for n, v in sorted(wheels_needed(roots, present, python_environment("3.12.3")).items())))
PY
)
echo "wheels the device lacks: $pins"
rm -rf .whl && mkdir -p .whl
tree=$(mktemp -d) && cp -r pyproject.toml README.md src "$tree"/
"$PY" -m pip wheel -q --no-deps --no-build-isolation --no-index -w .whl "$tree" && rm -rf "$tree"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64; do
  platforms+=(--platform "$p")
done
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl $pins
ls .whl && du -sh .whl
