"""CPU seconds of a CPU encoder batch with glibc's default allocator against `devices.keep_freed_memory` (issue 29 §3).

Each run is its own process (the allocator setting is per process), alternated A B A B, one thread each, and the
embeddings' checksum is printed so that "the same to the bit" is visible.

python benchmarks/bench_cpu_allocator.py [--rounds 3] [--tiles 168] [--batches 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, resource, sys
import torch
from mixmag.devices import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
from mixmag.encoders.model import build_encoder
torch.manual_seed(0)
encoder = build_encoder("stats")
tiles = torch.randint(0, 255, (int(sys.argv[2]), 224, 224, 3), dtype=torch.uint8)
with torch.inference_mode():
    encoder(tiles)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(int(sys.argv[3])):
        out = encoder(tiles)
    after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime,
                  "peak_mb": after.ru_maxrss / 1024, "checksum": float(out.double().sum())}))
"""


def run(mode: str, tiles: int, batches: int) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(tiles), str(batches)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiles", type=int, default=168)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    seen = {"default": [], "keep": []}
    for _ in range(args.rounds):
        for mode in seen:
            r = run(mode, args.tiles, args.batches)
            seen[mode].append(r)
            print(
                f"{mode:8s} user {r['user']:.2f} s  system {r['sys']:.2f} s  peak {r['peak_mb']:.0f} MB  "
                f"checksum {r['checksum']:.6f}"
            )
    cpu = {m: sum(r["user"] + r["sys"] for r in rs) for m, rs in seen.items()}
    same = len({r["checksum"] for rs in seen.values() for r in rs}) == 1
    print(f"CPU seconds default / keep: {cpu['default'] / cpu['keep']:.2f}x; embeddings identical: {same}")
