"""Which share of a cohort this worker does: `--shard i/N`, a Slurm job array, and torchrun's ranks inside a shard.

There is no scheduler: every worker lists the same cohort, takes its own share of it by a rule every worker
computes alike, and claims each slide before working on it (`mixmag.claims`), so overlapping workers (the same
shard twice, a rerun while an old run still works) never do one slide twice.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import OptionError
from .ranks import DistInfo

_SHARD = re.compile(r"\s*(\d{1,9})\s*/\s*(\d{1,9})\s*")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (index counted from 0), and where that came from."""

    index: int = 0
    count: int = 1
    source: str = ""  # "--shard", "Slurm array", or "" (the whole cohort)

    def describe(self) -> str:
        return f"shard {self.index}/{self.count} ({self.source})" if self.source else "the whole cohort"


def parse_shard(text: str) -> Shard:
    """`i/N` with 0 <= i < N."""
    match = _SHARD.fullmatch(text)
    if not match:
        raise OptionError(f"--shard {text}: give the shard as i/N, e.g. --shard 0/4 (i counts from 0)")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise OptionError(f"--shard {text}: i counts from 0 and must be below N (0/{count} to {count - 1}/{count})")
    return Shard(index, count, "--shard")


def slurm_shard(env: Mapping[str, str]) -> Shard | None:
    """This task's place in a Slurm job array (`sbatch --array=...`), None outside one. Arrays may start anywhere and
    step (`--array=1-64:2`): the index is (ID - MIN) / STEP, the count SLURM_ARRAY_TASK_COUNT."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    try:
        task = int(env["SLURM_ARRAY_TASK_ID"])
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
        low = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        step = int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
    except (KeyError, ValueError):
        raise OptionError(
            "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT / _MIN are missing or not numbers: run under "
            "`sbatch --array`, or give --shard i/N (which wins over the Slurm variables)"
        ) from None
    index = (task - low) // max(step, 1)
    if count < 1 or not 0 <= index < count:
        raise OptionError(
            f"Slurm array task {task} (min {low}, step {step}) is not one of {count} tasks: check the --array "
            "range, or give --shard i/N"
        )
    return Shard(index, count, f"Slurm array task {task}")


def resolve_shard(option: str | None, env: Mapping[str, str] | None = None) -> Shard:
    """--shard when given, else the Slurm array's variables when present, else the whole cohort."""
    if option:
        return parse_shard(option)
    return slurm_shard(os.environ if env is None else env) or Shard()


@dataclass(frozen=True)
class Worker:
    """This process among all workers: shards times torchrun ranks."""

    shard: Shard = Shard()
    dist: DistInfo = DistInfo()

    @property
    def slot(self) -> int:
        return self.shard.index * self.dist.world_size + self.dist.rank

    @property
    def slots(self) -> int:
        return self.shard.count * self.dist.world_size

    def describe(self) -> str:
        parts = [f"shard {self.shard.index}/{self.shard.count}"] if self.shard.count > 1 else []
        if self.dist.active:
            parts.append(f"rank {self.dist.rank}/{self.dist.world_size}")
        return ", ".join(parts)


def balanced_parts(sizes: list[int], parts: int) -> list[list[int]]:
    """Greedy longest-first assignment of items to `parts` workers by size; deterministic, so every worker computes
    the same split."""
    busy = _greedy(sizes, parts)
    return busy + [[] for _ in range(parts - len(busy))]


def balanced_part(sizes: list[int], parts: int, index: int) -> list[int]:
    """Worker `index`'s part of `balanced_parts(sizes, parts)`, without listing the other parts: a shard count of a
    billion (`--shard 0/999999999`, a Slurm array's count) costs no more than the items."""
    busy = _greedy(sizes, parts)
    return busy[index] if index < len(busy) else []


def _greedy(sizes: list[int], parts: int) -> list[list[int]]:
    """The parts of the workers that get items: longest first to the least loaded worker (the lowest-numbered among
    equals), so workers past the item count never get one and need no place in the heap."""
    workers = min(parts, len(sizes))
    heap = [(0, r) for r in range(workers)]  # (load, worker): a heap keeps a million slides over many workers fast
    out: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, r = heapq.heappop(heap)
        out[r].append(i)
        heapq.heappush(heap, (load + sizes[i], r))
    return [sorted(p) for p in out]
