"""Atomic writes leave nothing behind on failure, a full disk is one sentence, a folder in use is refused."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import shutil
import sqlite3

import h5py
import pytest

from mixmag.fileio import (
    DiskFullError,
    FolderLock,
    RunLockedError,
    append_atomic,
    atomic_path,
    ensure_free_space,
    hdf5_atomic,
    is_disk_full,
    write_atomic,
    write_json_atomic,
)


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


def _no_space(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_append_leaves_no_half_row(tmp_path, monkeypatch):
    log = append_atomic(tmp_path / "log.csv", "step,loss\n1,0.5\n")
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(DiskFullError, match=r"writing .*log\.csv"):
        append_atomic(log, "2,0.4\n")
    assert log.read_text() == "step,loss\n1,0.5\n"


def test_an_hdf5_file_is_written_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError):
        with hdf5_atomic(tmp_path / "a.h5") as f:
            f.create_dataset("x", data=[1, 2, 3])
            raise RuntimeError("crash midway")
    assert not list(tmp_path.iterdir())
    with hdf5_atomic(tmp_path / "a.h5") as f:
        f.create_dataset("x", data=[1, 2, 3])
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["x"][()].tolist() == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]


def test_free_space_is_checked_before_the_work(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1500))
    with pytest.raises(DiskFullError, match=r"writing .*s\.h5 \(needs at least 2\.0 kB, 1\.5 kB free\)"):
        ensure_free_space(tmp_path / "stores" / "s.h5", 2000)
    ensure_free_space(tmp_path / "stores" / "s.h5", 1000)


def test_disk_full_is_recognised_behind_a_library_error():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            # implicit chaining on purpose: torch raises this way, and is_disk_full must find the OSError in __context__
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")  # noqa: B904
    except RuntimeError as exc:
        assert is_disk_full(exc)
    assert not is_disk_full(RuntimeError("unexpected pos 576 vs 534"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))  # SQLITE_FULL (the store catalog)


def test_one_output_in_a_shared_folder_is_locked_alone(tmp_path):
    with FolderLock(tmp_path, "embedding s", name=".s.h5.lock"):
        with pytest.raises(RunLockedError, match=rf"{tmp_path / 's.h5'} is in use by pid {os.getpid()} .*embedding s"):
            FolderLock(tmp_path, name=".s.h5.lock").acquire()
        with FolderLock(tmp_path, name=".t.h5.lock"), FolderLock(tmp_path):
            pass
