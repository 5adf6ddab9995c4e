"""Where a trained slide model looked, and at which magnification.

Every instance of a bag (a tile, a region's token, or a whole region) has a place on the slide's cell
grid at its level. AB-MIL attention (or, where the model pools whole regions, gradient x input on the
mixer's input tokens) is put back on those places: one map per magnification, in that level's tile
units, plus the attention each accepted region received.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.bags import TILE_MODES
from ..errors import MixmagError
from ..fileio import atomic_path
from ..geometry import token_slots
from ..store import SlideStore, StoreIndex, read_index
from ..train.classifier import SlideClassifier


@dataclass
class SlideAttribution:
    """One slide's score and where it came from.

    level_maps[name] has one value per tile of that level over the slide's cell grid (rows x 2^i,
    cols x 2^i), NaN where the model saw no tile of that level.
    """

    slide_id: str
    score: float
    method: str
    level_names: list[str]
    level_maps: dict[str, np.ndarray]
    region_size: int
    regions: np.ndarray  # (R, 2) top-left cells of the accepted regions
    region_weight: np.ndarray  # (R,) AB-MIL attention on each region (sums to <= 1)
    # (R,) each region's share of the slide logit, a_i (w . h_i) summed over its instances (None: not computed)
    region_contribution: np.ndarray | None = None
    token_fraction: dict[str, float] = field(default_factory=dict)  # each level's share of the bag's items

    @property
    def level_share(self) -> dict[str, float]:
        """Each level's share of the total attribution."""
        totals = {name: float(np.nansum(m)) for name, m in self.level_maps.items()}
        whole = sum(totals.values()) or 1.0
        return {name: v / whole for name, v in totals.items()}

    @property
    def level_enrichment(self) -> dict[str, float]:
        """Share of attribution / share of items: 1 = as much as uniform attention would give."""
        share = self.level_share
        return {k: share[k] / f for k, f in self.token_fraction.items() if f > 0}


@dataclass
class _Layout:
    """Level index and level-grid (row, col) of every instance of a bag, and its region (or -1)."""

    level: np.ndarray
    row: np.ndarray
    col: np.ndarray
    region: np.ndarray


def tile_layout(store: StoreIndex | SlideStore, mode: str) -> _Layout:
    """Instances of a tile bag ("5x", ..., "all"): cells in store order, sub-tiles row-major."""
    names = store.level_names
    levels = range(len(names)) if mode == "all" else [names.index(mode)]
    parts = []
    for i in levels:
        side = 2**i
        sub_r, sub_c = np.divmod(np.arange(side * side), side)
        rows = (store.rc[:, 0, None].astype(np.int64) * side + sub_r).ravel()
        cols = (store.rc[:, 1, None].astype(np.int64) * side + sub_c).ravel()
        parts.append((np.full(rows.size, i), rows, cols))
    level, row, col = (np.concatenate(p) for p in zip(*parts))
    return _Layout(level, row, col, np.full(level.size, -1))


def region_layout(store: StoreIndex | SlideStore, region_level: str | None = None) -> _Layout:
    """Tokens of a region bag ((R, s) flattened): regions in store order, each in token_slots order."""
    t = store.header.region_size or 0
    windows = store.windows["regions"].astype(np.int64).reshape(-1, 2)
    slots = np.array(token_slots(t, len(store.level_names)), np.int64).reshape(-1, 3)
    if region_level is not None:
        slots = slots[slots[:, 0] == store.level_names.index(region_level)]
    scale = 2 ** slots[:, 0]
    level = np.tile(slots[:, 0], len(windows))
    row = (windows[:, 0, None] * scale + slots[:, 1]).ravel()
    col = (windows[:, 1, None] * scale + slots[:, 2]).ravel()
    region = np.repeat(np.arange(len(windows)), len(slots))
    return _Layout(level, row, col, region)


