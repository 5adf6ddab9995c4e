"""torchrun's ranks as this process sees them: apart from `mixmag.devices` (which imports torch) so that a worker's
share of a cohort is decided without loading torch (tiling must not: tests/test_startup.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    """This process's place among torchrun's ranks (one process when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def dist_from_env() -> DistInfo:
    """Rank and world size as torchrun sets them (1 process when absent)."""
    return DistInfo(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )
