"""The store catalog: one file per stores folder that says, for every store, where it is, its size and mtime, its
provenance and its cell / region / context counts, so that a million-store corpus starts without a million header opens.

Why SQLite (the standard library's `sqlite3`): one self-describing file with a schema, typed columns and an index on
slide ids, readable by any SQLite tool, no extra dependency, and written here only as a whole new file renamed into
place.

Many writers at once (torchrun ranks on many nodes, each landing stores): SQLite's own locking is not safe over NFS or
Lustre (its docs: WAL needs shared memory on one host, and POSIX locks are unreliable over network file systems), so
writers never share a file. Each writer appends one JSON line per store to a part file of its own
(`mixmag-catalog.parts/<host>-<pid>-<random>.jsonl`); readers read the catalog plus every part (a torn last line is
ignored); a refresh folds finished parts into a new catalog, renamed atomically, and deletes only the parts it folded,
one fold at a time (a blocking flock on `.mixmag-catalog.lock`; under it the fold re-reads what landed meanwhile). Where
a file system does not honour flock across nodes, a row lost to two folds at once is found again by the next folder
scan: the catalog is a cache of the stores, never the truth, and every entry is checked against its file's size and
mtime before it is trusted.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sqlite3
import stat
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import MixmagError, MixmagWarning
from .fileio import (
    READ_LIMITS,
    UnsafePathError,
    atomic_path,
    check_regular,
    open_hdf5,
    open_lock_file,
    open_regular,
    output_error,
    own_folder,
    own_folder_exists,
    remove_own_file,
    type_name,
)
from .store import (
    NEWER_FIELDS,
    STORE_SUFFIX,
    PipelineSettings,
    StoreError,
    StoreHeader,
    decode_attrs,
    layout_problems,
    read_attrs,
    shared_settings,
    shared_settings_of_groups,
)

CATALOG_NAME = "mixmag-catalog.sqlite"
PARTS_NAME = "mixmag-catalog.parts"
LOCK_NAME = ".mixmag-catalog.lock"
CATALOG_FORMAT = "mixmag-store-catalog"
CATALOG_VERSION = 1
_MAX_LEVELS = 8
# a row read from an untrusted catalog that _entry_problem would refuse, as one SQL condition (checked for all rows
# at once)
_COUNTS = ("size", "mtime_ns", "cells", "regions", "contexts", "dim", "levels")
_BAD_ROW = " OR ".join(
    [f"typeof({c}) != 'integer' OR {c} < 0" for c in _COUNTS]
    + [
        "dim < 1",
        "levels < 1",
        f"levels > {_MAX_LEVELS}",
        "typeof(path) != 'text'",
        "typeof(slide_id) != 'text'",
        "slide_id = ''",
        "typeof(settings) != 'text'",
        "substr(path, 1, 1) = '/'",
        "instr('/' || path || '/', '/../') > 0",
        "instr(path, char(92)) > 0",
        f"substr(path, -{len(STORE_SUFFIX)}) != '{STORE_SUFFIX}'",
    ]
)
_COLUMNS = ("path", "slide_id", "size", "mtime_ns", "settings", "cells", "regions", "contexts", "dim", "levels")


class CatalogError(MixmagError):
    """A catalog that cannot be used and must not be overwritten (made by a newer mixmag)."""


class CatalogWarning(MixmagWarning):
    """The catalog disagreed with the folder (stale, missing or new stores; damaged file) and was repaired."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One store as the catalog knows it; `path` is relative to the stores folder (POSIX), so folders can move."""

    path: str
    slide_id: str
    size: int
    mtime_ns: int
    settings: str  # PipelineSettings.key(): JSON, sorted keys: identical strings for identical settings
    cells: int
    regions: int
    contexts: int
    dim: int
    levels: int


