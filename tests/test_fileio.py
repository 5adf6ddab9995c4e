"""Atomic writes leave nothing behind on failure, a full disk is one sentence, a folder in use is refused."""

from __future__ import annotations

import errno
import multiprocessing as mp

import pytest

from mixmag.fileio import DiskFullError, FolderLock, RunLockedError, atomic_path, write_atomic, write_json_atomic


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    target = write_atomic(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash midway")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_disk_full_is_one_sentence_naming_the_file(tmp_path):
    target = tmp_path / "out" / "log.csv"
    with pytest.raises(DiskFullError, match=r"no space left on device writing .*log\.csv"):
        with atomic_path(target) as tmp:
            tmp.write_text("x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list((tmp_path / "out").iterdir()) == []


def test_temporary_names_differ_between_writers(tmp_path):
    with atomic_path(tmp_path / "x") as first, atomic_path(tmp_path / "x") as second:
        first.write_text("1")
        second.write_text("2")
        assert first != second
    assert (tmp_path / "x").read_text() in {"1", "2"}


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "a.json", {"x": float("nan")})
    assert not list(tmp_path.iterdir())


def _hold(folder, ready, done):
    with FolderLock(folder, "pretraining"):
        ready.set()
        done.wait(30)


def test_second_process_is_told_who_holds_the_folder(tmp_path):
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, ready, done))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunLockedError, match=rf"in use by pid {holder.pid} .*pretraining"):
            FolderLock(tmp_path).acquire()
    finally:
        done.set()
        holder.join(30)
    with FolderLock(tmp_path):  # released when the holder ends
        pass
