"""The slide backends and the per-file choice among them.

Each backend lives in its own module and wraps one library; `open_backend` imports a module only when its library
is installed, so the optional extras (libCZI for CZI, slideio for the fallback) stay optional. `candidates` says,
for one path, which backends can read it, fastest first, and why: `slides.reader.Slide` tries them in that order
and names the one that opened the file in every output's provenance; `mixmag doctor` prints the reasons.

Speed order (measured on this project's machine, one core, the same cells): TiffSlide's direct tile decode beats
OpenSlide 2-3x on JPEG-tiled TIFF/SVS; OpenSlide is faster on JPEG 2000 SVS and is the only core reader of MRXS,
NDPI, SCN, BIF and DICOM; the format-specific readers (zarr, libCZI) come before the generic fallback (slideio).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import tifffile

from ..remote import is_dicomweb, is_url, url_suffix
from .base import BackendHandle
from .dicom import is_dicom_file, is_dicom_folder
from .omezarr import is_zarr_folder

BACKENDS = ("tiffslide", "openslide", "omezarr", "czi", "slideio", "dicomweb")
# backend -> (module, class, library it needs, pip install command when that library is optional)
_SPECS = {
    "tiffslide": ("tiffslide_reader", "TiffSlideHandle", "tiffslide", None),
    "openslide": ("openslide_reader", "OpenSlideHandle", "openslide", None),
    "omezarr": ("omezarr", "OmeZarrHandle", "zarr", None),
    "czi": ("czi", "CziHandle", "pylibCZIrw", "pip install 'mixmag[czi]'"),
    "slideio": ("slideio_reader", "SlideioHandle", "slideio", "pip install 'mixmag[slides]'"),
    "dicomweb": ("dicomweb", "DicomWebHandle", "wsidicom", "pip install 'mixmag[remote]'"),
}
TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".btf", ".tf8"}
FALLBACK_FIRST_SUFFIXES = {".vsi", ".zvi", ".afi", ".qptiff"}  # neither OpenSlide nor TiffSlide reads these well
_JPEG2000_COMPRESSIONS = {33003, 33004, 33005, 34712}


@dataclass(frozen=True)
class Candidate:
    backend: str
    reason: str
    installed: bool

    @property
    def install(self) -> str | None:
        return _SPECS[self.backend][3]


def installed(backend: str) -> bool:
    try:
        return importlib.util.find_spec(_SPECS[backend][2]) is not None
    except (ImportError, ValueError):  # a module blocked or half-installed counts as absent
        return False


def install_command(backend: str) -> str | None:
    return _SPECS[backend][3]


def open_backend(backend: str, path: Path | str) -> BackendHandle:
    if backend not in _SPECS:
        raise ValueError(f"unknown slide backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    module, cls, _, _ = _SPECS[backend]
    handle_class = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return handle_class(path)


def candidates(path: Path | str) -> list[Candidate]:
    """Backends that may read `path` (or a slide URL), fastest capable first, each with the reason it is in that
    place."""
    ordered = _ordered_url(path) if is_url(path) else _ordered(Path(path))
    return [Candidate(name, reason, installed(name)) for name, reason in ordered]


def _ordered_url(url: str) -> list[tuple[str, str]]:
    """A URL is read where it is: a DICOMweb series by wsidicom, a TIFF by TiffSlide's range reads. Other formats
    need a local file (OpenSlide, libCZI): none here; the reader suggests the download cache."""
    if is_dicomweb(url):
        return [("dicomweb", "a DICOMweb series: wsidicom fetches the frames it reads")]
    if url_suffix(url) in TIFF_SUFFIXES:
        return [("tiffslide", "a TIFF by URL: TiffSlide reads its tiles by range requests")]
    return []


def _ordered(path: Path) -> list[tuple[str, str]]:
    suffix = path.suffix.lower()
    fallback = ("slideio", "fallback multi-format reader")
    if path.is_dir():
        if is_zarr_folder(path):
            return [("omezarr", "a Zarr folder: OME-NGFF multiscale pyramid")]
        if is_dicom_folder(path):
            return [("openslide", "a folder of DICOM files: OpenSlide reads DICOM whole slide images")]
        return []
    if is_dicom_file(path):
        return [("openslide", "a DICOM file: OpenSlide reads its series from the folder")]
    if suffix == ".czi":  # not slideio: it hands back a Bgr24 CZI's channels in BGR order (measured)
        return [("czi", "a CZI file: Zeiss's own libCZI")]
    if suffix in TIFF_SUFFIXES:
        if _tiff_compression(path) in _JPEG2000_COMPRESSIONS:
            return [
                ("openslide", "a JPEG 2000 TIFF: OpenSlide decodes it faster"),
                ("tiffslide", "reads any TIFF pyramid"),
                fallback,
            ]
        return [
            ("tiffslide", "a tiled TIFF: TiffSlide decodes its tiles directly, fastest"),
            ("openslide", "reads the TIFF flavours TiffSlide may not"),
            fallback,
        ]
    if suffix in FALLBACK_FIRST_SUFFIXES:
        return [
            ("slideio", f"a {suffix} file: OpenSlide and TiffSlide do not read it"),
            ("openslide", "in case"),
            ("tiffslide", "in case"),
        ]
    return [
        ("openslide", "vendor formats (MRXS, NDPI, SCN, BIF, ...)"),
        ("tiffslide", "TIFF-based files without a TIFF suffix"),
        fallback,
    ]


def _tiff_compression(path: Path) -> int | None:
    try:
        with tifffile.TiffFile(path) as tif:
            return int(tif.pages[0].compression)
    except Exception:  # noqa: BLE001 - any failure here only means "not a readable TIFF"
        return None
