"""Claim files: which worker is doing which slide, on a folder many machines share (NFS included).

A worker that starts a slide creates `<out>/.mixmag/<stage>/<slide>.claim`: its host, boot id, pid, the pid's start
time and its own start time are written to a unique file (O_CREAT|O_EXCL|O_NOFOLLOW) that is then linked to the
claim's name, which fails when the name exists (atomic on local disks and on NFS), so a claim is never seen empty; it
refreshes the file's mtime (its heartbeat) from a thread while it works. Another worker that finds the claim
leaves the slide alone, unless the claim is stale: its heartbeat is older than the timeout (a worker on another
machine died, or lost the folder), or its pid is gone on this same host (a `kill -9` here is seen at once). A stale
claim is taken over under a takeover marker (`.<slide>.claim.takeover`, created like a claim: one taker at a time):
its holder checks the claim is still the stale one, renames it away and lets the takers race for a fresh claim by
link() again, so a claim's name is never emptied by a worker that judged an older claim (which let two workers
win). The mtime is judged against the file system's own clock (the mtime of a file just created there), so clocks
that disagree between machines do not make a live claim look dead.

`flock` is not used: on NFS it is emulated with byte-range locks that need a lock daemon, and a lock whose holder's
machine died may stay held until its lease runs out, or never work at all. A claim file is never written, read or
deleted through a link, and one that is a link, a FIFO, a folder or too large to be a claim is refused by name.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import MixmagError
from .fileio import (
    READ_LIMITS,
    DiskFullError,
    UnsafePathError,
    is_disk_full,
    output_error,
    own_folder,
    read_bytes_limited,
    remove_own_file,
    type_name,
)
from .ids import check_id

WORK_FOLDER = ".mixmag"  # <out>/.mixmag/<stage>/: claims and state records of the slides of one stage
CLAIM_SUFFIX = ".claim"
DEFAULT_TIMEOUT = 600.0  # seconds without a heartbeat after which a claim from another machine is taken over


def stage_folder(out_dir: str | Path, stage: str, *, create: bool = True) -> Path:
    """`<out>/.mixmag/<stage>/`, mixmag's machinery folder for one stage's slides (never a link)."""
    folder = Path(out_dir) / WORK_FOLDER / check_id(stage, what="stage name")
    if create:
        own_folder(folder.parent, "work folder")
        own_folder(folder, "work folder")
    return folder


class ClaimError(MixmagError):
    """A claim file that is not mixmag's (a link, a FIFO, a folder, a large file) or cannot be written."""


class Holder(BaseModel):
    """What a claim file says about its worker."""

    model_config = ConfigDict(extra="ignore", strict=True)
    host: str
    boot: str = ""
    pid: int
    pid_start: int | None = None  # the pid's start in clock ticks after boot: a reused pid is not the holder
    started: float  # when the worker claimed the slide (seconds since the epoch)
    purpose: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.purpose})" if self.purpose else f"pid {self.pid} on {self.host}"


@functools.cache
def boot_id() -> str:
    """This machine's boot id: a host name and a pid name one process only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:64]
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (Linux /proc), None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def me(purpose: str) -> Holder:
    pid = os.getpid()
    return Holder(
        host=socket.gethostname()[:200],
        boot=boot_id(),
        pid=pid,
        pid_start=process_start(pid),
        started=time.time(),
        purpose=purpose[:200],
    )


def process_is_gone(holder: Holder) -> bool:
    """True when the holder ran on this machine (same host and boot) and its process no longer exists."""
    if holder.host != socket.gethostname()[:200] or holder.boot != boot_id():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    start = process_start(holder.pid)
    return holder.pid_start is not None and start is not None and start != holder.pid_start


@dataclass(frozen=True)
class ClaimInfo:
    """A claim as found on disk, judged live or stale."""

    slide_id: str
    holder: Holder | None  # None: empty (being written) or unreadable content
    heartbeat: float  # mtime, seconds since the epoch on the file system's clock
    age: float  # seconds since the heartbeat, on the file system's clock
    stale: str  # why it may be taken over, "" while it is live
    identity: tuple[int, int, int] = field(default=(0, 0, 0), repr=False)

    def who(self) -> str:
        """'pid 12 on node3 (embedding s1) since 2026-01-01 10:00:00, heartbeat 4 s ago'."""
        who = self.holder.describe() if self.holder else "an unknown worker (unreadable claim)"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.holder.started)) if self.holder else "?"
        return f"{who} since {since}, heartbeat {self.age:.0f} s ago"

    def describe(self) -> str:
        return f"in use by {self.who()}"


def filesystem_now(folder: Path) -> float:
    """The file system's clock (another machine's NFS server may disagree with ours): the mtime of a file just
    created there. Falls back to our clock where nothing can be created (a read-only look at a folder)."""
    probe = folder / f".clock.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return time.time()
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        remove_own_file(probe)


def inspect_claim(path: Path, slide_id: str, *, timeout: float, now: float) -> ClaimInfo | None:
    """The claim at `path` (None when there is none), judged against `timeout` at file-system time `now`. A link, a
    FIFO, a folder or a file too large to be a claim is refused with `ClaimError`, never followed or read."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise ClaimError(
            f"{path}: the claim file of slide {slide_id} is {type_name(info.st_mode)}, not a claim mixmag wrote; "
            "mixmag never follows links or reads pipes as its own files: move it away and run again"
        )
    if info.st_size > READ_LIMITS["lock"]:
        raise ClaimError(
            f"{path}: the claim file of slide {slide_id} holds {info.st_size} bytes, far more than a claim's one "
            "line, so it is not mixmag's: move it away and run again"
        )
    try:
        data = read_bytes_limited(path, "lock", what="claim file", follow=False)
    except FileNotFoundError:
        return None
    except (UnsafePathError, OSError) as exc:  # replaced by a link or a FIFO since the lstat
        raise ClaimError(f"{path}: {exc}") from None
    holder = parse_holder(data)
    age = max(0.0, now - info.st_mtime)
    stale = ""
    if age > timeout:
        stale = f"no heartbeat for {age:.0f} s (timeout {timeout:.0f} s)"
    elif holder is not None and process_is_gone(holder):
        stale = f"pid {holder.pid} on this host is gone"
    return ClaimInfo(slide_id, holder, info.st_mtime, age, stale, _identity(info))


