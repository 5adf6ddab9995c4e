"""Bags of instances per slide, for slide-level models.

Modes: one level's tile embeddings ("5x", "10x", "20x"); all levels along the sequence ("all");
regions for a mixer ("regions": (R, s, D) tokens of the non-overlapping accepted t x t regions);
or precomputed mixer outputs ("patch": R * s contextualized tokens, "cls": R compressed embeddings)
written by `mixmag encode`.

At cohort scale (docs/scale.md) bags stream from the stores: `BagCache` keeps the recently used ones up to a byte
budget, and `plan_micro_batches` splits a step whose padded batch would not fit its own budget.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch

from ..devices import core_left_for_reading
from ..errors import CohortError
from ..fileio import open_hdf5
from ..geometry import level_offsets
from ..models.padding import pad_bags as pad_bags  # re-exported: bags are padded where they are made
from ..models.padding import padded_bytes
from ..store import StoreError, all_finite, read_index, read_store
from .regions import RegionTable

TILE_MODES = ("5x", "10x", "20x", "all")
BagMode = Literal["5x", "10x", "20x", "all", "patch", "cls", "regions"]
DEFAULT_CACHE_MB = 1024  # bags kept between steps: ~33 20x bags of TCGA-size slides (~31 MB each, float16)
DEFAULT_READ_AHEAD = 4  # bags read in a background thread ahead of their use: ~one micro-batch of real-size slides
DEFAULT_MICRO_BATCH_MB = 256  # padded float32 batch of one forward/backward: ~3 all-x bags of ~750-cell slides


def tile_bag(store_path: Path, mode: str) -> np.ndarray:
    """(N 4^i, D) tiles of one level (only that level's dataset is read), or of every level ("all")."""
    store = read_store(store_path, levels=None if mode == "all" else [mode])
    if mode == "all":
        bag = np.concatenate([emb.reshape(-1, emb.shape[-1]) for emb in store.embeddings.values()])
    elif mode in store.embeddings:
        emb = store.embeddings[mode]
        bag = emb.reshape(-1, emb.shape[-1])
    else:
        names = store.header.level_names or []
        raise CohortError(f"{store_path}: no level {mode!r} in the store (levels: {', '.join(names)})")
    return _nonempty(store_path, bag)


def region_bag(store_path: Path, level: str | None = None) -> np.ndarray:
    """(R, s, D): the store's accepted regions (the tiler's non-overlapping t x t windows); with
    `level`, only that level's (t 2^i)^2 tokens of each region (for single-magnification mixers)."""
    store = read_store(store_path)
    windows = store.windows.get("regions")
    t = store.header.region_size or 0
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
    with _encoded(encoded_path, mode) as data:
        data = data[()]
    if mode == "patch":
        data = data.reshape(-1, data.shape[-1])
    return _finite(encoded_path, _nonempty(encoded_path, data))


@contextmanager
def _encoded(encoded_path: Path, mode: str) -> Iterator[h5py.Dataset]:
    """The `patch` or `cls` dataset of a `mixmag encode` file, its shape and dtype checked before it is read."""
    try:
        with open_hdf5(encoded_path) as f:
            data = f.get(mode)
            if not isinstance(data, h5py.Dataset) or data.dtype.kind != "f" or not 2 <= data.ndim <= 3:
                raise CohortError(
                    f"{encoded_path}: no float {mode!r} array of 2 or 3 dimensions; re-run `mixmag encode` for it"
                )
            yield data
    except OSError as exc:
        raise CohortError(f"{encoded_path}: not readable ({exc}); re-run `mixmag encode` for this slide") from exc


def _nonempty(path: Path, bag: np.ndarray) -> np.ndarray:
    """Bags from stores need no finiteness check here: read_store has made it on every level it read."""
    if bag.shape[0] == 0:
        raise CohortError(f"{path}: empty bag (no tissue regions); drop the slide from the cohort or re-tile it")
    return bag


def _finite(path: Path, bag: np.ndarray) -> np.ndarray:
    if not all_finite(bag):
        raise CohortError(f"{path}: NaN or Inf embeddings; re-run `mixmag embed` for this slide")
    return bag


def bag_shape(store_path: Path, mode: str, region_level: str | None = None) -> tuple[int, ...]:
    """The shape of a slide's bag from its store's header and cell / window lists alone (no embedding is read):
    what a step needs to plan its micro-batches before loading any bag."""
    index = read_index(store_path)
    cells, names = len(index.rc), index.level_names
    if mode == "all":
        return (cells * sum(4**i for i in range(len(names))), index.dim)
    if mode in TILE_MODES:
        if mode not in names:
            raise CohortError(f"{store_path}: no level {mode!r} in the store (levels: {', '.join(names)})")
        return (cells * 4 ** names.index(mode), index.dim)
    t = index.header.region_size or 0
    offsets = level_offsets(t, len(names))
    tokens = offsets[-1]
    if region_level is not None:
        if region_level not in names:
            raise CohortError(f"{store_path}: no level {region_level!r} in the store (levels: {', '.join(names)})")
        tokens = offsets[names.index(region_level) + 1] - offsets[names.index(region_level)]
    return (len(index.windows.get("regions", ())), tokens, index.dim)


class BagCache:
    """Each slide's bag (float16 tensor), read from its store when asked and kept while the kept bags fit
    `budget_bytes`; past it the least recently used are dropped (read again when next asked). A bag larger than the
    budget is returned and not kept. Memory is then bounded whatever the cohort size: budget + the bags in use + the
    `read_ahead` bags being read.

    Read-ahead: a caller that knows the order in which it will ask for bags says so (`expect`); the next
    `read_ahead` bags of that order that are not kept are then read in a background thread while the caller computes
    (h5py and numpy release the GIL while they read and check). A bag read ahead is the bag read when asked, and a
    read that failed raises when its slide is asked for, as a read made then would."""

    def __init__(
        self,
        mode: str,
        stores: dict[str, Path],
        encoded_dir: Path | None = None,
        region_level: str | None = None,
        budget_bytes: int = DEFAULT_CACHE_MB << 20,
        read_ahead: int = DEFAULT_READ_AHEAD,
    ) -> None:
        self.mode = mode
        self.region_level = region_level
        self.stores = stores
        self.encoded_dir = encoded_dir
        self.budget_bytes = budget_bytes
        self.read_ahead = read_ahead
        self.kept_bytes = 0
        self.reads = 0  # bags read from disk (a cache miss each)
        self._bags: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._expected: deque[str] = deque()
        self._pending: dict[str, Future[torch.Tensor]] = {}
        self._reader: ThreadPoolExecutor | None = None

    def __call__(self, slide: str) -> torch.Tensor:
        if slide in islice(self._expected, 64):  # asked as expected; slides skipped before it are passed over
            while (passed := self._expected.popleft()) != slide:
                if passed in self._pending:
                    self._pending.pop(passed).cancel()
        bag = self._bags.get(slide)
        if bag is not None:
            self._bags.move_to_end(slide)
            self._start_reads()
            return bag
        pending = self._pending.pop(slide, None)
        self._start_reads()
        bag = pending.result() if pending is not None else self._load(slide)
        self.reads += 1
        self._shapes[slide] = tuple(bag.shape)
        size = bag.numel() * bag.element_size()
        if size <= self.budget_bytes:
            while self._bags and self.kept_bytes + size > self.budget_bytes:
                _, dropped = self._bags.popitem(last=False)
                self.kept_bytes -= dropped.numel() * dropped.element_size()
            self._bags[slide] = bag
            self.kept_bytes += size
        return bag

    def expect(self, slides: Iterable[str]) -> int:
        """The slides about to be asked for, in order (replacing any order given before): reading ahead starts.
        Returns how many of them are not kept now (0: nothing to read, as when a small cohort is kept whole)."""
        self._expected = deque(slides)
        upcoming = self._upcoming()
        for slide in [s for s in self._pending if s not in upcoming]:
            self._pending.pop(slide).cancel()  # read ahead for an order no longer expected: dropped
        self._start_reads(upcoming)
        return sum(slide not in self._bags for slide in set(self._expected))

    @contextmanager
    def reading_ahead(self, slides: Iterable[str], device: torch.device) -> Iterator[None]:
        """`expect(slides)` for the work inside, with a core left to the reader while there are bags to read on the
        CPU (`core_left_for_reading`)."""
        to_read = self.expect(slides)
        with core_left_for_reading(device, to_read > 0 and self.read_ahead > 0):
            yield

    def _upcoming(self) -> list[str]:
        """The next `read_ahead` expected slides that are not kept (a small window: at most 64 looked at)."""
        out: list[str] = []
        for slide in islice(self._expected, 64):
            if len(out) == self.read_ahead:
                break
            if slide not in self._bags and slide not in out:
                out.append(slide)
        return out

    def _start_reads(self, upcoming: list[str] | None = None) -> None:
        if self.read_ahead <= 0:
            return
        for slide in self._upcoming() if upcoming is None else upcoming:
            if slide not in self._pending:
                if self._reader is None:
                    self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixmag-bags")
                self._pending[slide] = self._reader.submit(self._load, slide)

    def _load(self, slide: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._read(slide), np.float16))

    def _read(self, slide: str) -> np.ndarray:
        if self.mode in TILE_MODES:
            return tile_bag(self.stores[slide], self.mode)
        if self.mode == "regions":
            return region_bag(self.stores[slide], self.region_level)
        if self.mode in ("patch", "cls"):
            if self.encoded_dir is None:
                raise CohortError("precomputed patch/cls bags need the folder written by `mixmag encode`")
            return encoded_bag(self.encoded_dir / f"{slide}.h5", self.mode)
        raise CohortError(f"unknown bag mode {self.mode!r}")

    def shape(self, slide: str) -> tuple[int, ...]:
        """The slide's bag shape without reading its embeddings (remembered: a few integers a slide)."""
        if slide not in self._shapes:
            if self.mode in ("patch", "cls"):
                self._shapes[slide] = self._encoded_shape(slide)
            else:
                try:
                    self._shapes[slide] = bag_shape(self.stores[slide], self.mode, self.region_level)
                except StoreError as exc:
                    raise CohortError(str(exc)) from exc
        return self._shapes[slide]

    def _encoded_shape(self, slide: str) -> tuple[int, ...]:
        if self.encoded_dir is None:
            raise CohortError("precomputed patch/cls bags need the folder written by `mixmag encode`")
        with _encoded(self.encoded_dir / f"{slide}.h5", self.mode) as data:
            shape = tuple(int(v) for v in data.shape)
        return (math.prod(shape[:-1]), shape[-1]) if self.mode == "patch" else shape


def plan_micro_batches(groups: Sequence[Sequence[int]], item_bytes: int, budget_bytes: int) -> list[list[int]]:
    """Split a step's groups (a specimen's slides' bag lengths each) into micro-batches whose padded float32 batch
    (slides x longest bag x item_bytes) fits `budget_bytes`; indices into `groups`.

    The rule: when the whole step fits, one micro-batch of every group in its own order (training is then exactly as
    without micro-batches); otherwise groups sorted by their longest bag, longest first, packed greedily, so that
    bags of like length are padded together. A group is never split (a specimen's loss is the minimum over its
    slides); a group over the budget on its own is a micro-batch of its own."""
    everything = list(range(len(groups)))
    if padded_bytes([n for g in groups for n in g], item_bytes) <= budget_bytes:
        return [everything]
    out: list[list[int]] = []
    current: list[int] = []
    slides = longest = 0
    for i in sorted(everything, key=lambda k: -max(groups[k])):
        k, m = len(groups[i]), max(groups[i])
        if current and (slides + k) * max(longest, m) * item_bytes > budget_bytes:
            out.append(current)
            current, slides, longest = [], 0, 0
        current.append(i)
        slides, longest = slides + k, max(longest, m)
    out.append(current)
    return out