@dataclass
class CatalogReport:
    """What a refresh found: stores new to the catalog, changed since (size or mtime), gone, unreadable."""

    new: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # named like a store but not a file: path -> what it is
    damaged: str | None = None
    unwritten: str | None = None  # why the refreshed catalog could not be written back (it is right in memory)

    @property
    def changed(self) -> bool:
        return bool(self.new or self.stale or self.missing or self.damaged)

    def sentences(self, folder: Path) -> list[str]:
        out = []
        if self.damaged:
            out.append(f"{folder / CATALOG_NAME}: {self.damaged}; rebuilt from the stores")
        for what, items in (
            ("changed since they were catalogued (size or mtime)", self.stale),
            ("catalogued but gone", self.missing),
            ("not yet catalogued", self.new),
        ):
            if items:
                out.append(f"{folder}: {len(items)} store(s) {what}: {_few(items)}")
        for path, why in list(self.unreadable.items())[:5]:
            out.append(f"{folder / path}: left out, {why}")
        if self.skipped:
            named = [f"{path} ({what})" for path, what in sorted(self.skipped.items())]
            out.append(
                f"{folder}: {len(named)} entr{'y' if len(named) == 1 else 'ies'} named *{STORE_SUFFIX} left out, "
                f"not regular files: {_few(named)}"
            )
        return out


