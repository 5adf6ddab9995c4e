#!/usr/bin/env bash
# Fetch (here, where pip works) the Python 3.12 x86-64 wheels that mixmag needs on the lent GPU machine
# and its image lacks, pinned to the versions of this checkout's .venv, into .whl/ (ignored by git).
# Then run scripts/gpu-checks.sh there with `.whl` carried. About 35 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run scripts/setup-env.sh first (versions are taken from .venv)"; exit 1; }
pins=$("$PY" - <<'PY'
import importlib.metadata as m
names = ["imagecodecs", "tiffslide", "tifffile", "zarr", "numcodecs", "donfig", "google-crc32c", "pydantic", "pydantic-core",
         "annotated-types", "typing-inspection", "openslide-python", "openslide-bin"]
print(" ".join(f"{n}=={m.version(n)}" for n in names))
PY
)
rm -rf .whl && mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64; do
  platforms+=(--platform "$p")
done
# shellcheck disable=SC2086
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl $pins
du -sh .whl
