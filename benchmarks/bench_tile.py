"""Tile read path benchmark (same as `mixmag bench tile`): tiles/s per core for three read methods.

python benchmarks/bench_tile.py [--size 8192] [--cells 16] [--rounds 5] [--workdir .mixmag-bench]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mixmag.bench.tile import run_tile_benchmark

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(".mixmag-bench"))
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--cells", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run_tile_benchmark(args.workdir, size=args.size, n_cells=args.cells, rounds=args.rounds)