def _few(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


class Catalog:
    """The stores of one folder (flat or sharded into sub-folders), in path order, without opening them."""

    def __init__(self, folder: str | Path, entries: Iterable[CatalogEntry]) -> None:
        self.folder = Path(folder)
        self.entries = sorted(entries, key=lambda e: e.path)

    def __len__(self) -> int:
        return len(self.entries)

    def path(self, entry: CatalogEntry) -> Path:
        return self.folder / entry.path

    def path_text(self, entry: CatalogEntry) -> str:
        """The store's path as a string: a tenth of the cost of a Path, for a million entries."""
        return f"{self.folder}/{entry.path}"

    def paths(self) -> list[Path]:
        return [self.folder / e.path for e in self.entries]

    def by_slide(self) -> dict[str, CatalogEntry]:
        """Slide id -> entry; two stores of one slide id (e.g. in two shards) are refused, naming both."""
        found: dict[str, CatalogEntry] = {}
        for e in self.entries:
            if e.slide_id in found:
                raise StoreError(
                    f"{self.folder}: slide {e.slide_id!r} has two stores ({found[e.slide_id].path} and {e.path}); "
                    "delete one of them"
                )
            found[e.slide_id] = e
        return found

    def subset(self, keep: Callable[[CatalogEntry], bool]) -> Catalog:
        return Catalog(self.folder, [e for e in self.entries if keep(e)])

    def shared_settings(self) -> PipelineSettings:
        """store.shared_settings over the catalog: one check over the distinct settings, not one header per store."""
        groups: dict[str, list[CatalogEntry]] = {}
        for e in self.entries:
            groups.setdefault(e.settings, []).append(e)
        if not groups:
            raise StoreError(f"{self.folder}: no stores (*{STORE_SUFFIX}); run `mixmag embed` first")
        return shared_settings_of_groups(
            [(PipelineSettings.model_validate_json(s), len(g), self.folder / g[0].path) for s, g in groups.items()]
        )


def catalog_file(folder: str | Path) -> Path:
    return Path(folder) / CATALOG_NAME


@dataclass
class StoreScan:
    """What a folder scan found: the stores (relative POSIX path -> (size, mtime_ns)) and the entries named like a
    store that are not a regular file (relative path -> what it is: a FIFO, a device, a broken link, ...), left out
    unopened so that a caller can name them."""

    stores: dict[str, tuple[int, int]]
    skipped: dict[str, str]


def scan_stores(folder: str | Path) -> StoreScan:
    """Every store under the folder, at any depth. Hidden names (temporary files, `.partial` stores) are skipped
    silently; symbolic links to files count, links to folders are not followed; anything else named like a store is
    left out and named in the scan's `skipped`."""
    folder = Path(folder)
    found: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    stack = [(folder, "")]
    while stack:
        here, prefix = stack.pop()
        with os.scandir(here) as it:
            for item in it:
                if item.name.startswith("."):
                    continue
                if item.is_dir(follow_symlinks=False):
                    if item.name != PARTS_NAME:
                        stack.append((Path(item.path), f"{prefix}{item.name}/"))
                elif item.name.endswith(STORE_SUFFIX):
                    if item.is_file():
                        st = item.stat()
                        found[prefix + item.name] = (st.st_size, st.st_mtime_ns)
                    else:
                        skipped[prefix + item.name] = _not_a_store(item)
    return StoreScan(found, skipped)


def _not_a_store(item: os.DirEntry[str]) -> str:
    """What an entry named like a store is, when it is not a regular file (from stat calls only: never opened)."""
    try:
        if not item.is_symlink():
            return type_name(item.stat(follow_symlinks=False).st_mode)
    except OSError:
        return "gone while the folder was scanned"
    try:
        return f"a symbolic link to {type_name(os.stat(item.path).st_mode)}"
    except OSError:
        return "a broken symbolic link"


def stat_inside(folder: Path, rel: str) -> os.stat_result:
    """The stat of a catalogued store, refused (OSError) when a linked sub-folder would take the row outside the
    folder: the scan never enters linked folders, so a row that does was edited by hand. A link to a store file
    itself is allowed (hard- or soft-linked corpora), as the scan allows it."""
    parent = os.path.dirname(rel)
    if parent:
        root = os.path.realpath(folder)
        if os.path.realpath(os.path.join(folder, parent)) != os.path.join(root, os.path.normpath(parent)):
            raise OSError(errno.EXDEV, f"{rel} leaves {folder} through a linked folder")
    return os.stat(os.path.join(folder, rel))


def describe_store(folder: str | Path, rel: str) -> CatalogEntry:
    """A catalog entry from a store's header and dataset shapes, checked as read_store checks them (no embeddings
    are read)."""
    path = Path(folder) / rel
    try:
        st = path.stat()
        with open_hdf5(path) as f:
            attrs = decode_attrs(f.attrs)
            layout = layout_problems(f, attrs)  # the header read_store checks: a forged store never enters
            if layout:
                raise StoreError("invalid store: " + "; ".join(layout))
            header = StoreHeader.from_attrs(attrs)
            names = list(header.level_names or f["emb"])
            first = f[f"emb/{names[0]}"]
            windows = f.get("windows", {})
            entry = CatalogEntry(
                path=rel,
                slide_id=header.slide_id if header.slide_id is not None else Path(rel).stem,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                settings=header.settings.key(),
                cells=int(f["cells/rc"].shape[0]),
                regions=int(windows["regions"].shape[0]) if "regions" in windows else 0,
                contexts=int(windows["contexts"].shape[0]) if "contexts" in windows else 0,
                dim=int(first.shape[-1]),
                levels=len(names),
            )
    except (OSError, KeyError, IndexError, ValueError, TypeError) as exc:
        raise StoreError(f"not a readable mixmag store ({type(exc).__name__}: {exc})") from exc
    problem = _entry_problem(entry)
    if problem:
        raise StoreError(problem)
    return entry


def _entry_problem(e: CatalogEntry) -> str | None:
    """What is wrong with an entry read from an untrusted catalog row, part line or store header (None if nothing)."""
    for name in ("size", "mtime_ns", "cells", "regions", "contexts", "dim", "levels"):
        value = getattr(e, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{name} is {value!r}, expected a whole number >= 0"
    if not 1 <= e.levels <= _MAX_LEVELS or e.dim < 1:
        return f"{e.levels} levels of {e.dim}-d embeddings"
    if (
        not isinstance(e.path, str)
        or e.path.startswith("/")
        or "\\" in e.path
        or ".." in e.path.split("/")
        or not e.path.endswith(STORE_SUFFIX)
    ):
        return f"path {e.path!r} is not a store path inside the folder"
    if not isinstance(e.slide_id, str) or not e.slide_id:
        return f"slide id {e.slide_id!r}"
    return _settings_problem(e.settings)


_GOOD_SETTINGS: set[str] = set()  # settings strings already checked: a corpus has a handful, a catalog a million rows


def _settings_problem(text: str) -> str | None:
    if text in _GOOD_SETTINGS:
        return None
    try:
        settings = json.loads(text)
    except (TypeError, ValueError):
        return "provenance is not JSON"
    fields = set(PipelineSettings.model_fields)
    if not isinstance(settings, dict) or not fields - NEWER_FIELDS <= set(settings) <= fields:
        return "provenance does not hold the pipeline settings"
    try:
        PipelineSettings.model_validate(settings)
    except ValueError:
        return "provenance does not hold the pipeline settings"
    if len(_GOOD_SETTINGS) < 4096:
        _GOOD_SETTINGS.add(text)
    return None


def _entry(values: Sequence) -> CatalogEntry:
    if len(values) != len(_COLUMNS):
        raise ValueError(f"{len(values)} fields, expected {len(_COLUMNS)}")
    entry = CatalogEntry(*values)
    problem = _entry_problem(entry)
    if problem:
        raise ValueError(f"entry {entry.path!r}: {problem}")
    return entry


def read_catalog_file(path: Path) -> list[CatalogEntry]:
    """The entries of a catalog file.

    Raises ValueError (damaged or foreign: rebuild) or CatalogError (newer: refuse)."""
    try:
        check_regular(path, "store catalog")  # a FIFO would block SQLite's open forever
    except UnsafePathError as exc:
        raise ValueError(f"not a file ({exc})") from None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ValueError(f"cannot be opened as SQLite ({exc})") from exc
    try:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != CATALOG_FORMAT:
            raise ValueError(f"not a mixmag catalog (format {meta.get('format')!r})")
        version = int(meta.get("version", "0"))
        if version > CATALOG_VERSION:
            raise CatalogError(
                f"{path}: made by a newer mixmag (catalog version {version}, this one reads {CATALOG_VERSION}); "
                "upgrade mixmag, or delete the file and run `mixmag store index` to rebuild it"
            )
        bad = con.execute(f"SELECT path FROM stores WHERE {_BAD_ROW} LIMIT 1").fetchone()
        if bad is not None:
            raise ValueError(
                f"entry {bad[0]!r} is malformed (a path outside the folder, a count that is not a whole number)"
            )
        for (text,) in con.execute("SELECT DISTINCT settings FROM stores"):
            if _settings_problem(text):
                raise ValueError(f"an entry's provenance is malformed ({_settings_problem(text)})")
        rows = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM stores").fetchall()
        if int(meta.get("count", "-1")) != len(rows):
            raise ValueError(f"holds {len(rows)} rows but records {meta.get('count')}")
        return [CatalogEntry(*r) for r in rows]  # every row checked by the query above, in SQLite, not row by row here
    except sqlite3.Error as exc:
        raise ValueError(f"damaged or not a mixmag catalog ({exc})") from exc
    finally:
        con.close()


def write_catalog_file(path: Path, entries: Iterable[CatalogEntry]) -> None:
    """A whole new catalog, built under a temporary name and renamed into place (fileio.atomic_path)."""
    entries = list(entries)
    with atomic_path(path, suffix=".sqlite") as tmp:
        con = sqlite3.connect(tmp)
        try:
            con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            con.execute(
                "CREATE TABLE stores (path TEXT PRIMARY KEY, slide_id TEXT NOT NULL, size INTEGER NOT NULL, "
                "mtime_ns INTEGER NOT NULL, settings TEXT NOT NULL, cells INTEGER NOT NULL, regions INTEGER NOT NULL, "
                "contexts INTEGER NOT NULL, dim INTEGER NOT NULL, levels INTEGER NOT NULL)"
            )
            con.execute("CREATE INDEX stores_slide ON stores (slide_id)")
            con.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("format", CATALOG_FORMAT), ("version", str(CATALOG_VERSION)), ("count", str(len(entries)))],
            )
            con.executemany(
                f"INSERT INTO stores VALUES ({', '.join('?' * len(_COLUMNS))})",
                [tuple(asdict(e).values()) for e in entries],
            )
            con.commit()
        finally:
            con.close()


