"""Which slides to process: paths from the command line or a cohort table, each with an id and mpp."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CohortError
from ..ids import check_id, is_safe_id
from ..tables import read_table
from .backends import FALLBACK_FIRST_SUFFIXES, TIFF_SUFFIXES
from .backends.dicom import dicom_entries, is_dicom_folder
from .backends.omezarr import is_zarr_folder

_SLIDE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".zarr")
# files a folder of slides is searched for (a folder given on the command line is expanded to them)
SLIDE_FILE_SUFFIXES = frozenset(
    TIFF_SUFFIXES
    | FALLBACK_FIRST_SUFFIXES
    | {".ndpi", ".mrxs", ".scn", ".bif", ".czi", ".svslide", ".vms", ".vmu", ".ndpis", ".dcm"}
)


@dataclass(frozen=True)
class SlideSource:
    path: Path
    slide_id: str
    mpp: float | None = None


def slide_id_from_path(path: Path) -> str:
    """A file's name without its suffix; a folder's name (less .zarr); a DICOM slide's folder (see slide_entries)."""
    path = Path(path)
    dicom = dicom_entries(path)
    if dicom is not None and len(dicom) == 1:
        return dicom[0][1]
    name = path.name
    for suffix in _SLIDE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name if path.is_dir() or not path.suffix else path.stem


def slide_entries(path: Path) -> list[tuple[Path, str]]:
    """(path, id) of every slide a path holds: one, one per series of a DICOM folder with several, or every slide
    under a plain folder of slides (see slides_in_folder)."""
    path = Path(path)
    if path.is_dir() and not is_zarr_folder(path) and not is_dicom_folder(path):
        found = slides_in_folder(path)
        if not found:
            raise CohortError(
                f"{path}: a folder with no slide in it (searched its sub-folders for "
                f"{', '.join(sorted(SLIDE_FILE_SUFFIXES))} files, OME-Zarr and DICOM folders); give the slide files"
            )
        return found
    return dicom_entries(path) or [(path, slide_id_from_path(path))]


def slides_in_folder(folder: Path) -> list[tuple[Path, str]]:
    """(path, id) of every slide under a folder that is not itself a slide, in sorted order: files with a whole-slide
    suffix, and OME-Zarr and DICOM folders (not searched further); hidden entries, links to folders and MRXS data
    folders (the folder beside X.mrxs named X) are skipped."""
    found: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        mrxs_data = {Path(f).stem for f in files if f.lower().endswith(".mrxs")}
        keep = []
        for name in sorted(dirs):
            sub = here / name
            if name.startswith(".") or name in mrxs_data or sub.is_symlink():
                continue
            if is_zarr_folder(sub) or is_dicom_folder(sub):
                found += dicom_entries(sub) or [(sub, slide_id_from_path(sub))]
            else:
                keep.append(name)
        dirs[:] = keep
        for name in sorted(files):
            path = here / name
            if not name.startswith(".") and path.suffix.lower() in SLIDE_FILE_SUFFIXES:
                found.append((path, slide_id_from_path(path)))
    return sorted(found)


def sources_from_paths(paths: list[Path], mpp: float | None = None) -> list[SlideSource]:
    entries = dict.fromkeys(e for path in paths for e in slide_entries(Path(path)))  # each DICOM series once
    sources = [SlideSource(p, sid, mpp) for p, sid in entries]
    _check_ids(sources, where="the command line")
    return sources


def slide_ids_from_table(table: Path) -> list[str]:
    """The slide ids a CSV names: its 'slide' column (a training cohort table), else the ids of its
    'path' column's files (a tiling table)."""
    table = Path(table)
    read = read_table(table)
    columns, rows = read.columns, read.rows
    if "slide" not in columns:
        if "path" in columns:
            return [s.slide_id for s in sources_from_table(table)]
        raise CohortError(
            f"{table}: needs a 'slide' column (slide ids) or a 'path' column (slide files); "
            f"found columns: {', '.join(columns) or 'none'}."
        )
    ids = [row.get("slide", "") for row in rows]
    empty = [str(line) for line, sid in zip(read.lines, ids) if not sid]
    if empty:
        raise CohortError(f"{table}: empty 'slide' in row(s) {', '.join(empty[:10])}.")
    if not ids:
        raise CohortError(f"{table}: the table has no rows.")
    for line, sid in zip(read.lines, ids):
        check_id(sid, where=f"{table} row {line}", fix="(it names the slide's tiling folder and store)")
    return list(dict.fromkeys(ids))  # a slide listed twice is embedded once


def sources_from_table(table: Path, mpp: float | None = None) -> list[SlideSource]:
    """Read a CSV with a 'path' column (relative paths are relative to the table) and optional
    'slide' (id) and 'mpp' columns; other columns (specimen, label, split...) are ignored here."""
    table = Path(table)
    read = read_table(table)
    columns, rows = read.columns, read.rows
    if "path" not in columns:
        raise CohortError(
            f"{table}: needs a 'path' column with the slide files (found columns: {', '.join(columns) or 'none'})."
        )
    if not rows:
        raise CohortError(f"{table}: the table has no rows.")
    sources, problems = [], []
    for line, row in zip(read.lines, rows):
        if not row.get("path"):
            problems.append(f"row {line}: empty 'path'")
            continue
        path = Path(row["path"])
        if not path.is_absolute():
            path = table.parent / path
        row_mpp = mpp
        if row.get("mpp"):
            try:
                row_mpp = float(row["mpp"])
            except ValueError:
                problems.append(f"row {line}: mpp {row['mpp']!r} is not a number")
                continue
            if not math.isfinite(row_mpp) or row_mpp <= 0:
                problems.append(f"row {line}: mpp {row['mpp']!r} must be a positive number")
                continue
        if row.get("slide"):
            sources.append(SlideSource(path, row["slide"], row_mpp))
        else:
            sources += [SlideSource(p, sid, row_mpp) for p, sid in slide_entries(path)]
    if problems:
        raise CohortError(f"{table}: " + "; ".join(problems) + ".")
    _check_ids(sources, where=str(table))
    return sources


def _check_ids(sources: list[SlideSource], where: str) -> None:
    seen: dict[str, Path] = {}
    for s in sources:
        if not is_safe_id(s.slide_id):
            raise CohortError(
                f"{where}: slide id {s.slide_id!r} ({s.path}) is not a safe file name; "
                "use letters, digits, '.', '_', '+' and '-' (set a 'slide' column in a cohort table)."
            )
        if s.slide_id in seen:
            raise CohortError(
                f"{where}: slide id {s.slide_id!r} is used twice ({seen[s.slide_id]} and {s.path}); "
                "give each slide a unique id with a 'slide' column in a cohort table."
            )
        seen[s.slide_id] = s.path
