"""How every output reaches the disk: atomic writes, one clear sentence when the disk is full, locked run folders.

A reader must never see half a file, two processes must never share a temporary name, and a failed write must leave
nothing behind: so every writer goes through `atomic_path` (or the `write_atomic` / `write_json_atomic` shortcuts).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import MixmagError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(MixmagError):
    """The file system ran out of space (or quota) while mixmag wrote an output."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        super().__init__(f"no space left on device writing {self.path}: free some space and run the same command "
                         "again; finished outputs are intact and partial ones were removed")


class RunLockedError(MixmagError):
    """Another process is writing the same output folder."""


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also when a library wrapped the OSError (h5py, torch) and only says so in words."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return True
    text = str(exc).lower()
    return "no space left on device" in text or "disk quota exceeded" in text


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
        if is_disk_full(exc):
            raise DiskFullError(path) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write bytes or UTF-8 text atomically; returns the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Write JSON atomically (non-finite floats refused: JSON readers elsewhere reject NaN)."""
    return write_atomic(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


class FolderLock:
    """An exclusive lock on an output folder, held while one process writes it.

    The lock is an `flock` on `<folder>/.lock`, so it is released by the kernel when the holder dies (a `kill -9`
    leaves no stale lock); the file records the holder's pid and host so the second process can say who holds it.
    """

    def __init__(self, folder: str | Path, purpose: str = "writing") -> None:
        self.folder = Path(folder)
        self.purpose = purpose
        self._handle: Any = None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / ".lock", "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLockedError(f"{self.folder} is in use by {holder}: wait for it to finish, or use another "
                                 "output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} ({self.purpose})\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