def parts_folder(folder: Path) -> Path | None:
    """The folder of part files, if there is one; a link or anything not a folder there is refused: parts are deleted
    after each fold, and a linked parts folder would have them deleted wherever it points."""
    parts_dir = folder / PARTS_NAME
    fix = (
        "mixmag never follows a link to its own files: remove it (the stores are not touched; the next run rebuilds "
        "the catalog from them)"
    )
    return parts_dir if own_folder_exists(parts_dir, "the catalog's parts folder", fix) else None


def _read_part(part: Path) -> tuple[str, bool] | None:
    """A part's text, and whether its writer is gone (a finished `.jsonl`, or a `.jsonl.open` whose writer's lock is
    free: the process died). None for what is not a plain part (a link, a FIFO, too large, unreadable)."""
    try:
        with open_regular(part, "catalog part", follow=False) as handle:
            done = part.name.endswith(".jsonl")
            if not done:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                    done = True  # no live writer holds it: folded and deleted like a finished part
                except BlockingIOError:
                    pass
            data = handle.read(READ_LIMITS["catalog part"] + 1)
    except (OSError, MixmagError):
        return None
    if len(data) > READ_LIMITS["catalog part"]:
        return None
    return data.decode("utf-8", "replace"), done


def read_parts(folder: Path) -> tuple[dict[str, CatalogEntry], list[Path]]:
    """Entries recorded by writers since the last refresh (later lines win), and the part files that may be deleted
    once folded (finished ones, and those of writers that died)."""
    entries: dict[str, CatalogEntry] = {}
    finished: list[Path] = []
    parts_dir = parts_folder(folder)
    if parts_dir is None:
        return entries, finished
    for part in sorted(parts_dir.iterdir()):
        if part.name.startswith(".") or not part.name.endswith((".jsonl", ".jsonl.open")):
            continue
        read = _read_part(part)
        if read is None:
            continue
        text, done = read
        for line in text.splitlines():
            try:
                values = json.loads(line)
                entry = _entry([values.get(c) for c in _COLUMNS])
            except (ValueError, AttributeError, TypeError):
                continue  # a torn last line of a writer that died, or a damaged line: the folder scan finds the store
            entries[entry.path] = entry
        if done:
            finished.append(part)
    return entries, finished


