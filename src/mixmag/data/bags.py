"""Bags of instances per slide, for slide-level models.

Modes: one level's tile embeddings ("5x", "10x", "20x"); all levels along the sequence ("all");
regions for a mixer ("regions": (R, s, D) tokens of the non-overlapping accepted t x t regions);
or precomputed mixer outputs ("patch": R * s contextualized tokens, "cls": R compressed embeddings)
written by `mixmag encode`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch

from ..errors import CohortError
from ..geometry import level_offsets
from ..store import read_store
from .regions import RegionTable

TILE_MODES = ("5x", "10x", "20x", "all")
BagMode = Literal["5x", "10x", "20x", "all", "patch", "cls", "regions"]


def tile_bag(store_path: Path, mode: str) -> np.ndarray:
    store = read_store(store_path)
    if mode == "all":
        bag = np.concatenate([emb.reshape(-1, emb.shape[-1]) for emb in store.embeddings.values()])
    elif mode in store.embeddings:
        emb = store.embeddings[mode]
        bag = emb.reshape(-1, emb.shape[-1])
    else:
        raise CohortError(f"{store_path}: no level {mode!r} in the store (levels: {', '.join(store.embeddings)})")
    return _nonempty(store_path, bag)


def region_bag(store_path: Path, level: str | None = None) -> np.ndarray:
    """(R, s, D): the store's accepted regions (the tiler's non-overlapping t x t windows); with
    `level`, only that level's (t 2^i)^2 tokens of each region (for single-magnification mixers)."""
    store = read_store(store_path)
    windows = store.windows.get("regions")
    t = int(store.attrs.get("region_size") or 0)
    if windows is None or not t:
        raise CohortError(f"{store_path}: the store lists no regions; re-run `mixmag embed` on current tiling plans")
    table = RegionTable(store)
    if len(windows) == 0:
        return _nonempty(store_path, np.zeros((0, 0, store.dim), np.float16))
    regions = np.stack([table.take(table.window_rows(int(r), int(c), t)) for r, c in windows])
    if level is None:
        return regions
    names = list(store.embeddings)
    if level not in names:
        raise CohortError(f"{store_path}: no level {level!r} in the store (levels: {', '.join(names)})")
    offsets = level_offsets(t, len(names))
    i = names.index(level)
    return regions[:, offsets[i] : offsets[i + 1]]


def encoded_bag(encoded_path: Path, mode: str) -> np.ndarray:
    with h5py.File(encoded_path, "r") as f:
        data = f[mode][()]
    if mode == "patch":
        data = data.reshape(-1, data.shape[-1])
    return _nonempty(encoded_path, data)


def _nonempty(path: Path, bag: np.ndarray) -> np.ndarray:
    if bag.shape[0] == 0:
        raise CohortError(f"{path}: empty bag (no tissue regions); drop the slide from the cohort or re-tile it")
    if not np.isfinite(bag).all():
        raise CohortError(f"{path}: NaN or Inf embeddings; re-run `mixmag embed` for this slide")
    return bag


class BagCache:
    """Loads each slide's bag once (as float16 tensors) and keeps it."""

    def __init__(
        self, mode: str, stores: dict[str, Path], encoded_dir: Path | None = None, region_level: str | None = None
    ) -> None:
        self.mode = mode
        self.region_level = region_level
        self.stores = stores
        self.encoded_dir = encoded_dir
        self._bags: dict[str, torch.Tensor] = {}

    def __call__(self, slide: str) -> torch.Tensor:
        if slide not in self._bags:
            if self.mode in TILE_MODES:
                bag = tile_bag(self.stores[slide], self.mode)
            elif self.mode == "regions":
                bag = region_bag(self.stores[slide], self.region_level)
            elif self.mode in ("patch", "cls"):
                if self.encoded_dir is None:
                    raise CohortError("precomputed patch/cls bags need the folder written by `mixmag encode`")
                bag = encoded_bag(self.encoded_dir / f"{slide}.h5", self.mode)
            else:
                raise CohortError(f"unknown bag mode {self.mode!r}")
            self._bags[slide] = torch.from_numpy(np.asarray(bag, np.float16))
        return self._bags[slide]


def pad_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack bags of different lengths: (B, N_max, ...) zeros-padded, and the (B, N_max) mask of real items."""
    n = max(b.shape[0] for b in bags)
    out = torch.zeros((len(bags), n, *bags[0].shape[1:]), dtype=torch.float32)
    mask = torch.zeros((len(bags), n), dtype=torch.bool)
    for i, b in enumerate(bags):
        out[i, : b.shape[0]] = b.float()
        mask[i, : b.shape[0]] = True
    return out, mask
