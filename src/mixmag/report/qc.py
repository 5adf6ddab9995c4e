"""QC pictures of a tiling plan: the tissue contour, and the accepted regions with their level grids."""

from __future__ import annotations

import cv2
import numpy as np

from ..slides.tiling import TilingPlan

TISSUE_COLOR = (0, 170, 0)
REGION_COLOR = (20, 20, 20)
LEVEL_COLORS = ((220, 40, 40), (30, 90, 220), (240, 160, 0), (150, 0, 150), (0, 150, 150))


def tissue_overlay(thumbnail: np.ndarray, mask: np.ndarray, min_side: int = 800) -> np.ndarray:
    """Thumbnail (upscaled if small) with the tissue mask's contour drawn on it."""
    h, w = thumbnail.shape[:2]
    zoom = max(1.0, min_side / max(h, w))
    size = (round(w * zoom), round(h * zoom))
    out = cv2.resize(thumbnail, size, interpolation=cv2.INTER_NEAREST)
    big_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big_mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(out.shape[:2]) / 500))
    cv2.drawContours(out, contours, -1, TISSUE_COLOR, thickness, lineType=cv2.LINE_AA)
    return out


def regions_overlay(thumbnail: np.ndarray, plan: TilingPlan, min_side: int = 1200) -> np.ndarray:
    """Thumbnail (upscaled so the finest grid shows) with every accepted region and its
    5x/10x/20x tile grids: coarse lines for level 0, finer and lighter for finer levels."""
    h, w = thumbnail.shape[:2]
    zoom = max(1.0, min_side / max(h, w))
    out = cv2.resize(thumbnail, (round(w * zoom), round(h * zoom)), interpolation=cv2.INTER_NEAREST)
    # level-0 px -> picture px
    scale = zoom * w / plan.slide.width
    cell = plan.cell_px * scale
    t = plan.params.region_size
    n_levels = plan.params.n_levels
    for row, col in plan.regions:
        x0, y0 = col * cell, row * cell
        side = t * cell
        for level in range(n_levels - 1, -1, -1):
            step = cell / 2**level
            color = LEVEL_COLORS[level % len(LEVEL_COLORS)]
            n = t * 2**level
            thickness = 1 if level else 2
            for k in range(1, n):
                p = k * step
                _line(out, (x0 + p, y0), (x0 + p, y0 + side), color, thickness)
                _line(out, (x0, y0 + p), (x0 + side, y0 + p), color, thickness)
        cv2.rectangle(out, _pt(x0, y0), _pt(x0 + side, y0 + side), REGION_COLOR, 3, lineType=cv2.LINE_AA)
    _legend(out, plan)
    return out


def _line(img, a, b, color, thickness) -> None:
    cv2.line(img, _pt(*a), _pt(*b), color, thickness, lineType=cv2.LINE_AA)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def _legend(img: np.ndarray, plan: TilingPlan) -> None:
    names = plan.levels.names
    y = 24
    label = (
        f"{plan.slide.slide_id}: {len(plan.regions)} regions ({plan.params.region_size}x{plan.params.region_size} "
        "cells)"
    )
    cv2.putText(img, label, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, REGION_COLOR, 2, cv2.LINE_AA)
    for level, name in enumerate(names):
        y += 22
        color = LEVEL_COLORS[level % len(LEVEL_COLORS)]
        cv2.line(img, (10, y - 5), (40, y - 5), color, 3)
        cv2.putText(
            img,
            f"{name} tiles ({plan.params.tile_px} px at {plan.levels.mpp(level):g} um/px)",
            (48, y),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            color,
            1,
            cv2.LINE_AA,
        )


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB picture as PNG file contents."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode a {rgb.shape} picture as PNG")
    return buf.tobytes()