class CatalogWriter:
    """Records stores as they land, for one writer (one rank): appends to a part file no other process touches,
    created new (never through a link) and locked while the writer lives, so a refresh can tell a dead writer's part."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._part: Path | None = None
        self._fd: int | None = None

    def record(self, store_file: str | Path) -> None:
        """Describe a store just written under the folder and append its entry (one line, flushed and fsynced)."""
        rel = Path(store_file).resolve().relative_to(self.folder.resolve()).as_posix()
        entry = describe_store(self.folder, rel)
        if self._fd is None:
            self._open()
        line = (json.dumps(asdict(entry)) + "\n").encode()
        try:
            os.write(self._fd, line)
            os.fsync(self._fd)
        except OSError as exc:
            raise output_error(self._part, exc) from exc

    def _open(self) -> None:
        parts = own_folder(self.folder / PARTS_NAME, "catalog parts folder")
        part = parts / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl.open"
        hidden = part.with_name(f".{part.name}")  # locked before readers can see it, so it never looks dead
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND | os.O_CLOEXEC
        try:
            self._fd = os.open(hidden, flags, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            os.rename(hidden, part)
        except OSError as exc:
            raise output_error(part, exc) from exc
        self._part = part

    def close(self) -> None:
        """Mark the part finished, so that a refresh may fold it into the catalog and delete it."""
        if self._part is not None and self._fd is not None:
            try:
                if stat.S_ISREG(os.lstat(self._part).st_mode):
                    os.replace(self._part, self._part.with_name(self._part.name.removesuffix(".open")))
            except OSError:
                pass  # already folded away (its writer looked dead to a refresh): its entries are in the catalog
            os.close(self._fd)
        self._part = None
        self._fd = None

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refresh_catalog(
    folder: str | Path, *, write: bool = True, rebuild: bool = False, on_store: Callable[[int, int], None] | None = None
) -> tuple[Catalog, CatalogReport]:
    """The folder's catalog, checked against the folder: new and changed stores are (re-)read, gone ones dropped,
    and the result written back (when anything changed and `write`). `rebuild` ignores the old catalog."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"{folder}: stores folder not found; run `mixmag embed --out {folder}` first")
    report = CatalogReport()
    known: dict[str, CatalogEntry] = {}
    path = catalog_file(folder)
    if path.exists() and not rebuild:
        try:
            known = {e.path: e for e in read_catalog_file(path)}
        except ValueError as exc:
            report.damaged = str(exc)
    parts, finished = read_parts(folder)
    known |= parts
    scan = scan_stores(folder)
    on_disk = scan.stores
    report.skipped = scan.skipped
    entries = []
    todo = []
    for rel, (size, mtime) in on_disk.items():
        e = known.get(rel)
        if e is not None and e.size == size and e.mtime_ns == mtime:
            entries.append(e)
        else:
            todo.append(rel)
            (report.stale if e is not None else report.new).append(rel)
    report.missing = sorted(set(known) - set(on_disk))
    for i, rel in enumerate(sorted(todo)):
        try:
            entries.append(describe_store(folder, rel))
        except StoreError as exc:
            report.unreadable[rel] = str(exc)
        if on_store:
            on_store(i + 1, len(todo))
    if rebuild or report.damaged is not None or not path.exists():
        report.new = []  # a first build or a rebuild reads every store: nothing to name
    report.new.sort()
    report.stale.sort()
    if write and (report.changed or finished or rebuild or not path.exists()):
        try:
            with _fold_lock(folder):
                entries = _fold(folder, entries)
        except (OSError, MixmagError) as exc:  # a read-only folder, a full disk: the catalog in memory is still right
            if isinstance(exc, (CatalogError, UnsafePathError)):
                raise
            report.unwritten = str(exc)
    return Catalog(folder, entries), report


