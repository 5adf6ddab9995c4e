"""Pixel content for generated slides: a position code for exactness checks, and tissue-like H&E.

Sizes are given in microns so the same content can be written at any mpp. A `Pattern` draws any window of a
slide at any pixel size, so `slide_writer` can write slides of any size strip by strip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

# Periods (um) of the position code: not divisors of any tile or cell size (112, 224, 448 um...).
POSITION_PERIODS_UM = (97.0, 89.0)
_AMPLITUDE = 100.0
GLASS_RGB = (242, 240, 244)
STROMA_RGB = (226, 150, 190)
NUCLEUS_RGB = (95, 60, 150)


class Pattern(Protocol):
    """Slide content defined everywhere: any window, at any pixel size, comes out the same on its own."""

    def render(self, x0: int, y0: int, width: int, height: int, mpp_x: float, mpp_y: float) -> np.ndarray:
        """Pixels [y0, y0 + height) x [x0, x0 + width) of the slide drawn at mpp_x x mpp_y um/px, (h, w, 3) uint8."""
        ...


@dataclass(frozen=True)
class PositionPattern:
    """The position code over a slide of `width_um` x `height_um` (see `position_code`)."""

    width_um: float
    height_um: float

    def render(self, x0: int, y0: int, width: int, height: int, mpp_x: float, mpp_y: float) -> np.ndarray:
        px, py = POSITION_PERIODS_UM
        x_um = (np.arange(x0, x0 + width, dtype=np.float64) + 0.5) * mpp_x
        y_um = (np.arange(y0, y0 + height, dtype=np.float64) + 0.5) * mpp_y
        out = np.empty((height, width, 3), np.uint8)
        out[..., 0] = np.round(128 + _AMPLITUDE * np.sin(2 * np.pi * x_um / px))[None, :]
        out[..., 1] = np.round(128 + _AMPLITUDE * np.sin(2 * np.pi * y_um / py))[:, None]
        out[..., 2] = np.round(60 + 120 * (x_um[None, :] + y_um[:, None]) / (self.width_um + self.height_um))
        return out


def position_code(width: int, height: int, mpp: float) -> np.ndarray:
    """An image whose pixels encode where they are: R = sin(2 pi x / Px), G = sin(2 pi y / Py).

    Area averaging keeps a sinusoid's phase (only its amplitude shrinks), so the position of any
    resampled crop can be recovered by `decode_position` to a small fraction of a pixel.
    B is a gentle ramp that makes the content non-periodic for the eye and for the tissue detector.
    """
    return PositionPattern(width * mpp, height * mpp).render(0, 0, width, height, mpp, mpp)


def decode_position(tile: np.ndarray, tile_mpp: float) -> tuple[float, float]:
    """Recover (x0, y0) in um, modulo the code's periods, of a crop of `position_code` at `tile_mpp`."""
    px, py = POSITION_PERIODS_UM
    x0 = _fit_phase(tile[..., 0].astype(np.float64).mean(axis=0), tile_mpp, px)
    y0 = _fit_phase(tile[..., 1].astype(np.float64).mean(axis=1), tile_mpp, py)
    return x0, y0


def _fit_phase(signal: np.ndarray, mpp: float, period: float) -> float:
    """Least-squares fit of a + b sin(w u) + c cos(w u) with u the pixel-centre offsets; return the shift."""
    u = (np.arange(signal.size) + 0.5) * mpp
    w = 2 * np.pi / period
    design = np.stack([np.ones_like(u), np.sin(w * u), np.cos(w * u)], axis=1)
    (_, b, c), *_ = np.linalg.lstsq(design, signal, rcond=None)
    # A sin(w (u + x0)) = A cos(w x0) sin(w u) + A sin(w x0) cos(w u)
    return float(np.arctan2(c, b) / w) % period


def circular_error(measured: float, expected: float, period: float) -> float:
    """Distance between two positions on a circle of circumference `period`."""
    d = (measured - expected) % period
    return min(d, period - d)


def tissue_like(
    width: int,
    height: int,
    mpp: float,
    *,
    seed: int = 0,
    tissue_mask: np.ndarray | None = None,
    n_pieces: int = 4,
    nuclei_per_mm2: float = 2500.0,
) -> np.ndarray:
    """H&E-like RGB: pale glass, eosin-pink stroma with texture, hematoxylin-blue nuclei.

    `tissue_mask` (bool, any resolution) places the tissue; otherwise `n_pieces` random blobs.
    """
    rng = np.random.default_rng(seed)
    mask = _tissue_mask(width, height, rng, tissue_mask, n_pieces)
    glass = np.array(GLASS_RGB, np.float32)
    stroma = np.array(STROMA_RGB, np.float32)
    image = np.empty((height, width, 3), np.float32)
    image[:] = glass
    texture = _smooth_noise(width, height, mpp, rng, scale_um=20.0)
    tissue_rgb = stroma[None, None, :] + 25.0 * texture[..., None] * np.array([0.4, 1.0, 0.6], np.float32)
    image[mask] = tissue_rgb[mask]
    image += rng.normal(0, 2.0, image.shape).astype(np.float32)
    out = np.clip(image, 0, 255).astype(np.uint8)
    _draw_nuclei(out, mask, mpp, rng, nuclei_per_mm2)
    return out


def _tissue_mask(width, height, rng, tissue_mask, n_pieces) -> np.ndarray:
    if tissue_mask is not None:
        resized = cv2.resize(tissue_mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        return resized.astype(bool)
    small_w, small_h = max(8, width // 16), max(8, height // 16)
    small = np.zeros((small_h, small_w), np.uint8)
    for _ in range(n_pieces):
        center = (int(rng.uniform(0.2, 0.8) * small_w), int(rng.uniform(0.2, 0.8) * small_h))
        axes = (int(rng.uniform(0.1, 0.3) * small_w), int(rng.uniform(0.1, 0.3) * small_h))
        cv2.ellipse(small, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR).astype(bool)


def _smooth_noise(width, height, mpp, rng, scale_um) -> np.ndarray:
    step = max(1, round(scale_um / mpp))
    coarse = rng.normal(0, 1, (height // step + 2, width // step + 2)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _draw_nuclei(image: np.ndarray, mask: np.ndarray, mpp: float, rng, per_mm2: float) -> None:
    height, width = mask.shape
    n = int(rng.poisson(per_mm2 * width * height * (mpp / 1000.0) ** 2))
    xs = rng.integers(0, width, n)
    ys = rng.integers(0, height, n)
    keep = mask[ys, xs]
    xs, ys = xs[keep], ys[keep]
    radii = np.maximum(1, np.round(rng.uniform(2.5, 4.5, xs.size) / mpp)).astype(int)
    shades = rng.uniform(0.8, 1.1, xs.size)
    for x, y, r, s in zip(xs, ys, radii, shades):
        color = tuple(int(min(255, c * s)) for c in NUCLEUS_RGB)
        cv2.circle(image, (int(x), int(y)), int(r), color, thickness=-1, lineType=cv2.LINE_AA)
