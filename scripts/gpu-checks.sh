#!/usr/bin/env bash
# The GPU figures of issues 3 and 4, in one call on the lent H200 (its python3 holds torch and timm):
#   run(command="bash scripts/gpu-checks.sh", carry=[".whl"], timeout_s=540)   after scripts/device-wheels.sh here.
# Writes every figure to $OUT (nvidia-smi, bench embed, bench pretrain) and prints them.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/mixmag-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
# Virchow2 architecture (random weights) end to end from a generated 20x slide on disk, bf16, eager and compiled
timeout 300 python3 -m mixmag.cli bench embed --workers 12 --batch-cells 16 --workdir /tmp/bench 2>&1 | tee "$OUT/bench_embed.txt"
# region loader, then the paper's mixer (dim 1536, 12 layers) at batch 1024 in bf16: samples/s and MFU
timeout 200 python3 -m mixmag.cli bench pretrain --workdir /tmp/bench 2>&1 | tee "$OUT/bench_pretrain.txt"
