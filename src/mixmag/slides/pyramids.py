"""Tile pyramids of cells and regions: every level's tiles of one grid window, as uint8 arrays.

Default ("derive"): read the finest level once for the whole window at its exact mpp and make each
coarser level by exact 2x area downsampling, so tissue is decoded once, not once per level, and the
levels nest by construction. "pyramid" reads each level separately from the slide's own pyramid,
for comparison with what a per-level reader would see.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..geometry import CellGrid, LevelSpec
from .reader import Slide, halve, halve_tiles, kept_mpp, split_tiles
from .tiling import TilingPlan

ReadMode = Literal["derive", "pyramid"]


@dataclass(frozen=True)
class TilePyramid:
    """Tiles of a size x size window of cells whose top-left cell is (row, col).

    tiles[i] has shape ((size * 2^i)^2, tile_px, tile_px, 3): level i's tiles of the window,
    row-major over the window's (size * 2^i) x (size * 2^i) grid.
    """

    row: int
    col: int
    size: int
    tiles: tuple[np.ndarray, ...]
    joined: np.ndarray | None = field(default=None, repr=False, compare=False)  # the tiles as one array, if read so

    @property
    def n_tiles(self) -> int:
        return sum(t.shape[0] for t in self.tiles)

    def stacked(self) -> np.ndarray:
        """Every level's tiles in one array, coarsest first (`np.concatenate(tiles)`): without a copy where the levels
        were read into one array, as `derive` reads them (3.2 MB a cell that an embedding worker no longer copies)."""
        return self.joined if self.joined is not None else np.concatenate(self.tiles)

    def cell(self, dr: int, dc: int) -> TilePyramid:
        """The pyramid of one cell of the window (4^i tiles per level, row-major within the cell)."""
        out = []
        for level, tiles in enumerate(self.tiles):
            per = 2**level
            side = self.size * per
            grid = tiles.reshape(side, side, *tiles.shape[1:])
            block = grid[dr * per : (dr + 1) * per, dc * per : (dc + 1) * per]
            out.append(block.reshape(per * per, *tiles.shape[1:]))
        return TilePyramid(self.row + dr, self.col + dc, 1, tuple(out))


def read_pyramid(
    slide: Slide,
    grid: CellGrid,
    levels: LevelSpec,
    row: int,
    col: int,
    size: int = 1,
    *,
    mode: ReadMode = "derive",
    tolerance: float = 0.05,
    allow_upsample: bool = False,
    keep_within: float = 0.0,
) -> TilePyramid:
    """Read the tile pyramid of the size x size window at (row, col)."""
    box = grid.window_box(row, col, size)
    opts = dict(tolerance=tolerance, allow_upsample=allow_upsample, keep_within=keep_within)
    if mode == "derive" and levels.tile_px % 2 == 0:
        joined, tiles = _derive_tiles(slide, box, levels, size, opts)
        return TilePyramid(row, col, size, tiles, joined)
    if mode == "derive":
        side = size * levels.finest_cell_px
        image = slide.read_box(box, levels.finest_mpp, (side, side), **opts)
        images = [image]
        for _ in range(levels.n_levels - 1):
            images.append(halve(images[-1]))
        images.reverse()
    elif mode == "pyramid":
        images = []
        for level in range(levels.n_levels):
            side = size * levels.tile_px * 2**level
            images.append(slide.read_box(box, levels.mpp(level), (side, side), **opts))
    else:
        raise ValueError(f"unknown read mode {mode!r}; use 'derive' or 'pyramid'")
    return TilePyramid(row, col, size, tuple(split_tiles(im, levels.tile_px) for im in images))


def _derive_tiles(
    slide: Slide, box, levels: LevelSpec, size: int, opts: dict
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """`derive` tile by tile into one array, coarsest level first: the finest level read straight into its tiles, each
    coarser level halved from the finer level's tiles."""
    t = levels.tile_px
    counts = [(size * 2**i) ** 2 for i in range(levels.n_levels)]
    joined = np.empty((sum(counts), t, t, 3), np.uint8)
    bounds = np.cumsum([0, *counts])
    tiles = [joined[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    side = size * levels.finest_cell_px
    slide.read_tiles(slide.plan(box, levels.finest_mpp, (side, side), **opts), tiles[-1])
    for i in range(levels.n_levels - 1, 0, -1):
        halve_tiles(tiles[i], size * 2**i, tiles[i - 1])
    return joined, tuple(tiles)


def iter_cells(slide: Slide, plan: TilingPlan, *, mode: ReadMode = "derive") -> Iterator[TilePyramid]:
    """Every cell of the plan (plan.cells order), each as its own pyramid."""
    for row, col in plan.cells:
        yield _read(slide, plan, row, col, 1, mode)


def iter_regions(slide: Slide, plan: TilingPlan, *, mode: ReadMode = "derive") -> Iterator[TilePyramid]:
    """Every accepted region of the plan, each read in one go."""
    for row, col in plan.regions:
        yield _read(slide, plan, row, col, plan.params.region_size, mode)


def _read(slide: Slide, plan: TilingPlan, row: int, col: int, size: int, mode: ReadMode) -> TilePyramid:
    return read_pyramid(slide, plan.grid, plan.levels, row, col, size, mode=mode, **plan.params.read_options)


def read_mpps(plan: TilingPlan, mode: ReadMode = "derive") -> list[float]:
    """The mpp each level's tiles really have: the levels' own unless the plan keeps a slide level near the target
    as it is (`resample_tolerance`); in `derive` mode the coarser levels are halvings of the finest read."""
    level_mpps = [plan.slide.mpp * d for d in plan.slide.level_downsamples]
    targets = plan.levels.mpps
    options = plan.params.read_options
    if mode == "derive":
        finest = kept_mpp(level_mpps, targets[-1], **options)
        return [finest * 2 ** (len(targets) - 1 - i) for i in range(len(targets))]
    return [kept_mpp(level_mpps, target, **options) for target in targets]
