"""What every slide backend provides to `slides.reader.Slide`: level geometry, metadata and in-bounds RGB reads.

A backend wraps one library (OpenSlide, TiffSlide, zarr, libCZI, slideio). It reports levels in level-0 pixel
geometry (OpenSlide's convention: pixel k of a level with downsample d covers [k·d, (k+1)·d) level-0 pixels) and
reads an in-bounds box of one level as (height, width, 3) uint8 RGB. Everything else (mpp checks, out-of-bounds
glass, exact-mpp planning, decode-error messages) is the reader's, so every backend keeps the same guarantees.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

GLASS_WHITE = 255  # pixels outside the scanned area read as white glass


@dataclass(frozen=True)
class NativeMpp:
    """Microns per pixel as the format's own metadata states it (where it came from, x, y)."""

    source: str
    x: float
    y: float | None


class BackendHandle(ABC):
    """One open slide in one backend."""

    name: str = ""
    level_dimensions: tuple[tuple[int, int], ...] = ()
    level_downsamples: tuple[float, ...] = ()
    properties: dict[str, str] = {}
    native_mpp: NativeMpp | None = None  # for formats whose mpp is not in OpenSlide/TiffSlide properties
    direct: list = []  # per-level direct TIFF tile readers (TiffSlide only; see slides.tiff_tiles)

    @abstractmethod
    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Pixels [x, x+width) x [y, y+height) of a level (inside it), as (height, width, 3) uint8 RGB."""

    @abstractmethod
    def close(self) -> None: ...


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide marks unscanned area transparent (premultiplied): show it as white glass."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    # premultiplied alpha: value = rgb + (255 - a) * white / 255
    return np.clip(rgb.astype(np.uint16) + (255 - a), 0, 255).astype(np.uint8)


def as_rgb(array: np.ndarray, what: str) -> np.ndarray:
    """(h, w), (h, w, 1), (h, w, 3) or (h, w, 4) uint8 -> contiguous (h, w, 3) RGB; anything else is an error."""
    if array.dtype != np.uint8:
        raise ValueError(f"{what} has {array.dtype} pixels; mixmag reads 8-bit brightfield (RGB or grey) slides")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what} has pixel layout {array.shape}; mixmag needs RGB or grey")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])
