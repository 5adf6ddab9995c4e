"""Geometry of the global cell grid, magnification levels and region token order.

Pure functions and frozen dataclasses, no I/O. Every coordinate here is in level-0 pixels of the
slide, kept as floats; only the reader rounds, once, when it turns a box into a pixel read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NewType

Microns = NewType("Microns", float)
MPP = NewType("MPP", float)  # microns per pixel

# Conventional link between magnification and resolution: 10x ~ 1 um/px. Used only for names.
_MICRONS_PER_PIXEL_AT_10X = 1.0


def magnification_name(mpp: float) -> str:
    """Conventional name of a resolution: 2.0 um/px -> "5x", 0.5 -> "20x"."""
    return f"{10 * _MICRONS_PER_PIXEL_AT_10X / mpp:g}x"


@dataclass(frozen=True)
class LevelSpec:
    """The l magnification levels, 2x apart, coarsest first (level 0 = base_mpp)."""

    base_mpp: float = 2.0
    n_levels: int = 3
    tile_px: int = 224

    def __post_init__(self) -> None:
        if self.n_levels < 1:
            raise ValueError(f"n_levels must be >= 1, got {self.n_levels}")
        if not self.base_mpp > 0:
            raise ValueError(f"base_mpp must be > 0, got {self.base_mpp}")
        if self.tile_px < 1:
            raise ValueError(f"tile_px must be >= 1, got {self.tile_px}")

    def mpp(self, level: int) -> float:
        return self.base_mpp / 2**level

    @property
    def mpps(self) -> tuple[float, ...]:
        return tuple(self.mpp(i) for i in range(self.n_levels))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(magnification_name(m) for m in self.mpps)

    @property
    def finest_mpp(self) -> float:
        return self.mpp(self.n_levels - 1)

    @staticmethod
    def tiles_per_side(level: int) -> int:
        return 2**level

    @staticmethod
    def tiles_per_cell(level: int) -> int:
        return 4**level

    @property
    def cell_um(self) -> float:
        """Side of one cell: the footprint of one level-0 tile (448 um for 224 px at 2 um/px)."""
        return self.tile_px * self.base_mpp

    @property
    def finest_cell_px(self) -> int:
        """Side of one cell in pixels of the finest level (896 for the paper's 3 levels)."""
        return self.tile_px * 2 ** (self.n_levels - 1)


def sequence_length(t: int, n_levels: int) -> int:
    """s(t, l) = t^2 * sum_i 4^i: tokens of a t x t region over l levels (189 for t = 3, l = 3)."""
    return t * t * sum(4**i for i in range(n_levels))


def token_slots(t: int, n_levels: int) -> list[tuple[int, int, int]]:
    """(level, row, col) of every token of a t x t region: level 0's t x t grid, then level 1's 2t x 2t, ..."""
    slots: list = []
    for level in range(n_levels):
        side = t * 2**level
        slots.extend((level, r, c) for r in range(side) for c in range(side))
    return slots


@dataclass(frozen=True)
class Box:
    """Axis-aligned box [x0, x1) x [y0, y1) in level-0 pixels (floats)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


@dataclass(frozen=True)
class CellGrid:
    """The global lattice of cells anchored at the slide's level-0 origin.

    Cell (row, col) covers [col*S, (col+1)*S) x [row*S, (row+1)*S) with S = cell_um / slide_mpp
    kept as a float, so every level nests exactly in every cell whatever the scanner's mpp.
    Only whole cells inside the slide belong to the grid.
    """

    slide_mpp: float
    width: int
    height: int
    cell_um: float

    @property
    def cell_px(self) -> float:
        return self.cell_um / self.slide_mpp

    @property
    def n_cols(self) -> int:
        return max(0, math.floor(self.width / self.cell_px + 1e-9))

    @property
    def n_rows(self) -> int:
        return max(0, math.floor(self.height / self.cell_px + 1e-9))

    def window_box(self, row: int, col: int, size: int = 1) -> Box:
        """Box of the size x size window of cells whose top-left cell is (row, col)."""
        s = self.cell_px
        return Box(col * s, row * s, (col + size) * s, (row + size) * s)

    def cell_box(self, row: int, col: int) -> Box:
        return self.window_box(row, col, 1)

    def tile_box(self, row: int, col: int, level: int, sub_row: int, sub_col: int) -> Box:
        """Box of sub-tile (sub_row, sub_col) of a cell at a level with 2^level tiles per side."""
        per_side = 2**level
        if not (0 <= sub_row < per_side and 0 <= sub_col < per_side):
            raise ValueError(f"sub-tile ({sub_row}, {sub_col}) outside a level-{level} cell")
        t = self.cell_px / per_side
        x0 = col * self.cell_px + sub_col * t
        y0 = row * self.cell_px + sub_row * t
        return Box(x0, y0, x0 + t, y0 + t)


def level_offsets(t: int, n_levels: int) -> list[int]:
    """Index of the first token of each level in a t x t region's sequence (plus the total at the end)."""
    offsets = [0]
    for level in range(n_levels):
        offsets.append(offsets[-1] + (t * 2**level) ** 2)
    return offsets


def token_levels(t: int, n_levels: int) -> list[int]:
    """Level of every token of a t x t region, in sequence order."""
    return [level for level, _, _ in token_slots(t, n_levels)]


def region_permutation(t: int, n_levels: int, rotations: int, flip: bool) -> list[int]:
    """Token order of a region turned by rotations x 90 degrees (counter-clockwise), then mirrored
    left-right if flip: new_tokens = tokens[perm]. Every level's grid turns with the same square,
    so a 20x tile stays inside the 10x and 5x tiles that cover it."""
    import numpy as np

    perm = []
    for level, start in zip(range(n_levels), level_offsets(t, n_levels)):
        side = t * 2**level
        grid = np.arange(side * side).reshape(side, side)
        grid = np.rot90(grid, rotations % 4)
        if flip:
            grid = grid[:, ::-1]
        perm.extend((grid.ravel() + start).tolist())
    return perm


def crop_indices(c: int, t: int, n_levels: int, row: int, col: int) -> list[int]:
    """Tokens of the t x t window at cell (row, col) of a c x c context, in the t x t region's order."""
    if not (0 <= row <= c - t and 0 <= col <= c - t):
        raise ValueError(f"a {t}x{t} crop at ({row}, {col}) does not fit in a {c}x{c} context")
    out: list = []
    for level, start in zip(range(n_levels), level_offsets(c, n_levels)):
        per = 2**level
        side = c * per
        for r in range(row * per, (row + t) * per):
            out.extend(start + r * side + cc for cc in range(col * per, (col + t) * per))
    return out
