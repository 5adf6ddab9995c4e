"""How many CPU threads a mixmag process may use, decided before torch starts its thread pool.

torch sizes its pool from the CPUs the process may run on (its affinity), not from a container's or Slurm's CPU quota,
and its OpenMP threads spin at every barrier waiting for each other. On a busy machine (a login node, a shared
workstation, this project's 2-core machine with other jobs) a spinning thread holds a core another thread needs:
measured here at load 7-8 on 2 cores, one MEM step of the tiny mixer took 4-8x longer with 2 threads than with 1
(0.3-0.8 against 2.3-3.9 steps/s), and as fast as 1 thread once the threads waited passively (2.9-3.9 steps/s).
So the command line sets, unless the user already did:

- `OMP_WAIT_POLICY=PASSIVE`: threads sleep at a barrier instead of spinning (the cost on a quiet machine is a
  wake-up per parallel region, small next to the work of each);
- `OMP_NUM_THREADS` to the CPU quota, when a cgroup quota (containers, Slurm's cgroup plugin) grants fewer CPUs than
  the affinity mask shows.

Both must be in the environment before the OpenMP runtime starts (when torch is imported), so this module never
imports torch, and `mixmag.cli` calls `configure_threads` before anything imports it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use, and what limits them."""

    cpus: int
    affinity: int
    quota: float | None  # CPUs granted by a cgroup quota; None when there is none

    @property
    def source(self) -> str:
        if self.quota is not None and math.ceil(self.quota) < self.affinity:
            return f"cgroup CPU quota {self.quota:g}"
        return f"{self.affinity} CPU(s) this process may run on"


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs granted by the cgroup's CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None when
    unlimited or unreadable. Reads this process's own cgroup when it is named in /proc/self/cgroup."""
    for folder in _cgroup_folders(root):
        v2 = folder / "cpu.max"
        if v2.is_file():
            return _ratio(*_words(v2, 2))
        v1 = folder / "cpu.cfs_quota_us"
        if v1.is_file():
            return _ratio(_words(v1, 1)[0], _words(folder / "cpu.cfs_period_us", 1)[0])
    return None


def _cgroup_folders(root: Path) -> list[Path]:
    """This process's cgroup folders (v2 unified, then v1 cpu controller), then the root's own files."""
    folders = []
    try:
        for line in Path("/proc/self/cgroup").read_text()[:65536].splitlines():
            _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
            if controllers == "":
                folders.append(root / path.lstrip("/"))
            elif "cpu" in controllers.split(","):
                folders.append(root / "cpu" / path.lstrip("/"))
    except OSError:
        pass
    return [*folders, root, root / "cpu"]


def _words(path: Path, n: int) -> list[str]:
    try:
        words = path.read_text()[:256].split()
    except OSError:
        words = []
    return (words + ["max"] * n)[:n]


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = float(quota), float(period)
    except ValueError:
        return None  # "max": no quota
    return q / p if q > 0 and p > 0 else None


def cpu_budget(root: Path = CGROUP_ROOT) -> CpuBudget:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_quota(root)
    cpus = min(affinity, max(1, math.ceil(quota))) if quota is not None else affinity
    return CpuBudget(cpus, affinity, quota)


def configure_threads(environ: dict | None = None, root: Path = CGROUP_ROOT) -> str:
    """Set OMP_WAIT_POLICY and, under a CPU quota, OMP_NUM_THREADS in `environ` (default: this process's), never
    overriding what the user set; returns one line saying what threads the process will use and why."""
    env = os.environ if environ is None else environ
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    budget = cpu_budget(root)
    if "OMP_NUM_THREADS" in env:
        return f"threads: {env['OMP_NUM_THREADS']} (OMP_NUM_THREADS, set by you); waiting {env['OMP_WAIT_POLICY']}"
    if budget.quota is not None and budget.cpus < budget.affinity:
        env["OMP_NUM_THREADS"] = str(budget.cpus)
    return f"threads: {budget.cpus} ({budget.source}); waiting {env['OMP_WAIT_POLICY'].lower()}"


def load_note(budget: CpuBudget | None = None) -> str | None:
    """A sentence when the machine is oversubscribed (1-minute load above the CPUs this process may use)."""
    budget = budget or cpu_budget()
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    if load <= budget.cpus:
        return None
    return (
        f"the machine is busy: load {load:.1f} on {budget.cpus} CPU(s); timings will be slower than on a quiet "
        "machine (mixmag's threads wait passively, so they do not collapse, but they share the cores)"
    )
