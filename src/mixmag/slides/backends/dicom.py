"""DICOM whole slide images as scanners and PACS export them: a folder of .dcm files, one per level (and label,
overview), possibly several series (slides) in one folder.

A folder, or any one of its files, is one slide per series. Its id is the folder's name, or, when the folder
holds several series, the folder's name plus the series' own description or number (DICOM tags SeriesDescription
0008,103E and SeriesNumber 0020,0011), so each series is a slide with a readable, stable id. Pixels and the pixel
spacing (PixelSpacing 0028,0030 of the level-0 instance) are read by OpenSlide (openslide.mpp-x); this module only
groups files into series with pydicom's header reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import SlideUnreadableError
from ...fileio import UnsafePathError, open_regular

if TYPE_CHECKING:  # pydicom is imported where a DICOM header is read: an SVS never pays for it
    import pydicom

WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage (SOP Class UID)
_HEADER_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "SeriesNumber",
    "ImageType",
    "TotalPixelMatrixColumns",
    "TotalPixelMatrixRows",
    "ContainerIdentifier",
]


@dataclass(frozen=True)
class DicomSeries:
    """The whole-slide (VOLUME) instances of one series in a folder."""

    uid: str
    description: str
    number: str
    files: tuple[Path, ...]
    base: Path  # the instance with the largest pixel matrix: level 0, which OpenSlide opens the series from


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble, whatever their name."""
    try:
        with open_regular(path, "DICOM file") as fh:  # a FIFO is refused, never waited on
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except (OSError, UnsafePathError):
        return False


def is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(is_dicom_file(p) for p in _files(path))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def find_series(folder: Path) -> list[DicomSeries]:
    """Every whole-slide series in a folder (label, overview and thumbnail-only instances are not slides)."""
    groups: dict[str, list[tuple[int, Path, pydicom.Dataset]]] = {}
    for path in _files(folder):
        header = _volume_header(path) if is_dicom_file(path) else None
        if header is not None:
            size, ds = header
            groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((size, path, ds))
    series = []
    for uid, members in sorted(groups.items()):
        members.sort(key=lambda m: (-m[0], str(m[1])))
        ds = members[0][2]
        series.append(
            DicomSeries(
                uid=uid,
                description=str(ds.get("SeriesDescription", "") or ds.get("ContainerIdentifier", "") or ""),
                number=str(ds.get("SeriesNumber", "") or ""),
                files=tuple(sorted(m[1] for m in members)),
                base=members[0][1],
            )
        )
    return series


def _volume_header(path: Path) -> tuple[int, pydicom.Dataset] | None:
    """(pixel count, header) of a whole-slide VOLUME instance; None for labels, overviews, other DICOM files and
    damaged headers (files are untrusted: the reader reports a slide it cannot open, grouping never fails)."""
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        if str(ds.get("SOPClassUID", "")) != WSI_STORAGE or (image_type and "VOLUME" not in image_type):
            return None
        return int(ds.get("TotalPixelMatrixColumns", 0) or 0) * int(ds.get("TotalPixelMatrixRows", 0) or 0), ds
    except Exception:  # noqa: BLE001 - pydicom raises many kinds of errors on damaged headers
        return None


def resolve_dicom_path(path: Path) -> Path:
    """The file OpenSlide opens for a slide path: a DICOM folder's one series' level-0 file; other paths as they are."""
    if not path.is_dir():
        return path
    series = find_series(path)
    if not series:
        raise SlideUnreadableError(
            path,
            "is a folder with no DICOM whole slide image (VL Whole Slide Microscopy) in it.",
            "give a slide file, or the folder of one DICOM slide.",
        )
    if len(series) > 1:
        names = ", ".join(f"{series_slide_id(path, s, series)} ({s.base.name})" for s in series)
        raise SlideUnreadableError(
            path,
            f"holds {len(series)} DICOM series (slides): {names}.",
            "give the folder to `mixmag tile` (one slide per series), or one file of the series you want.",
        )
    return series[0].base


def series_slide_id(folder: Path, one: DicomSeries, all_series: list[DicomSeries]) -> str:
    """The folder's name for its only series; folder name + description (or number, or UID tail) when several."""
    name = _safe(folder.name) or "dicom"
    if len(all_series) == 1:
        return name
    for field in ("description", "number"):
        label = _safe(getattr(one, field))
        if label and [_safe(getattr(s, field)) for s in all_series].count(label) == 1:
            return f"{name}-{label}"
    return f"{name}-{one.uid.rsplit('.', 1)[-1][-12:]}"


def dicom_entries(path: Path) -> list[tuple[Path, str]] | None:
    """(path to open, slide id) for each slide a DICOM folder or file holds; None when `path` is not DICOM."""
    if path.is_dir():
        if not is_dicom_folder(path):
            return None
        series = find_series(path)
        if len(series) == 1:
            return [(path, series_slide_id(path, series[0], series))]
        return [(s.base, series_slide_id(path, s, series)) for s in series]
    if not is_dicom_file(path):
        return None
    series = find_series(path.parent)
    for s in series:
        if path in s.files:  # any file of a series stands for it (so `folder/*.dcm` is one slide per series)
            return [(s.base, series_slide_id(path.parent, s, series))]
    return [(path, _safe(path.stem) or "dicom")]  # not a whole-slide instance: let the reader say what is wrong


def _safe(text: str) -> str:
    return re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._+-]+", "_", text.strip())).strip("._")[:80]
