"""Which slides to process: paths or URLs from the command line or a cohort table, each with an id and mpp.

A slide is a local path, an object-storage or HTTP URL (s3://, gs://, az://, https://), or a DICOMweb series
(dicomweb+http://.../studies/<uid>/series/<uid>, or a table row with 'dicomweb', 'study_uid' and 'series_uid'
columns); see slides.remote. A URL stays text (`SlideSource.path` is then a str)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CohortError, MixmagError
from ..ids import check_id, is_safe_id
from ..tables import read_table
from .backends import FALLBACK_FIRST_SUFFIXES, TIFF_SUFFIXES
from .backends.dicom import dicom_entries, is_dicom_folder
from .backends.dicomweb import parse_url, series_url
from .backends.omezarr import is_zarr_folder
from .remote import SlideLocation, is_dicomweb, is_url, slide_location, url_name

_SLIDE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".zarr")
# files a folder of slides is searched for (a folder given on the command line is expanded to them)
SLIDE_FILE_SUFFIXES = frozenset(
    TIFF_SUFFIXES
    | FALLBACK_FIRST_SUFFIXES
    | {".ndpi", ".mrxs", ".scn", ".bif", ".czi", ".svslide", ".vms", ".vmu", ".ndpis", ".dcm"}
)


DICOMWEB_COLUMNS = ("dicomweb", "study_uid", "series_uid")  # a table row naming a DICOMweb series by its parts


@dataclass(frozen=True)
class SlideSource:
    path: SlideLocation  # a local Path, or a URL (str)
    slide_id: str
    mpp: float | None = None


def slide_id_from_url(url: str) -> str:
    """A URL's file name less its suffix; a DICOMweb series' UID (set a 'slide' column for a readable id)."""
    if is_dicomweb(url):
        return parse_url(url).series
    name = url_name(url)
    for suffix in _SLIDE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


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


def slide_entries(path: SlideLocation) -> list[tuple[SlideLocation, str]]:
    """(path, id) of every slide a path holds: one, one per series of a DICOM folder with several, or every slide
    under a plain folder of slides (see slides_in_folder); a URL is one slide."""
    path = slide_location(path)
    if is_url(path):
        return [(path, slide_id_from_url(path))]
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


def sources_from_paths(paths: list[Path | str], mpp: float | None = None) -> list[SlideSource]:
    entries = dict.fromkeys(e for path in paths for e in slide_entries(slide_location(path)))  # each DICOM series once
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
        if "path" in columns or DICOMWEB_COLUMNS[0] in columns:
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
    return [source for source, _row in sources_with_rows(table, mpp)]


def sources_with_rows(table: Path, mpp: float | None = None) -> list[tuple[SlideSource, dict[str, str]]]:
    """Each slide of the table with the row that named it: a row whose path is a folder of slides or a DICOM folder
    of several series gives several slides, so rows and slides cannot be paired by position."""
    table = Path(table)
    read = read_table(table)
    columns, rows = read.columns, read.rows
    web = [c for c in DICOMWEB_COLUMNS if c in columns]
    if web and len(web) != len(DICOMWEB_COLUMNS):
        raise CohortError(f"{table}: a DICOMweb series needs all of the columns {', '.join(DICOMWEB_COLUMNS)}.")
    if "path" not in columns and not web:
        raise CohortError(
            f"{table}: needs a 'path' column with the slide files or URLs, or the DICOMweb columns "
            f"{', '.join(DICOMWEB_COLUMNS)} (found columns: {', '.join(columns) or 'none'})."
        )
    if not rows:
        raise CohortError(f"{table}: the table has no rows.")
    sources, problems = [], []
    for line, row in zip(read.lines, rows):
        try:
            path = _row_location(table, row)
        except MixmagError as exc:
            problems.append(f"row {line}: {exc}")
            continue
        if path is None:
            problems.append(f"row {line}: empty 'path'")
            continue
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
            sources.append((SlideSource(path, row["slide"], row_mpp), row))
        else:
            sources += [(SlideSource(p, sid, row_mpp), row) for p, sid in slide_entries(path)]
    if problems:
        raise CohortError(f"{table}: " + "; ".join(problems) + ".")
    _check_ids([source for source, _row in sources], where=str(table))
    return sources


def _row_location(table: Path, row: dict[str, str]) -> SlideLocation | None:
    """A row's slide: its 'path' (a URL, or a path relative to the table), else its DICOMweb server and UIDs."""
    if row.get("path"):
        path = slide_location(row["path"])
        if isinstance(path, Path) and not path.is_absolute():
            path = table.parent / path
        return path
    if any(row.get(c) for c in DICOMWEB_COLUMNS):
        return series_url(row.get("dicomweb", ""), row.get("study_uid", ""), row.get("series_uid", ""), str(table))
    return None


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
