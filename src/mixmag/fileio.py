"""How every output reaches the disk: atomic writes, one clear sentence when the disk is full, locked run folders.

A reader must never see half a file, two processes must never share a temporary name, and a failed write must leave
nothing behind: so every writer goes through `atomic_path` (or the `write_atomic` / `write_json_atomic` /
`hdf5_atomic` shortcuts, or `append_atomic` for a growing log).
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import h5py

from .errors import MixmagError
from .markup import spreadsheet_cell

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
    make_folder(path.parent)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path) from exc
        if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:
            raise output_error(path, exc) from exc
        raise
    finally:
        remove_own_file(tmp)


def write_atomic(path: str | Path, data: bytes | bytearray | memoryview | str) -> Path:
    """Write bytes or UTF-8 text atomically; returns the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def write_csv_atomic(
    path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]], *, escape_formulas: bool = True
) -> Path:
    """Write a CSV table (header, then rows) atomically; text a spreadsheet would run as a formula is escaped, unless
    the table is one mixmag reads back as input (`escape_formulas=False`: its cells must stay the user's)."""
    cell = spreadsheet_cell if escape_formulas else (lambda value: value)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow([cell(c) for c in header])
    writer.writerows([cell(c) for c in row] for row in rows)
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
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise output_error(path, exc) from exc
    with os.fdopen(fd, "ab") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{path}: is {type_name(os.fstat(fd).st_mode)}, not a file mixmag can append to")
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


def open_lock_file(path: str | Path) -> BinaryIO:
    """Open (creating it if needed) one of mixmag's lock files, never through a link: a link, a FIFO, a device, a
    folder, a file with a second name (hard link) or a file too large to be a lock is refused with a sentence, so
    taking a lock can never empty somebody's file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                f"{path}: the lock file is a symbolic link; mixmag never writes through a link to its own files: "
                "remove the link and run again"
            ) from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            kind = "a folder" if exc.errno == errno.EISDIR else "a socket"
            raise UnsafePathError(f"{path}: the lock file is {kind}: remove it and run again") from None
        raise output_error(path, exc) from exc
    info = os.fstat(fd)
    problem = ""
    if not stat.S_ISREG(info.st_mode):
        problem = f"is {type_name(info.st_mode)}"
    elif info.st_nlink > 1:
        problem = "has another name (a hard link), so it is not mixmag's"
    elif info.st_size > READ_LIMITS["lock"]:
        problem = f"holds {_size(info.st_size)}, far more than a lock's one line, so it is not mixmag's"
    if problem:
        os.close(fd)
        raise UnsafePathError(f"{path}: the lock file {problem}: move it away and run again")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return os.fdopen(fd, "r+b", buffering=0)  # unbuffered: nothing left to flush (and fail) at close


def lock_holder(handle: BinaryIO) -> str:
    """Who holds a lock, from its file's one line: at most 200 printable characters (the file is untrusted)."""
    handle.seek(0)
    line = handle.read(READ_LIMITS["lock"]).decode("utf-8", "replace").strip().splitlines()[:1]
    text = "".join(ch for ch in (line[0] if line else "") if ch.isprintable())[:200]
    return text or "another process"


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
        make_folder(self.folder)
        handle = open_lock_file(self.lock_file)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(handle)
            handle.close()
            raise RunLockedError(
                f"{self.what} is in use by {holder}: wait for it to finish, or use another output folder"
            ) from None
        handle.truncate(0)  # safe: open_lock_file proved it a small regular file with one name, not a link
        try:
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} ({self.purpose})\n".encode())
        except OSError:
            pass  # a full disk: the lock holds all the same, only the holder's name is missing
        self._handle = handle
        if self.lock_file.name == ".lock":  # the whole folder is ours now: what a killed writer left is stale
            remove_stale_partials(self.folder, recursive=True)
        else:
            remove_stale_partials(self.folder, self.what.name)
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


# ---------------------------------------------------------------------------------------------------------------------
# Paths mixmag did not create: regular files only, read within a budget; mixmag's own files never through a link.

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