def parse_holder(data: bytes) -> Holder | None:
    try:
        return Holder.model_validate(json.loads(data.decode("utf-8")))
    except (ValueError, ValidationError, UnicodeDecodeError):
        return None


TakeoverHook = Callable[[ClaimInfo], None]


class SlideClaims:
    """The slides this process works on in one stage's folder, each under a claim file kept alive by a heartbeat.

    `claim(slide)` returns None when the slide is ours now, else the live claim that holds it; `release(slide)`
    removes our claim (only while it is still ours). A claim that another worker took over while this one stalled
    past the timeout is noticed by the heartbeat (`still_ours` is then False), so its output is not written twice.
    """

    def __init__(
        self,
        out_dir: str | Path,
        stage: str,
        purpose: str = "",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        on_takeover: TakeoverHook | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError("a claim timeout must be positive")
        self.folder = stage_folder(out_dir, stage)
        self.stage = stage
        self.purpose = purpose
        self.timeout = float(timeout)
        self.on_takeover = on_takeover
        self.held: dict[str, int] = {}  # slide -> the open descriptor of our claim file
        self.lost: set[str] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        sweep_leftovers(self.folder, self.timeout)

    def path(self, slide_id: str) -> Path:
        """The claim's name (the id checked; not resolved: a link there is refused by name, never followed)."""
        return self.folder / f"{check_id(slide_id)}{CLAIM_SUFFIX}"

    def claim(self, slide_id: str, purpose: str | None = None) -> ClaimInfo | None:
        path = self.path(slide_id)
        for _ in range(8):  # each turn either wins, meets a live claim, or removed a stale one
            fd = self._create(path, purpose or self.purpose)
            if fd is not None:
                with self._guard:
                    self.held[slide_id] = fd
                    self.lost.discard(slide_id)
                self._start_heartbeat()
                return None
            found = inspect_claim(path, slide_id, timeout=self.timeout, now=filesystem_now(self.folder))
            if found is None:
                continue  # released meanwhile
            if not found.stale:
                return found
            outcome = self._take_over(path, found)
            if isinstance(outcome, ClaimInfo):
                return outcome  # another worker is taking it over this instant
            if outcome and self.on_takeover is not None:
                self.on_takeover(found)
        raise ClaimError(f"{path}: the claim of slide {slide_id} keeps changing hands; run again")

    def _create(self, path: Path, purpose: str) -> int | None:
        """Our claim at `path`, never empty: the content is written and synced under a unique name first (O_CREAT |
        O_EXCL | O_NOFOLLOW), then given the claim's name by link(), which fails if the name exists (atomic on NFS
        too, where a lost reply is told apart by the link count). Where the file system has no hard links, the claim
        is created with O_EXCL directly. None when the name is taken."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o644)
        except OSError as exc:
            raise _claim_error(path, exc) from exc
        try:
            os.write(fd, (me(purpose).model_dump_json() + "\n").encode())
            os.fsync(fd)
            try:
                os.link(tmp, path, follow_symlinks=False)
            except FileExistsError:
                os.close(fd)
                return None
            except OSError as exc:
                if os.fstat(fd).st_nlink != 2:  # not a lost reply: no hard links here
                    os.close(fd)
                    return self._create_direct(path, purpose, exc)
            return fd
        except OSError as exc:
            os.close(fd)
            raise _claim_error(path, exc) from exc
        finally:
            remove_own_file(tmp)

    def _create_direct(self, path: Path, purpose: str, why: OSError) -> int | None:
        if why.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise _claim_error(path, why) from why
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None  # a link: inspect_claim names it
            raise _claim_error(path, exc) from exc
        try:
            os.write(fd, (me(purpose).model_dump_json() + "\n").encode())
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            remove_own_file(path)
            raise _claim_error(path, exc) from exc
        return fd

    def _take_over(self, path: Path, found: ClaimInfo) -> bool | ClaimInfo:
        """Remove the stale claim `found` under the slide's takeover marker. True when we removed it (the caller then
        races for a fresh claim), False when it changed since it was judged (judge again), or the marker's ClaimInfo
        while another worker is taking it over (the slide is theirs)."""
        marker = path.with_name(f".{path.name}.takeover")
        fd = self._create(marker, f"taking over {found.slide_id}")
        if fd is None:
            return self._marker_in_the_way(marker, found.slide_id)
        try:
            return self._move_stale_claim_aside(path, found)
        finally:
            os.close(fd)
            remove_own_file(marker)

    def _marker_in_the_way(self, marker: Path, slide_id: str) -> bool | ClaimInfo:
        """Another taker's marker: theirs while fresh; one left by a taker that died is removed (False: try again)."""
        held = inspect_claim(marker, slide_id, timeout=self.timeout, now=filesystem_now(self.folder))
        if held is None:
            return False
        if not held.stale:
            return held
        self._move_stale_claim_aside(marker, held)
        return False

    @staticmethod
    def _move_stale_claim_aside(path: Path, found: ClaimInfo) -> bool:
        """Rename `path` aside when it is still the file judged stale; one that changed meanwhile (its holder's
        heartbeat came back) is put back. True when the stale file was removed."""
        try:
            if _identity(os.lstat(path)) != found.identity:
                return False  # released, renewed or replaced since it was judged
        except FileNotFoundError:
            return False
        aside = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.stale")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if _identity(os.lstat(aside)) != found.identity:
            try:
                os.link(aside, path, follow_symlinks=False)  # never over a claim made meanwhile
            except OSError:
                pass  # its holder's heartbeat sees it lost
            remove_own_file(aside)  # a regular file only: anything else stays for the user to see
            return False
        remove_own_file(aside)
        return True

    def still_ours(self, slide_id: str) -> bool:
        with self._guard:
            fd = self.held.get(slide_id)
            if fd is None or slide_id in self.lost:
                return False
        return _same_file(fd, self.path(slide_id))

    def release(self, slide_id: str) -> None:
        with self._guard:
            fd = self.held.pop(slide_id, None)
            self.lost.discard(slide_id)
        if fd is None:
            return
        path = self.path(slide_id)
        try:
            if _same_file(fd, path):
                os.unlink(path)
        except OSError:
            pass  # a claim that cannot be removed goes stale and is taken over
        finally:
            os.close(fd)

    def release_all(self) -> None:
        for slide_id in list(self.held):
            self.release(slide_id)
        self._stop.set()

    def _start_heartbeat(self) -> None:
        if self._beat is None or not self._beat.is_alive():
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, name="mixmag-claims", daemon=True)
            self._beat.start()

    def _heartbeat(self) -> None:
        interval = max(0.05, self.timeout / 10)
        while not self._stop.wait(interval):
            with self._guard:
                held = dict(self.held)
            for slide_id, fd in held.items():
                try:
                    os.utime(fd)  # the file system's clock: NFS sets it on the server
                except OSError:
                    pass
                if not _same_file(fd, self.path(slide_id)):
                    with self._guard:
                        if slide_id in self.held:
                            self.lost.add(slide_id)

    def __enter__(self) -> SlideClaims:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_all()


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    """A claim file's identity as judged: a heartbeat (mtime) or a new file (inode) makes another."""
    return (info.st_dev, info.st_ino, info.st_mtime_ns)


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _claim_error(path: Path, exc: OSError) -> MixmagError:
    if is_disk_full(exc):
        return DiskFullError(path)
    return output_error(path, exc)