@contextmanager
def _fold_lock(folder: Path) -> Iterator[None]:
    """One fold at a time per folder (a blocking flock, released by the kernel if the holder dies)."""
    with open_lock_file(folder / LOCK_NAME) as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fold(folder: Path, entries: list[CatalogEntry]) -> list[CatalogEntry]:
    """Under the fold lock: add what landed since this refresh read the catalog (another fold's catalog, new parts;
    each row kept only if its store's size and mtime still match), write the catalog, delete the parts folded."""
    path = catalog_file(folder)
    landed: dict[str, CatalogEntry] = {}
    try:
        landed = {e.path: e for e in read_catalog_file(path)} if path.exists() else {}
    except ValueError:
        pass  # damaged: this refresh's entries replace it
    parts, finished = read_parts(folder)
    landed |= parts
    ours = {e.path: e for e in entries}
    for rel, e in landed.items():
        if rel in ours:
            continue
        try:
            st = stat_inside(folder, rel)
        except OSError:
            continue
        if st.st_size == e.size and st.st_mtime_ns == e.mtime_ns:
            ours[rel] = e
    merged = sorted(ours.values(), key=lambda e: e.path)
    write_catalog_file(path, merged)
    for part in finished:
        remove_own_file(part)
    return merged


def load_catalog(folder: str | Path, *, write: bool = True) -> Catalog:
    """The folder's catalog for a run: refreshed, each repair named in one CatalogWarning (never an error)."""
    return load_catalog_with_report(folder, write=write)[0]