READ_LIMITS: dict[str, int] = {
    "config": 4 * MiB,  # a YAML config or --set file: a few kB in practice
    "table": 512 * MiB,  # a cohort or slide table (a million rows of paths is ~200 MB)
    "plan": 256 * MiB,  # plan.json of the largest slide: ~1e6 cells at ~40 bytes
    "json": 64 * MiB,  # run records: metrics, pipeline, mixer, timings, summaries
    "catalog part": 256 * MiB,  # one writer's lines, ~300 bytes a store
    "log": 256 * MiB,  # a pretraining log.csv, a predictions CSV
    "lock": 4 * KiB,  # a lock file holds one line: the holder's pid, host and purpose
    "tissue model": 2 * GiB,  # an ONNX / TorchScript segmentation model
}

_TYPE_NAMES = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


class UnsafePathError(MixmagError):
    """A path that is not what mixmag may read or write there: a FIFO, device, socket or folder where a regular file
    is needed, or a link where mixmag keeps its own machinery (locks, partial files, catalog parts)."""


class FileTooLargeError(MixmagError):
    """A whole-file read over the budget declared for its kind of file."""


class DamagedFileError(MixmagError, ValueError):
    """A file that is there and readable but not what it should be (JSON that does not parse)."""


class OutputError(MixmagError):
    """An output that cannot be written: a read-only folder, a file where a folder is needed, a name too long."""


def type_name(mode: int) -> str:
    """'a FIFO (named pipe)', 'a folder', ... for a stat mode; 'a regular file' otherwise."""
    return next((name for test, name in _TYPE_NAMES if test(mode)), "a regular file")


def own_folder_exists(path: Path, what: str, fix: str) -> bool:
    """True when mixmag's own folder `path` is there as a real folder, False when absent; a FIFO, file or link in its
    place is refused by name (never followed: mixmag deletes inside its own folders), `fix` ending the sentence."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(mode):
        raise UnsafePathError(f"{path}: {what} is {type_name(mode)}, not a folder: {fix}")
    return True


def _limit(limit: str | int) -> int:
    return READ_LIMITS[limit] if isinstance(limit, str) else int(limit)


def open_regular(path: str | Path, what: str = "file", *, follow: bool = True) -> BinaryIO:
    """Open a file for reading only if it is a regular file: a FIFO is opened non-blocking and refused, so it never
    hangs the batch; a device, socket or folder is refused by name. `follow=False` also refuses a link (for mixmag's
    own machinery files)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise UnsafePathError(
                f"{path}: {what} is a symbolic link; mixmag never follows links to its own files: remove the link"
            ) from None
        if exc.errno == errno.ENXIO:  # a socket
            raise UnsafePathError(f"{path}: {what} is a socket, not a regular file: give the path of a file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafePathError(f"{path}: {what} is {type_name(mode)}, not a regular file: give the path of a file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | Path, what: str = "file") -> None:
    """Refuse a path that exists but is not a regular file (after links), before a library opens it and blocks on a
    FIFO or reads a device forever. A missing path is left to the caller's own message."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise UnsafePathError(f"{path}: {what} is {type_name(mode)}, not a regular file: give the path of a file")


def file_sha256(path: str | Path, what: str = "file") -> str:
    """The file's sha256 (hex), read in 16 MB blocks: a multi-GB weights file is hashed in bounded memory, and a FIFO
    or device is refused instead of read forever."""
    digest = hashlib.sha256()
    with open_regular(path, what) as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def open_hdf5(path: str | Path, what: str = "store") -> h5py.File:
    """An HDF5 file opened for reading, refused first if it is a FIFO, device or folder (HDF5 would block on a FIFO
    or read a device forever)."""
    check_regular(path, what)
    return h5py.File(path, "r")


def read_bytes_limited(path: str | Path, limit: str | int, *, what: str = "file", follow: bool = True) -> bytes:
    """The whole file, if it is a regular file of at most `limit` bytes (a kind from `READ_LIMITS`, or a number)."""
    budget = _limit(limit)
    with open_regular(path, what, follow=follow) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(budget + 1) if size <= budget else b""
    if size > budget or len(data) > budget:
        raise FileTooLargeError(
            f"{path}: {what} is {_size(max(size, len(data)))}, over the {_size(budget)} a {what} may have: "
            "check that this is the right file"
        )
    return data


def read_text_limited(path: str | Path, limit: str | int, *, what: str = "file", encoding: str = "utf-8") -> str:
    """`read_bytes_limited`, decoded; undecodable bytes are one sentence naming the file."""
    data = read_bytes_limited(path, limit, what=what)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DamagedFileError(f"{path}: {what} is not {encoding} text ({exc.reason} at byte {exc.start})") from None


def read_json_limited(path: str | Path, limit: str | int = "json", *, what: str = "JSON file") -> Any:
    """A JSON file read within its budget; damaged JSON is one sentence naming the file."""
    text = read_text_limited(path, limit, what=what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DamagedFileError(f"{path}: {what} is not valid JSON ({exc}); it is damaged: remake it") from None


def own_folder(path: str | Path, what: str = "folder") -> Path:
    """Create (or accept) a folder that holds mixmag's own machinery files; a link, or anything not a folder, there
    is refused, so nothing mixmag writes or deletes inside it can land elsewhere."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        pass  # not a folder: said below
    except OSError as exc:
        raise output_error(path, exc) from exc
    own_folder_exists(path, f"mixmag's {what}", "remove it and run again")
    return path