LEFTOVER_SUFFIXES = (".partial", ".stale")  # a claim being written, a claim moved aside: each lives for an instant


def sweep_leftovers(folder: Path, timeout: float) -> int:
    """Remove the hidden temporaries of workers killed between creating and removing them (a claim's unique name
    before its link, a stale claim moved aside, a clock probe): each exists for an instant, so one older than the
    claim timeout is nobody's. Regular files only, never through a link. Returns how many were removed."""
    now = filesystem_now(folder)
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(LEFTOVER_SUFFIXES)):
            continue
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > timeout
        except OSError:
            continue
        if old and remove_own_file(entry.path):
            removed += 1
    return removed


def list_claims(folder: Path, *, timeout: float = DEFAULT_TIMEOUT) -> list[ClaimInfo | tuple[str, str]]:
    """Every claim in a stage folder, judged; a claim file mixmag cannot read is (slide, why)."""
    now = filesystem_now(folder)
    found: list[ClaimInfo | tuple[str, str]] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.name.endswith(CLAIM_SUFFIX) or entry.name.startswith("."):
            continue
        slide_id = entry.name[: -len(CLAIM_SUFFIX)]
        try:
            info = inspect_claim(Path(entry.path), slide_id, timeout=timeout, now=now)
        except ClaimError as exc:
            found.append((slide_id, str(exc)))
            continue
        if info is not None:
            found.append(info)
    return found
