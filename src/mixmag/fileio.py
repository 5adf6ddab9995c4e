"""How every output reaches the disk: atomic writes, one clear sentence when the disk is full, locked run folders.

A reader must never see half a file, two processes must never share a temporary name, and a failed write must leave
nothing behind: so every writer goes through `atomic_path` (or the `write_atomic` / `write_json_atomic` /
`hdf5_atomic` shortcuts, or `append_atomic` for a growing log).
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py

from .errors import MixmagError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(MixmagError):
    """The file system ran out of space (or quota) while mixmag wrote an output."""

    def __init__(self, path: str | Path, *, needed: int | None = None, free: int | None = None) -> None:
        self.path = str(path)
        sizes = "" if needed is None or free is None else f" (needs at least {_size(needed)}, {_size(free)} free)"
        super().__init__(
            f"no space left on device writing {self.path}{sizes}: free some space and run the same "
            "command again; finished outputs are intact and partial ones were removed"
        )


def _size(nbytes: int | None) -> str:
    value = float(nbytes or 0)
    for unit in ("bytes", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


class RunLockedError(MixmagError):
    """Another process is writing the same output folder."""


def is_disk_full(exc: BaseException | None) -> bool:
    """True for ENOSPC/EDQUOT, also when a library wrapped the OSError (torch, safetensors) and only says so in words
    or in the exception it raised while handling it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in _NO_SPACE):
            return True
        text = str(exc).lower()
        if "no space left on device" in text or "disk quota exceeded" in text or "database or disk is full" in text:
            return True  # the last one is SQLite's SQLITE_FULL
        exc = exc.__cause__ or exc.__context__
    return False


def ensure_free_space(path: str | Path, needed: int) -> None:
    """Refuse before the work when `path`'s file system has less than `needed` bytes free (a lower bound of the
    output's size), so a long computation is not wasted on an output that cannot be written."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(path, needed=needed, free=free)


def temporary_name(path: Path, suffix: str = "") -> Path:
    """A name beside `path` that no other process or thread uses: hidden, with pid and a random part."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial{suffix}")


@contextmanager
def atomic_path(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; when the block ends it is fsynced and renamed onto `path`.

    On any failure the temporary file is removed and `path` is left as it was; a full disk becomes `DiskFullError`.
    `suffix` keeps the extension for writers that choose the format by name (matplotlib, ``np.savez``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(path) from exc
        raise
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | bytearray | memoryview | str) -> Path:
    """Write bytes or UTF-8 text atomically; returns the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def write_csv_atomic(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV table (header, then rows) atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return write_atomic(path, buffer.getvalue())


@contextmanager
def hdf5_atomic(path: str | Path) -> Iterator[h5py.File]:
    """An HDF5 file built in memory, then written in one atomic write when the block ends.

    HDF5 must never meet a full disk itself: when its own write fails, closing the file fails too ("Can't destroy
    cache"), the half-closed file stays registered in the library, and the library's exit handler crashes the process
    (segfault, exit 139) after every other slide was abandoned. In memory, HDF5 cannot fail that way, and the one
    write that can is ours: removed on failure, reported as `DiskFullError`. The price is one in-memory copy of the
    file, next to the arrays it is made from.
    """
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        yield f
    with buffer.getbuffer() as view:
        write_atomic(path, view)


def append_atomic(path: str | Path, text: str) -> Path:
    """Append text (a log row) in one write, flushed to disk; a failed append is cut off again, so the file never
    ends in half a row. Two processes must not append to one file: lock its folder (`FolderLock`)."""
    path = Path(path)
    with open(path, "ab") as handle:
        size = handle.tell()
        try:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        except Exception as exc:
            handle.truncate(size)
            if is_disk_full(exc):
                raise DiskFullError(path) from exc
            raise
    return path


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Write JSON atomically (non-finite floats refused: JSON readers elsewhere reject NaN)."""
    return write_atomic(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


class FolderLock:
    """An exclusive lock on an output folder, held while one process writes it.

    The lock is an `flock` on `<folder>/.lock`, so it is released by the kernel when the holder dies (a `kill -9`
    leaves no stale lock); the file records the holder's pid and host so the second process can say who holds it.
    `name` locks one output inside a shared folder instead (`.<store>.lock`); the lock file stays behind (removing
    it would let a third process lock a new file while the second still waits on the old one).
    """

    def __init__(self, folder: str | Path, purpose: str = "writing", *, name: str = ".lock") -> None:
        self.folder = Path(folder)
        self.purpose = purpose
        self.lock_file = self.folder / name
        self.what = self.folder if name == ".lock" else self.folder / name.removeprefix(".").removesuffix(".lock")
        self._handle: Any = None

    def acquire(self) -> FolderLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_file, "a+b", buffering=0)  # unbuffered: nothing left to flush (and fail) at close
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFullError(self.lock_file) from exc
            raise
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().decode("utf-8", "replace").strip() or "another process"
            handle.close()
            raise RunLockedError(
                f"{self.what} is in use by {holder}: wait for it to finish, or use another output folder"
            ) from None
        handle.truncate(0)
        try:
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} ({self.purpose})\n".encode())
        except OSError:
            pass  # a full disk: the lock holds all the same, only the holder's name is missing
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.truncate(0)
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
