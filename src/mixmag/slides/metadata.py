"""Resolve a slide's microns per pixel: explicit override, then metadata, then a clear error.

Never assumes a default: a "20x" scan may be anything from 0.23 to 0.55 um/px, and a TIFF written
without resolution tags often carries 72 dpi (352.8 um/px), which is rejected as implausible.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import MppError
from .backends.base import NativeMpp

PLAUSIBLE_MPP = (0.1, 20.0)
_ANISOTROPY_TOLERANCE = 0.02
_MICRONS_PER_UNIT = {"inch": 25400.0, "centimeter": 10000.0, "millimeter": 1000.0}
_OME_UNIT_MICRONS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
_MPP_HELP = "pass the slide's true resolution with --mpp (or an 'mpp' column in the cohort table)"


@dataclass(frozen=True)
class ResolvedMpp:
    value: float
    source: str


def resolve_mpp(
    slide: str | Path, properties: Mapping[str, str], override: float | None = None, native: NativeMpp | None = None
) -> ResolvedMpp:
    """Return the slide's mpp from the override or its metadata; raise MppError if absent or absurd.

    `native` is what a backend read from its format's own metadata (DICOM, OME-NGFF, CZI, slideio), used when
    OpenSlide/TiffSlide properties have none."""
    if override is not None:
        return ResolvedMpp(_check_plausible(slide, float(override), "the mpp override"), "override")
    for source, value in _metadata_candidates(slide, properties, native):
        return ResolvedMpp(_check_plausible(slide, value, source), source)
    raise MppError(
        slide,
        "no microns-per-pixel in the slide metadata (no vendor mpp, DICOM PixelSpacing, OME PhysicalSize or "
        "NGFF scale with a unit, CZI Scaling, or TIFF resolution tags).",
        _MPP_HELP + ".",
    )


def _check_plausible(slide: str | Path, value: float, source: str) -> float:
    lo, hi = PLAUSIBLE_MPP
    if not (math.isfinite(value) and lo <= value <= hi):
        hint = " (72 dpi, a TIFF writer's default, not a scan resolution)" if abs(value - 352.78) < 0.1 else ""
        raise MppError(
            slide,
            f"implausible resolution {value:.4g} um/px from {source}{hint}; expected {lo:g}-{hi:g} um/px.",
            _MPP_HELP + ", e.g. --mpp 0.25 for a 40x scan or --mpp 0.5 for 20x.",
        )
    return value


def _metadata_candidates(slide: str | Path, properties: Mapping[str, str], native: NativeMpp | None = None):
    """Yield (source, mpp) in priority order: vendor property, the format's own metadata, OME PhysicalSize, TIFF
    tags."""
    for prefix in ("openslide", "tiffslide"):
        x = _as_float(properties.get(f"{prefix}.mpp-x"))
        y = _as_float(properties.get(f"{prefix}.mpp-y"))
        if x is not None and x > 0:
            # OpenSlide's DICOM mpp is the level-0 instance's PixelSpacing (0028,0030)
            source = (
                "DICOM PixelSpacing (openslide.mpp-x)"
                if properties.get("openslide.vendor") == "dicom"
                else f"{prefix}.mpp-x"
            )
            yield source, _isotropic(slide, x, y, f"{prefix}.mpp")
    if native is not None and native.x is not None:
        yield native.source, _isotropic(slide, native.x, native.y, native.source)
    path = Path(slide)
    if path.is_file() and path.suffix.lower() in {".tif", ".tiff", ".svs", ".btf", ".tf8"}:
        yield from _tiff_candidates(slide, path)


def _tiff_candidates(slide: str | Path, path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            ome = tif.ome_metadata
            page = tif.pages[0]
            tags = {
                name: page.tags[name].value
                for name in ("XResolution", "YResolution", "ResolutionUnit")
                if name in page.tags
            }
    except (tifffile.TiffFileError, OSError, ValueError):
        return
    if ome:
        found = _ome_physical_size(ome)
        if found is not None:
            x, y = found
            yield "OME PhysicalSizeX", _isotropic(slide, x, y, "OME PhysicalSize")
    unit = tags.get("ResolutionUnit")
    unit_name = getattr(unit, "name", str(unit)).lower()
    if unit_name in _MICRONS_PER_UNIT and "XResolution" in tags:
        x = _pixels_per_unit_to_mpp(tags["XResolution"], _MICRONS_PER_UNIT[unit_name])
        y = _pixels_per_unit_to_mpp(tags.get("YResolution"), _MICRONS_PER_UNIT[unit_name])
        if x is not None:
            yield f"TIFF resolution tags ({unit_name})", _isotropic(slide, x, y, "TIFF resolution")


def _pixels_per_unit_to_mpp(value, microns_per_unit: float) -> float | None:
    if value is None:
        return None
    num, den = value if isinstance(value, tuple) else (float(value), 1.0)
    if not num or not den:
        return None
    return microns_per_unit / (num / den)


def _ome_physical_size(ome_xml: str) -> tuple[float, float | None] | None:
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", ome_xml)
    if pixels is None:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
    x = _as_float(attrs.get("PhysicalSizeX"))
    if x is None:
        return None
    y = _as_float(attrs.get("PhysicalSizeY"))
    scale_x = _OME_UNIT_MICRONS.get(attrs.get("PhysicalSizeXUnit", "µm"), None)
    scale_y = _OME_UNIT_MICRONS.get(attrs.get("PhysicalSizeYUnit", "µm"), None)
    if scale_x is None:
        return None
    return x * scale_x, (y * scale_y if y is not None and scale_y is not None else None)


def _isotropic(slide: str | Path, x: float, y: float | None, source: str) -> float:
    if y is not None and y > 0 and abs(x - y) / max(x, y) > _ANISOTROPY_TOLERANCE:
        raise MppError(
            slide,
            f"non-square pixels in {source}: x {x:g} vs y {y:g} um/px; mixmag's grid needs square pixels.",
            "resample the slide to square pixels, or pass --mpp if the metadata is wrong.",
        )
    return x


def _as_float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


OPENSLIDE_BOUNDS = ("openslide.bounds-x", "openslide.bounds-y", "openslide.bounds-width", "openslide.bounds-height")


def openslide_bounds(properties: Mapping[str, str]) -> tuple[int, int, int, int] | None:
    """OpenSlide's bounds (x, y, width, height) in level-0 px, by QuPath's rule: all four properties present and
    integers, else none (qupath/qupath, OpenslideImageServer.java at b273689 l.160-187: QuPath's OpenSlide server then
    shows the slide cropped to them, its pixel (x, y) being OpenSlide's (x + bounds-x, y + bounds-y), l.365-366)."""
    values = [properties.get(key) for key in OPENSLIDE_BOUNDS]
    try:
        x, y, w, h = (int(str(v).strip()) for v in values)
    except (TypeError, ValueError):
        return None
    return (x, y, w, h) if min(x, y) >= 0 and min(w, h) > 0 else None
