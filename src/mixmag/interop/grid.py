"""mixmag's tiles as level-0 pixel coordinates, and other tools' coordinates put back on mixmag's grid.

Level i's tile (sub-row sr, sub-col sc) of cell (row, col) has its top-left at x = col·S + sc·S/2^i,
y = row·S + sr·S/2^i level-0 pixels, with S = cell_px kept as a float (geometry.CellGrid). TRIDENT and CLAM store
integer top-lefts, so a coordinate names a tile when it lies within TOLERANCE_PX of that tile's exact top-left.
"""

from __future__ import annotations

import numpy as np

from ..errors import MixmagError

TOLERANCE_PX = 1.0


class OffGridError(MixmagError):
    """Coordinates that are not exactly one level's tiles of a plan's cells (the caller adds slide and level)."""


def tile_origins(cells: np.ndarray, cell_px: float, level: int) -> np.ndarray:
    """(N·4^i, 2) float (x, y) level-0 top-lefts of level i's tiles: cells in order, sub-tiles row-major."""
    cells = np.asarray(cells, np.float64).reshape(-1, 2)
    per = 2**level
    step = cell_px / per
    sub_r, sub_c = np.divmod(np.arange(per * per), per)
    x = cells[:, 1:2] * cell_px + sub_c[None, :] * step
    y = cells[:, 0:1] * cell_px + sub_r[None, :] * step
    return np.stack([x.ravel(), y.ravel()], axis=1)


def whole_pixel_footprints(cell_px: float, n_levels: int, tol: float = 1e-6) -> bool:
    """Whether every level's tile footprint (cell_px / 2^i level-0 px) is a whole number of pixels, so a peer that
    reads integer boxes at integer origins (TRIDENT, CLAM) reads exactly mixmag's tiles: only then are features
    computed by the peer at `mixmag store coords`' coordinates equal, value for value, to mixmag's own."""
    finest = cell_px / 2 ** (n_levels - 1)
    return abs(finest - round(finest)) <= tol


def rounded_origins(cells: np.ndarray, cell_px: float, level: int) -> np.ndarray:
    """tile_origins rounded to the nearest level-0 pixel, as int64 (what TRIDENT and CLAM store)."""
    return np.rint(tile_origins(cells, cell_px, level)).astype(np.int64)


def slots_on_grid(
    coords: np.ndarray, cells: np.ndarray, cell_px: float, level: int, tolerance: float = TOLERANCE_PX
) -> np.ndarray:
    """The store slot (cell index · 4^i + sub-tile) of every coordinate, each slot at most once.

    Raises OffGridError when a coordinate is farther than `tolerance` from every level-i tile top-left, lies in a
    cell the plan does not embed, or names a tile another coordinate already named.
    """
    coords = np.asarray(coords, np.float64).reshape(-1, 2)
    cells = np.asarray(cells, np.int64).reshape(-1, 2)
    per = 2**level
    step = cell_px / per
    k = np.rint(coords / step).astype(np.int64)
    offset = np.abs(coords - k * step).max(axis=1, initial=0.0) if len(coords) else np.zeros(0)
    bad = np.flatnonzero(offset > tolerance)
    if bad.size:
        x, y = coords[bad[0]]
        raise OffGridError(
            f"{bad.size} of {len(coords)} coordinates lie off mixmag's grid, e.g. ({x:g}, {y:g}) is "
            f"{offset[bad[0]]:.1f} px from the nearest tile top-left (tolerance {tolerance:g} px)"
        )
    cell_col, sub_c = np.divmod(k[:, 0], per)
    cell_row, sub_r = np.divmod(k[:, 1], per)
    cell_index = _index_of(cells, cell_row, cell_col)
    missing = np.flatnonzero(cell_index < 0)
    if missing.size:
        m = missing[0]
        raise OffGridError(
            f"{missing.size} coordinates lie in cells the plan does not embed, e.g. ({coords[m, 0]:g}, "
            f"{coords[m, 1]:g}) in cell ({cell_row[m]}, {cell_col[m]})"
        )
    slots = cell_index * per * per + sub_r * per + sub_c
    unique, first, counts = np.unique(slots, return_index=True, return_counts=True)
    if unique.size < slots.size:
        twice = first[np.argmax(counts > 1)]
        raise OffGridError(
            f"{slots.size - unique.size} coordinates repeat a tile, e.g. ({coords[twice, 0]:g}, "
            f"{coords[twice, 1]:g}) appears {counts.max()} times"
        )
    return slots


def _index_of(cells: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Index in `cells` of every (row, col), or -1 where it is not one of them."""
    if len(cells) == 0:
        return np.full(rows.shape, -1, np.int64)
    width = int(max(cells[:, 1].max(), cols.max(initial=0))) + 2
    keys = cells[:, 0] * width + cells[:, 1]
    order = np.argsort(keys)
    wanted = rows * width + cols
    pos = np.clip(np.searchsorted(keys[order], wanted), 0, len(keys) - 1)
    found = (keys[order][pos] == wanted) & (rows >= 0) & (cols >= 0)
    return np.where(found, order[pos], -1)
