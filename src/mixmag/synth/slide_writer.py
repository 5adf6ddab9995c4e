"""Write real pyramidal whole slide image files (tiled TIFF, Aperio-style SVS, OME-TIFF) from an array.

Used by the tests, the benchmarks and the demo: files that OpenSlide and TiffSlide open like scanner
output, with the resolution recorded where readers look for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import tifffile

from ..fileio import atomic_path

Compression = Literal["jpeg", "deflate", "none"]
Flavor = Literal["generic", "aperio", "ome", "ome-strips"]


def pyramid_levels(image: np.ndarray, downsamples: Sequence[int]) -> list[np.ndarray]:
    """Level images by area downsampling of level 0 (downsamples must start at 1 and increase)."""
    if not downsamples or downsamples[0] != 1 or list(downsamples) != sorted(set(downsamples)):
        raise ValueError(f"downsamples must start at 1 and increase, got {list(downsamples)}")
    h, w = image.shape[:2]
    levels = [image]
    for d in downsamples[1:]:
        size = (max(1, round(w / d)), max(1, round(h / d)))
        levels.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    return levels


def write_slide(
    path: str | Path,
    image: np.ndarray,
    mpp: float | None,
    *,
    downsamples: Sequence[int] = (1, 2, 4),
    tile: int = 256,
    compression: Compression = "jpeg",
    quality: int = 90,
    flavor: Flavor = "generic",
    resolution_dpi: float | None = None,
) -> Path:
    """Write `image` (H, W, 3) uint8 as a slide file at `mpp` um/px; return the path.

    - generic: tiled TIFF, one IFD per level (reduced levels flagged), resolution tags in cm.
    - aperio: the same with an Aperio ImageDescription (OpenSlide's "aperio" vendor, MPP in the text).
    - ome: OME-TIFF pyramid (levels as SubIFDs), PhysicalSizeX/Y in um.
    - ome-strips: a plain, single-level, strip-organised OME-TIFF (OpenSlide refuses it; TiffSlide reads it).
    `mpp=None` writes no resolution at all; `resolution_dpi` writes a raw dpi instead (e.g. 72, to test
    that an absurd resolution is rejected). The file is written to a temporary name and renamed.
    """
    path = Path(path)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    codec = {"jpeg": ("jpeg", {"level": quality}), "deflate": ("zlib", None), "none": (None, None)}[compression]
    common = dict(
        photometric="rgb",
        compression=codec[0],
        compressionargs=codec[1],
    )
    resolution = _resolution_kwargs(mpp, resolution_dpi)
    with atomic_path(path) as tmp:  # no suffix: tifffile must not read "OME" into a name ending .ome.tif
        if flavor == "ome-strips":
            metadata = {"axes": "YXS"} | ({"PhysicalSizeX": mpp, "PhysicalSizeY": mpp} if mpp else {})
            tifffile.imwrite(tmp, image, ome=True, metadata=metadata, rowsperstrip=64, **common)
        elif flavor == "ome":
            levels = pyramid_levels(image, downsamples)
            metadata = {"axes": "YXS"} | ({"PhysicalSizeX": mpp, "PhysicalSizeY": mpp} if mpp else {})
            with tifffile.TiffWriter(tmp, ome=True, bigtiff=_needs_bigtiff(image)) as tif:
                tif.write(levels[0], tile=(tile, tile), subifds=len(levels) - 1, metadata=metadata, **common)
                for level in levels[1:]:
                    tif.write(level, tile=(tile, tile), subfiletype=1, metadata=None, **common)
        else:
            levels = pyramid_levels(image, downsamples)
            description = _aperio_description(image, mpp, tile) if flavor == "aperio" else None
            with tifffile.TiffWriter(tmp, bigtiff=_needs_bigtiff(image)) as tif:
                for i, level in enumerate(levels):
                    tif.write(
                        level,
                        tile=(tile, tile),
                        # SVS levels are plain tiled pages (reduced pages there mean label/macro)
                        subfiletype=0 if i == 0 or flavor == "aperio" else 1,
                        description=description if i == 0 else None,
                        metadata=None,
                        **(resolution if flavor == "generic" else {}),
                        **common,
                    )
                    if i == 0 and flavor == "aperio":
                        # SVS layout: a stripped thumbnail follows the baseline image.
                        tif.write(
                            _thumbnail(image),
                            description="Aperio Image Library thumbnail",
                            metadata=None,
                            photometric="rgb",
                        )
    return path


def _resolution_kwargs(mpp: float | None, dpi: float | None) -> dict:
    if dpi is not None:
        return {"resolution": (dpi, dpi), "resolutionunit": "INCH"}
    if mpp is None:
        return {"resolutionunit": "NONE"}
    per_cm = 10000.0 / mpp
    return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}


def _aperio_description(image: np.ndarray, mpp: float | None, tile: int) -> str:
    h, w = image.shape[:2]
    parts = [
        f"Aperio Image Library v12.0.0 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90",
        "AppMag = 40" if mpp and mpp < 0.375 else "AppMag = 20",
    ]
    if mpp:
        parts.append(f"MPP = {mpp:.6f}")
    return "|".join(parts)


def _thumbnail(image: np.ndarray, longest: int = 768) -> np.ndarray:
    h, w = image.shape[:2]
    scale = min(1.0, longest / max(h, w))
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _needs_bigtiff(image: np.ndarray) -> bool:
    return image.nbytes > 2**31
