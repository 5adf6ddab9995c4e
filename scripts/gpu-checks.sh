#!/usr/bin/env bash
# The GPU figures of issue 15 in one call on the lent H200, and the very same steps on a CPU at tiny sizes (CI runs
# that: tests/test_gpu_checks.py), so the device call cannot fail on anything but CUDA itself.
#   device: bash scripts/device-wheels.sh here, then
#           run(command="bash scripts/gpu-checks.sh", carry=[".whl"], timeout_s=330)
#   CPU:    MIXMAG_CHECKS=cpu PYTHON=.venv/bin/python WHEELS=/tmp/w SITE=/tmp/s OUT=/tmp/o bash scripts/gpu-checks.sh
# Steps: 1. mixmag's own wheel (built from this tree when $WHEELS has none) and the wheels beside it install into
# $SITE, and mixmag is imported from there only (the wheel must match this tree); 2. `mixmag bench env`: every
# requirement at an allowed version, every module imports; 3. `mixmag bench embed`; 4. `mixmag bench pretrain`, which
# profiles one MEM step when MFU is under 65% (attention kernel, optimizer, loader stalls, host-device copies).
# Figures land in $OUT (at most 8 files come back from the device). A step that fails or runs out of time does not
# stop the next one; the exit status is 1 if any step failed.
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-160}
cd "$(dirname "$0")/.." || exit 1
MODE=${MIXMAG_CHECKS:-gpu}
BUDGET_S=${BUDGET_S:-315}  # the whole script; the documented device call gives it 330 s (one rerun fits in 15 min)
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/mixmag-gpu-out}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
WORK=${WORK:-/tmp/mixmag-bench}
mkdir -p "$OUT" "$WHEELS" "$WORK" "$SITE"
failed=()
note() { echo "gpu-checks: $*" | tee -a "$OUT/summary.txt"; }
case "$MODE" in
  gpu) embed_args=(--workers 12 --batch-cells 16); pretrain_args=() ;;
  cpu) embed_args=(--side 1024)
       pretrain_args=(--steps 1 --cpu-batch 2 --cpu-preset tiny --loader-batches 2 --profile-below 2) ;;
  # --profile-below 2: the profile summary runs on CPU too
  *) echo "MIXMAG_CHECKS must be gpu or cpu, not '$MODE'"; exit 2 ;;
esac

# 1. wheels -> $SITE; mixmag from there, never from a checkout or an editable install
if ! compgen -G "$WHEELS/mixmag-*.whl" >/dev/null; then
  tree=$(mktemp -d) && cp -r pyproject.toml README.md src "$tree"/  # built from a copy: no build/ or egg-info here
  "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$WHEELS" "$tree" \
    || { note "building mixmag's wheel failed"; exit 1; }
  rm -rf "$tree"
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
  || { note "installing the wheels of $WHEELS into $SITE failed"; exit 1; }
if ! diff -rq --exclude=__pycache__ "$SITE/mixmag" src/mixmag >/dev/null; then
  note "the mixmag wheel in $WHEELS is not this tree's code: rerun scripts/device-wheels.sh (or empty $WHEELS)"; exit 1
fi
export PYTHONPATH="$SITE"

# 2. the environment: versions against mixmag's declared requirements, every module imported
if [ "$MODE" = gpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')" || exit 1
fi
"$PY" -m mixmag.cli bench env --out "$OUT/env.json" --expect-under "$SITE" \
  || { note "environment check failed"; exit 1; }

# 3-4. the benchmarks; figures to $OUT
bench() {  # name, seconds, args...
  local name=$1 seconds=$2; shift 2
  rm -f "$WORK/bench_$name.json"
  if [ "$seconds" -lt 20 ]; then failed+=("bench $name (no time left)"); return; fi
  timeout "$seconds" "$PY" -m mixmag.cli bench "$name" --workdir "$WORK" "$@" 2>&1 | tee "$OUT/bench_$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && note "bench $name ran out of its $seconds s"
  [ "$rc" != 0 ] && failed+=("bench $name (exit $rc)")
  cp "$WORK/bench_$name.json" "$OUT/" 2>/dev/null || failed+=("bench $name wrote no figures")
}
# embed gets until 55% of the budget, pretrain what is left (each run's figures are saved as soon as it ends)
bench embed $((BUDGET_S * 55 / 100 - SECONDS)) "${embed_args[@]}"
bench pretrain $((BUDGET_S - 10 - SECONDS)) "${pretrain_args[@]}"

"$PY" - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
env = json.loads((out / "env.json").read_text())
print(f"python {env['python']}, torch {env['requirements'].get('torch')} (CUDA {env['torch_cuda']}), timm "
      f"{env['requirements'].get('timm')}, device {env['cuda_device']}")
if (out / "bench_embed.json").exists():
    e = json.loads((out / "bench_embed.json").read_text())
    for run in e.get("gpu", {}).get("runs", []):
        print(f"embed {'compiled' if run['compiled'] else 'eager'}: {run['tiles_per_s']:.0f} tiles/s "
              f"({run['fraction_of_matmul_rate']:.0%} of {e['gpu']['bf16_matmul_tflops']:.0f} TFLOP/s)")
    print("embed CPU data path:", {k: round(v) for k, v in e["cpu_data_path_tiles_per_s"].items()})
if (out / "bench_pretrain.json").exists():
    p = json.loads((out / "bench_pretrain.json").read_text())
    for run in p["training"]:
        compiled = " compiled" if run["compiled"] else ""
        print(f"pretrain {run['preset']} batch {run['batch']} {run['precision']}{compiled}: "
              f"{run['samples_per_s']:,.1f} samples/s, MFU {run['mfu']:.1%}")
    if "profile" in p:
        prof = p["profile"]
        print("profiled step (ms):", {k: round(v, 1) for k, v in prof["phases_ms"].items()},
              "attention:", prof["attention"], "copies:", prof["copies"])
PY
if [ ${#failed[@]} -gt 0 ]; then note "failed: ${failed[*]}"; exit 1; fi
note "all steps passed ($MODE mode)"
