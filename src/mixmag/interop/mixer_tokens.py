"""The region mixer's outputs as TRIDENT and CLAM feature files: its contextualized tokens as tile features at
mixmag's tile coordinates (one file set per level), and its compressed (CLS) embeddings as region features at the
regions' coordinates, so that peers' tools (MIL training, slide encoders, heatmaps) use them like any tile encoder's.

Which tile a token is: a region is a t x t window of cells at (row, col); its tokens are level 0's t x t grid, then
level 1's 2t x 2t, ... (`mixmag.geometry:token_slots`), so token (level i, r, c) is sub-tile (r mod 2^i, c mod 2^i) of
cell (row + r div 2^i, col + c div 2^i), whose top-left is exactly the one `mixmag.interop.grid:tile_origins` gives:
the same rounded coordinates as `mixmag store export` writes for the tile embeddings. Only tiles inside the store's
accepted regions have a contextualized token, so these files hold those tiles, not every tile of the plan.

A region is, to TRIDENT, a patch of t x 224 px at the coarsest level's magnification (level 0's tile is one cell):
``<coarsest mag>x_<t·224>px_0px_overlap/features_<name>/<slide>.h5``, its ``patch_size_level0`` the floor of t cells.
For CLAM the regions are one more data folder, ``<out>/regions/``.

Every file records what made it, as ``mixmag_*`` attributes on ``features``: the mixer's digest and file, the store's
sha256, the tile encoder's provenance, what the rows are (tokens of one level, or region CLS), the slide, and the
digest of coordinates and values together (`mixmag.interop.files:encoder_extras`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_path
from ..geometry import magnification_name, token_slots
from ..ids import check_id, path_for_id
from ..slides.tiling import TilingPlan
from ..store import SlideStore
from . import trident
from .assemble import InteropError
from .files import encoder_extras, write_h5

DEFAULT_NAME = "mixmag_mixer"  # the features_<name> folder: these are no tile encoder's features
REGIONS = "regions"  # CLAM's data folder of region features


@dataclass(frozen=True)
class MixerOutputs:
    """One slide's mixer outputs: tokens (R, s, D) in region token order, cls (R, D'), for windows (R, 2) (row, col),
    with what made them."""

    tokens: np.ndarray
    cls: np.ndarray
    windows: np.ndarray
    region_size: int
    mixer_digest: str
    mixer_weights: str
    store_sha256: str


def token_tiles(windows: np.ndarray, t: int, n_levels: int, cell_px: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per level: (positions of that level's tokens in the flattened (R·s) token array, their tiles' level-0
    top-lefts (R·(t 2^i)^2, 2) as int64, rounded as `mixmag.interop.grid:rounded_origins` rounds)."""
    windows = np.asarray(windows, np.int64).reshape(-1, 2)
    slots = np.asarray(token_slots(t, n_levels), np.int64).reshape(-1, 3)
    s = len(slots)
    out = []
    for level in range(n_levels):
        mine = np.flatnonzero(slots[:, 0] == level)
        per = 2**level
        r, c = slots[mine, 1], slots[mine, 2]
        rows = windows[:, 0:1] + r[None, :] // per
        cols = windows[:, 1:2] + c[None, :] // per
        step = cell_px / per
        x = cols.astype(np.float64) * cell_px + (c % per)[None, :] * step
        y = rows.astype(np.float64) * cell_px + (r % per)[None, :] * step
        coords = np.rint(np.stack([x.ravel(), y.ravel()], axis=1)).astype(np.int64)
        positions = (np.arange(len(windows))[:, None] * s + mine[None, :]).ravel()
        out.append((positions, coords))
    return out


def region_coords(windows: np.ndarray, cell_px: float) -> np.ndarray:
    """(R, 2) int64 level-0 top-lefts of the regions (their first cell's)."""
    windows = np.asarray(windows, np.float64).reshape(-1, 2)
    return np.rint(np.stack([windows[:, 1] * cell_px, windows[:, 0] * cell_px], axis=1)).astype(np.int64)


def _provenance(store: SlideStore, outputs: MixerOutputs, kind: str, coords: np.ndarray, features: np.ndarray) -> dict:
    """What made these rows: the mixer, the store, the tile encoder (`encoder_extras`: slide, encoder provenance and
    the digest of coordinates and values together)."""
    return {
        "mixmag_kind": kind,
        "mixmag_mixer_digest": outputs.mixer_digest,
        "mixmag_mixer_weights": outputs.mixer_weights,
        "mixmag_store_sha256": outputs.store_sha256,
        "mixmag_region_size": int(outputs.region_size),
    } | encoder_extras(store, coords, features)


