"""The threads a process may use (issue 29 §4): a cgroup CPU quota is read (v2 and v1), passive waiting is the
default, and what a user set is never overridden."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mixmag.threads import cgroup_quota, configure_threads, cpu_budget


def _cgroup(root: Path, version: int, quota: str, period: str = "100000") -> Path:
    if version == 2:
        root.mkdir(parents=True, exist_ok=True)
        (root / "cpu.max").write_text(f"{quota} {period}\n")
    else:
        (root / "cpu").mkdir(parents=True, exist_ok=True)
        (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


@pytest.mark.parametrize(
    ("version", "quota", "expected"),
    [(2, "150000", 1.5), (2, "max", None), (1, "50000", 0.5), (1, "-1", None), (2, "garbage", None)],
)
def test_the_cgroup_quota_is_read_from_either_version(tmp_path, version, quota, expected):
    assert cgroup_quota(_cgroup(tmp_path, version, quota)) == expected


def test_a_quota_below_the_cpus_sets_the_threads_and_waiting_is_passive(tmp_path):
    root = _cgroup(tmp_path, 2, "100000")  # one CPU's worth
    affinity = len(os.sched_getaffinity(0))
    env: dict = {}
    note = configure_threads(env, root)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    if affinity > 1:
        assert env["OMP_NUM_THREADS"] == "1" and "cgroup CPU quota 1" in note
    assert cpu_budget(root).cpus == 1


def test_what_the_user_set_is_kept(tmp_path):
    env = {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}
    note = configure_threads(env, _cgroup(tmp_path, 2, "100000"))
    assert env == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"} and "set by you" in note


def test_no_quota_leaves_the_thread_count_to_torch(tmp_path):
    env: dict = {}
    configure_threads(env, _cgroup(tmp_path, 2, "max"))
    assert "OMP_NUM_THREADS" not in env and env["OMP_WAIT_POLICY"] == "PASSIVE"