def load_catalog_with_report(folder: str | Path, *, write: bool = True) -> tuple[Catalog, CatalogReport]:
    """load_catalog, and what the refresh found (callers that owe every store a result name the unreadable ones)."""
    catalog, report = refresh_catalog(folder, write=write)
    for sentence in report.sentences(Path(folder)):
        warnings.warn(CatalogWarning(sentence), stacklevel=3)
    return catalog, report


def _query(folder: Path, column: str, values: Sequence[str]) -> dict[str, CatalogEntry]:
    """Catalog entries (file and parts) whose `column` (slide_id or path) is one of `values`, each checked by a stat
    against its recorded size and mtime (stale or gone ones left out): an indexed query, no full read."""
    wanted = set(values)
    rows: dict[str, CatalogEntry] = {}
    path = catalog_file(folder)
    if path.is_file():
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                ids = list(wanted)
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    query = (
                        f"SELECT {', '.join(_COLUMNS)} FROM stores WHERE {column} IN ({', '.join('?' * len(chunk))})"
                    )
                    rows |= {e.path: e for e in map(_entry, con.execute(query, chunk))}
            finally:
                con.close()
        except (sqlite3.Error, ValueError):
            rows = {}  # damaged: the caller's fallback refreshes (and so rebuilds) the catalog
    parts, _ = read_parts(folder)
    rows |= {p: e for p, e in parts.items() if getattr(e, column) in wanted}
    fresh = {}
    for e in rows.values():
        try:
            st = stat_inside(folder, e.path)
        except OSError:
            continue
        if st.st_size == e.size and st.st_mtime_ns == e.mtime_ns:
            fresh[e.path] = e
    return fresh


def lookup_slides(folder: str | Path, slide_ids: Sequence[str]) -> dict[str, Path]:
    """Stores of the given slides from the catalog: a cohort of a thousand slides out of a million stores reads no
    header and scans no folder. Only when some slide is not found so is the catalog refreshed against the folder;
    slides still not found are left out (the caller names them)."""
    folder = Path(folder)
    wanted = set(slide_ids)
    found = {e.slide_id: folder / e.path for e in _query(folder, "slide_id", list(wanted)).values()}
    if len(found) < len(wanted) and folder.is_dir():
        catalog = load_catalog(folder)
        found |= {
            e.slide_id: catalog.path(e) for e in catalog.entries if e.slide_id in wanted and e.slide_id not in found
        }
    return found


def place_stores(folder: str | Path, slide_ids: Sequence[str]) -> dict[str, Path]:
    """Each slide's store: <folder>/<slide>.h5 when there (a flat folder: no catalog needed), else where the catalog
    says (a sharded folder), else the flat path, for the caller to report as missing."""
    folder = Path(folder)
    flat = {s: folder / f"{s}{STORE_SUFFIX}" for s in slide_ids}
    elsewhere = [s for s, p in flat.items() if not p.is_file()]
    return flat | (lookup_slides(folder, elsewhere) if elsewhere and folder.is_dir() else {})


def shared_settings_of(paths: Sequence[Path], folder: str | Path | None) -> PipelineSettings:
    """store.shared_settings for stores of one folder, from its catalog (headers only for stores it lacks or holds
    stale), without scanning the folder."""
    if folder is None or not Path(folder).is_dir():
        return shared_settings(paths)
    folder = Path(folder)
    root = os.path.abspath(folder)
    rel = {}
    for p in paths:
        r = os.path.relpath(os.path.abspath(p), root)  # no resolve(): a thousand paths, no per-component lstat
        rel[Path(p)] = r if not r.startswith("..") else None
    rows = _query(folder, "path", [r for r in rel.values() if r])
    groups: dict[str, list[Path]] = {}
    for p, r in rel.items():
        e = rows.get(r) if r else None
        key = e.settings if e is not None else StoreHeader.from_attrs(read_attrs(p)).settings.key()
        groups.setdefault(key, []).append(p)
    if not groups:
        raise StoreError("no stores given")
    return shared_settings_of_groups(
        [(PipelineSettings.model_validate_json(s), len(g), g[0]) for s, g in groups.items()]
    )