def remove_own_file(path: str | Path) -> bool:
    """Delete one of mixmag's own files (a partial, a part, a stale temporary): only a regular file, never a link
    (the link itself is left for the user to see) and never what a link points to. True when it was removed."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def remove_own_tree(path: str | Path, what: str = "folder") -> None:
    """Delete a folder mixmag made and is about to remake (stale cohorts, a pretraining run whose settings changed);
    a link there is refused, never followed or removed, and a missing folder is fine."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise UnsafePathError(
            f"{path}: mixmag's {what} is {type_name(mode)}, not a folder it made: move it away and run again"
        )
    shutil.rmtree(path)


def inside_folder(folder: str | Path, path: str | Path, what: str = "output") -> Path:
    """`path`, if it resolves inside `folder`: the folder the user named may itself be a link (a scratch disk), but
    a link inside it that points elsewhere is refused, so a run or work folder never writes outside itself."""
    path = Path(path)
    if not path.resolve().is_relative_to(Path(folder).resolve()):
        raise UnsafePathError(
            f"{path}: the {what} resolves outside {folder} (a symbolic link inside it points elsewhere); mixmag writes "
            "only inside the folder you name: remove the link"
        )
    return path


def make_folder(path: str | Path) -> Path:
    """Create an output folder (and its parents) if needed; a read-only disk, a file in the way or a name too long is
    one sentence (`OutputError`), a full disk `DiskFullError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from exc
    return path


def output_folder(folder: str | Path, name: str, what: str = "folder") -> Path:
    """A sub-folder of an output folder, created if needed, refused when a link makes it land outside `folder`."""
    return make_folder(inside_folder(folder, Path(folder) / name, what))


_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.partial[^/]*\Z")


def remove_stale_partials(folder: str | Path, name: str | None = None, *, recursive: bool = False) -> int:
    """Remove temporary files left by killed writers (`temporary_name`'s pattern) in `folder`, for the output `name`
    or for all. Call it only while holding the lock of that output (or folder): no live writer can own them then.
    Links are never followed or removed. Returns how many were removed."""
    removed = 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        for entry in files:
            match = _PARTIAL.match(entry)
            if match and (name is None or match["name"] == name):
                removed += remove_own_file(os.path.join(root, entry))
        if not recursive:
            break
        # links are not entered, nor folders with a lock of their own (another run may be writing there)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d)) and not _has_lock(root, d)]
    return removed


def _has_lock(root: str, name: str) -> bool:
    return os.path.lexists(os.path.join(root, name, ".lock"))


_UNWRITABLE = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENAMETOOLONG: "the path is too long",
    errno.EEXIST: "a file is in the way where a folder is needed",
    errno.ELOOP: "it is a symbolic link mixmag does not follow",
}


def is_unwritable(exc: BaseException) -> bool:
    """An OSError that says an output cannot be written where it was asked for."""
    return isinstance(exc, OSError) and (exc.errno in _UNWRITABLE or is_disk_full(exc))


def output_error(path: str | Path, exc: OSError) -> MixmagError:
    """The one sentence for an output that cannot be written (disk full, read-only, a file in the way, ...)."""
    if is_disk_full(exc):
        return DiskFullError(path)
    reason = _UNWRITABLE.get(exc.errno or 0, exc.strerror or str(exc))
    return OutputError(f"cannot write {path}: {reason}; choose another output folder or fix its permissions")