def _check(store: SlideStore, outputs: MixerOutputs) -> tuple[str, list[str]]:
    slide = check_id(store.header.slide_id, where="the store's slide_id attribute")
    levels = list(store.embeddings)
    s = sum((outputs.region_size * 2**i) ** 2 for i in range(len(levels)))
    if outputs.tokens.ndim != 3 or outputs.tokens.shape[:2] != (len(outputs.windows), s):
        raise InteropError(
            f"{slide}: mixer tokens of shape {outputs.tokens.shape} do not fit {len(outputs.windows)} regions of {s} "
            "tokens; run the mixer pretrained on stores like this one"
        )
    if not (np.isfinite(outputs.tokens).all() and np.isfinite(outputs.cls).all()):
        raise InteropError(f"{slide}: the mixer gave non-finite values; nothing written for this slide")
    return slide, levels


def export_trident(store: SlideStore, plan: TilingPlan, outputs: MixerOutputs, out: Path, name: str) -> list[Path]:
    """`<out>/<mag>x_<tile>px_0px_overlap/features_<name>/<slide>.h5` per level (tokens) and
    `<out>/<mag0>x_<t·tile>px_0px_overlap/features_<name>/<slide>.h5` (region CLS), as TRIDENT writes features."""
    _, levels = _check(store, outputs)
    check_id(name, what="feature set name", where="--name")
    tokens = outputs.tokens.reshape(-1, outputs.tokens.shape[-1]).astype(np.float32)
    tiles = token_tiles(outputs.windows, outputs.region_size, len(levels), plan.cell_px)
    written = []
    for level, (positions, coords) in enumerate(tiles):
        folder = Path(out) / trident.job_folder(plan.levels.mpp(level), plan.params.tile_px)
        kind = f"mixer contextualized tokens, {magnification_name(plan.levels.mpp(level))}"
        coords_attrs = trident.coords_attrs(plan, level, store.header.slide_id, folder)
        written.append(_write_trident(folder, name, store, outputs, kind, tokens[positions], coords, coords_attrs))
    t, tile = outputs.region_size, plan.params.tile_px
    folder = Path(out) / trident.job_folder(plan.levels.mpp(0), t * tile)
    footprint = t * plan.cell_px  # a region is t cells, and level 0's tile is one cell
    coords_attrs = trident.coords_attrs(plan, 0, store.header.slide_id, folder) | {
        "patch_size": int(t * tile),
        "patch_size_level0": int(math.floor(footprint + 1e-9)),
        "mixmag_patch_size_level0": float(footprint),
        "mixmag_region_size": int(t),
    }
    cls = outputs.cls.reshape(len(outputs.windows), -1).astype(np.float32)
    coords = region_coords(outputs.windows, plan.cell_px)
    written.append(_write_trident(folder, name, store, outputs, "mixer region cls", cls, coords, coords_attrs))
    return written


def _write_trident(
    folder: Path, name: str, store: SlideStore, outputs: MixerOutputs, kind: str, features, coords, coords_attrs: dict
) -> Path:
    slide = store.header.slide_id
    features_dir = path_for_id(folder, f"features_{name}", what="feature set name", where="--name")
    path = path_for_id(features_dir, slide, ".h5", where="the store's slide_id attribute")
    attrs = {"name": slide, "savetodir": str(features_dir), "encoder": name}
    attrs |= _provenance(store, outputs, kind, coords, features)
    return write_h5(path, {"features": (features, attrs), "coords": (coords, coords_attrs)})


def export_clam(store: SlideStore, outputs: MixerOutputs, out: Path) -> list[Path]:
    """`<out>/<level>/h5_files/<slide>.h5` + `pt_files/<slide>.pt` per level (tokens), and the same under
    `<out>/regions/` (region CLS), as CLAM's feature extraction writes them."""
    slide, levels = _check(store, outputs)
    cell_px = float(store.header.cell_px or 0)
    tokens = outputs.tokens.reshape(-1, outputs.tokens.shape[-1]).astype(np.float32)
    tiles = token_tiles(outputs.windows, outputs.region_size, len(levels), cell_px)
    sets = [(level, tokens[p], c, f"mixer contextualized tokens, {level}") for level, (p, c) in zip(levels, tiles)]
    cls = outputs.cls.reshape(len(outputs.windows), -1).astype(np.float32)
    sets.append((REGIONS, cls, region_coords(outputs.windows, cell_px), "mixer region cls"))
    written = []
    for folder_name, features, coords, kind in sets:
        data_dir = path_for_id(out, folder_name, what="level name", where=f"store {slide}")
        h5_path = path_for_id(data_dir / "h5_files", slide, ".h5", where="the store's slide_id attribute")
        pt_path = path_for_id(data_dir / "pt_files", slide, ".pt", where="the store's slide_id attribute")
        attrs = _provenance(store, outputs, kind, coords, features)
        write_h5(h5_path, {"features": (features, attrs), "coords": (coords.astype(np.int32), {})})
        with atomic_path(pt_path) as tmp, open(tmp, "wb") as handle:
            torch.save(torch.from_numpy(features), handle)
        written += [h5_path, pt_path]
    return written
