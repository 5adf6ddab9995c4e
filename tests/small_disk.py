"""A file system that fills up, for the disk-full tests: a real small tmpfs where this process may mount one (root
on Linux), otherwise injected ENOSPC on what mixmag writes.

Injected: every file mixmag writes is fsynced before it counts as written (fileio does that), so `os.fsync` of a file
under the disk that would take more than the room left raises ENOSPC, and `shutil.disk_usage` reports that room.
Both kinds answer the same `leave(n)` (only n bytes free from now on) and `unlimit()`.
Set MIXMAG_TEST_DISK=injected to use injection where mounting works too.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

TMPFS_SIZE = "48m"
PAGE = 4096


@functools.cache
def can_mount_tmpfs() -> bool:
    if os.environ.get("MIXMAG_TEST_DISK") == "injected" or not shutil.which("mount") or os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as probe:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe], capture_output=True).returncode:
            return False
        subprocess.run(["umount", probe], check=True)
    return True


class TmpfsDisk:
    kind = "tmpfs"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(root)], check=True)
        self.filler = root / "filler"

    def leave(self, nbytes: int) -> None:
        self.unlimit()
        size = shutil.disk_usage(self.root).free - nbytes
        with open(self.filler, "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, max(size, 1))

    def unlimit(self) -> None:
        self.filler.unlink(missing_ok=True)

    def footprint(self, nbytes: int) -> int:
        """Room a file of nbytes takes here (tmpfs counts whole pages)."""
        return -(-nbytes // PAGE) * PAGE

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.root)], check=False)


class InjectedDisk:
    kind = "injected"

    def __init__(self, root: Path, patch) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.room: int | None = None
        self.sizes: dict[int, int] = {}
        self._fsync, self._usage = os.fsync, shutil.disk_usage
        patch(os, "fsync", self.fsync)
        patch(shutil, "disk_usage", self.disk_usage)

    def _mine(self, path: str | Path) -> bool:
        return str(Path(path).resolve()).startswith(str(self.root.resolve()))

    def fsync(self, fd: int) -> None:
        if self.room is not None and self._mine(os.readlink(f"/proc/self/fd/{fd}")):
            st = os.fstat(fd)
            grown = st.st_size - self.sizes.get(st.st_ino, 0)
            if grown > self.room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.sizes[st.st_ino] = st.st_size
            self.room -= grown
        self._fsync(fd)

    def disk_usage(self, path):
        usage = self._usage(path)
        if self.room is None or not self._mine(path):
            return usage
        return usage._replace(free=self.room)

    def leave(self, nbytes: int) -> None:
        self.room, self.sizes = nbytes, {}

    def unlimit(self) -> None:
        self.room = None

    def footprint(self, nbytes: int) -> int:
        return nbytes

    def close(self) -> None:
        pass


def open_small_disk(root: Path, patch):
    return TmpfsDisk(root) if can_mount_tmpfs() else InjectedDisk(root, patch)