def _maps(store: StoreIndex | SlideStore, layout: _Layout, values: np.ndarray) -> dict[str, np.ndarray]:
    rows, cols = (int(store.rc[:, k].max(initial=-1)) + 1 for k in (0, 1))
    maps = {}
    for i, name in enumerate(store.level_names):
        grid = np.zeros((rows * 2**i, cols * 2**i), np.float64)
        seen = np.zeros(grid.shape, bool)
        pick = layout.level == i
        np.add.at(grid, (layout.row[pick], layout.col[pick]), values[pick])
        seen[layout.row[pick], layout.col[pick]] = True
        maps[name] = np.where(seen, grid, np.nan).astype(np.float32)
    return maps


def _region_weights_from_maps(store: StoreIndex | SlideStore, maps: dict[str, np.ndarray]) -> np.ndarray:
    t = store.header.region_size or 0
    windows = store.windows.get("regions", np.zeros((0, 2))).astype(np.int64).reshape(-1, 2)
    out = np.zeros(len(windows))
    for i, name in enumerate(store.level_names):
        s = 2**i
        for k, (r, c) in enumerate(windows):
            out[k] += np.nansum(maps[name][r * s : (r + t) * s, c * s : (c + t) * s])
    return out


def _token_fraction(store: StoreIndex | SlideStore, layout: _Layout) -> dict[str, float]:
    return {name: float(np.mean(layout.level == i)) for i, name in enumerate(store.level_names)}


def explain_slide(
    classifier: SlideClassifier, slide: str, store_path: Path, method: str = "auto", store: StoreIndex | None = None
) -> SlideAttribution:
    """Score one slide with a trained model (its bags pointing at the slide's store: `SlideClassifier.use_stores`)
    and place its attribution (`SlideClassifier.explain`: attention, gradient x input, or auto) on the slide;
    `store`: the store's index where the caller has read it already."""
    store = read_index(store_path) if store is None else store  # the layout only: the bag holds the embeddings
    kind = classifier.bag_kind
    layout = tile_layout(store, kind) if kind in TILE_MODES else region_layout(store, classifier.region_level)
    attribution = classifier.explain(slide, method)
    values = attribution.values
    if values.size != layout.level.size:
        raise MixmagError(
            f"{store_path}: the bag has {values.size} items but the store lays out {layout.level.size}; "
            "re-run `mixmag encode` / `mixmag embed` for this slide"
        )
    maps = _maps(store, layout, values)
    if classifier.pools_regions:  # AB-MIL's own weight and logit share of each region
        region_weight, region_contribution = attribution.attention, attribution.contribution
    else:  # AB-MIL's weights and logit shares of tiles or tokens, summed over each region
        region_weight, region_contribution = (
            _region_weights_from_maps(store, _maps(store, layout, np.asarray(v, np.float64).ravel()))
            for v in (attribution.attention, attribution.contribution)
        )
    return SlideAttribution(
        slide_id=slide,
        score=float(torch.sigmoid(torch.tensor(attribution.logit))),
        method=attribution.method,
        level_names=store.level_names,
        level_maps=maps,
        region_size=store.header.region_size or 0,
        regions=store.windows.get("regions", np.zeros((0, 2), np.int32)).reshape(-1, 2),
        region_weight=np.asarray(region_weight, np.float64),
        region_contribution=np.asarray(region_contribution, np.float64),
        token_fraction=_token_fraction(store, layout),
    )


def attribution_summary(a: SlideAttribution) -> dict:
    """What a predictions table or a report prints for one slide."""
    return {
        "slide": a.slide_id,
        "score": a.score,
        "method": a.method,
        "level_share": a.level_share,
        "level_enrichment": a.level_enrichment,
        "token_fraction": a.token_fraction,
        "top_region": a.regions[int(np.argmax(a.region_weight))].tolist() if len(a.region_weight) else None,
    }


def save_attribution(a: SlideAttribution, path: Path) -> Path:
    """Maps as .npz (one array per level, regions, weights, score contributions), the summary as JSON inside."""
    with atomic_path(path, suffix=".npz") as tmp:  # the suffix keeps numpy from appending its own
        np.savez_compressed(
            tmp,
            **{f"map_{k}": v for k, v in a.level_maps.items()},
            regions=a.regions,
            region_weight=a.region_weight,
            **({} if a.region_contribution is None else {"region_contribution": a.region_contribution}),
            summary=np.array(json.dumps(attribution_summary(a))),
        )
    return path
