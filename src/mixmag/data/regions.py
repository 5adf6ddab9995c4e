"""Region samples for pretraining, drawn from per-slide stores.

I/O is planned for very large corpora: an epoch visits slides in a seeded order, in chunks of
`pool` slides; each worker loads a chunk's stores once (one sequential read per store), draws
`per_slide` windows from each slide, shuffles them across the chunk's slides and cuts batches.
The whole stream is a function of (seed, epoch, rank, worker), so a run resumed at step N skips
the first N batches without reading them and continues on the same trajectory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..catalog import Catalog
from ..errors import ConfigError
from ..geometry import crop_indices, region_permutation, sequence_length, token_slots
from ..store import SlideStore, StoreError, read_index, read_store

SlideSampling = Literal["uniform", "regions"]


@dataclass(frozen=True)
class TokenTemplate:
    """For every token of a size x size window: its cell (row, col) in the window, tiles per cell
    at its level, sub-tile index and level; a window's table rows are then one vectorised formula."""

    cell_row: np.ndarray
    cell_col: np.ndarray
    per_cell: np.ndarray
    sub: np.ndarray
    level: np.ndarray

    @staticmethod
    def build(size: int, n_levels: int) -> TokenTemplate:
        fields: list[list] = [[], [], [], [], []]
        for level, r, c in token_slots(size, n_levels):
            per = 2**level
            for f, v in zip(fields, (r // per, c // per, per * per, (r % per) * per + c % per, level)):
                f.append(v)
        return TokenTemplate(*(np.asarray(f, np.int64) for f in fields))

    def permuted(self, order: Sequence[int] | np.ndarray) -> TokenTemplate:
        order = np.asarray(order)
        return TokenTemplate(
            self.cell_row[order], self.cell_col[order], self.per_cell[order], self.sub[order], self.level[order]
        )


class RegionTable:
    """One store's tiles as a single (sum_i N 4^i, D) table, so a region is one gather of s rows."""

    def __init__(self, store: SlideStore) -> None:
        self.store = store
        self.flat = torch.from_numpy(
            np.ascontiguousarray(np.concatenate([emb.reshape(-1, emb.shape[-1]) for emb in store.embeddings.values()]))
        )
        self.offsets = np.cumsum([0] + [emb.shape[0] * emb.shape[1] for emb in store.embeddings.values()])
        self.n_levels = len(store.embeddings)
        rc = store.rc.astype(np.int64).reshape(-1, 2)
        self.grid = np.full((rc[:, 0].max(initial=-1) + 1, rc[:, 1].max(initial=-1) + 1), -1, np.int64)
        self.grid[rc[:, 0], rc[:, 1]] = np.arange(len(rc))

    def window_rows(self, row: int, col: int, size: int, template: TokenTemplate | None = None) -> np.ndarray:
        """Table rows of the size x size window at (row, col), in region token order (or the template's)."""
        cells = self.grid[row : row + size, col : col + size]
        if cells.shape != (size, size) or (cells < 0).any():
            raise StoreError(
                f"{self.store.header.slide_id}: window ({row}, {col}) x {size} needs cells that are not in the store"
            )
        t = template or TokenTemplate.build(size, self.n_levels)
        return self.offsets[t.level] + cells[t.cell_row, t.cell_col] * t.per_cell + t.sub

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        index = torch.from_numpy(np.asarray(rows, np.int64))
        if out is None:
            return torch.index_select(self.flat, 0, index).numpy()
        torch.index_select(self.flat, 0, index, out=torch.from_numpy(out))
        return out


def assemble_region(store: SlideStore, row: int, col: int, size: int) -> np.ndarray:
    """(s(size, l), D) token sequence of the size x size window at (row, col): level 0's grid, then
    level 1's, ..., each row-major over the window."""
    table = RegionTable(store)
    return table.take(table.window_rows(row, col, size))


@dataclass(frozen=True)
class RegionSamplingConfig:
    t: int = 3
    context: int | None = None  # c for CMEM: two t x t crops from a c x c context
    per_slide: int = 16  # windows drawn from a slide each time it is visited
    pool: int = 8  # slides loaded together (shuffling spans them)
    batch_size: int = 64
    seed: int = 0
    augment: bool = True  # consistent rotation / flip of all levels
    # "uniform": every slide visited once an epoch; "regions": an epoch's visits drawn with replacement in proportion
    # to each slide's window count, so every window of the corpus is about equally likely, whatever its slide's size
    slide_sampling: SlideSampling = "uniform"

    def __post_init__(self) -> None:
        if self.context is not None and self.t > self.context:
            raise ConfigError(f"region size t = {self.t} is larger than the context c = {self.context}")
        if self.slide_sampling not in ("uniform", "regions"):
            raise ConfigError(f"slide_sampling is {self.slide_sampling!r}; use 'uniform' or 'regions'")


@dataclass(frozen=True)
class StoreEntry:
    path: Path | str  # a str from the catalog (cheaper by far for a million entries)
    n_windows: int


def index_stores(paths: Sequence[Path], config: RegionSamplingConfig) -> tuple[list[StoreEntry], int, int]:
    """Read every store's header and window list (not its embeddings): usable slides, D and levels."""
    size = config.context or config.t
    kind = "contexts" if config.context else "regions"
    entries, dims, levels = [], set(), set()
    for path in paths:
        index = read_index(path)  # a forged or damaged header is refused before any array is read
        header = index.header
        want = header.context_size if config.context else header.region_size
        n = index.windows[kind].shape[0] if kind in index.windows else 0
        dims.add(index.dim)
        levels.add(len(index.level_names))
        if n and want != size:
            raise ConfigError(
                f"{path}: its {kind} are {want} x {want} cells but the run asks for {size} x {size}; "
                f"re-tile with --region-size/--context-size {size} or change the config"
            )
        if n:
            entries.append(StoreEntry(Path(path), int(n)))
    return _usable(entries, dims, levels, config)


def catalog_stores(catalog: Catalog, config: RegionSamplingConfig) -> tuple[list[StoreEntry], int, int]:
    """index_stores from a catalog: the same checks, no store opened (a million stores start in seconds)."""
    size = config.context or config.t
    kind = "contexts" if config.context else "regions"
    entries, dims, levels, wrong = [], set(), set(), []
    parsed: dict[str, dict] = {}  # a corpus has a handful of distinct settings strings
    for e in catalog.entries:
        n = getattr(e, kind)
        if not n:
            continue
        want = (parsed.get(e.settings) or parsed.setdefault(e.settings, json.loads(e.settings))).get(
            "context_size" if config.context else "region_size"
        )
        if want != size:
            wrong.append((e.path, want))
            continue
        dims.add(e.dim)
        levels.add(e.levels)
        entries.append(StoreEntry(catalog.path_text(e), int(n)))
    if wrong:
        path, want = wrong[0]
        raise ConfigError(
            f"{catalog.folder / path} (and {len(wrong) - 1} more): its {kind} are {want} x {want} cells but the run "
            f"asks for {size} x {size}; re-tile with --region-size/--context-size {size} or change the config"
        )
    return _usable(entries, dims, levels, config)


class RegionStream(IterableDataset):
    """Yields batches: x (B, s, D) float16 (and x_prime for CMEM), forever, epoch after epoch.
    Batches live in a ring of reused buffers (see BufferRing): copy one to keep it for long."""

    def __init__(
        self,
        entries: list[StoreEntry],
        n_levels: int,
        config: RegionSamplingConfig,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        self.entries = entries
        self.n_levels = n_levels
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self._buffers = BufferRing()

    def chunks(self, epoch: int) -> list[list[int]]:
        """This rank's chunks of slide indices for an epoch (a seeded permutation, dealt round-robin)."""
        rng = np.random.default_rng([self.config.seed, epoch])
        if self.config.slide_sampling == "regions":
            counts = np.fromiter((e.n_windows for e in self.entries), np.float64, len(self.entries))
            order = rng.choice(len(self.entries), size=len(self.entries), replace=True, p=counts / counts.sum())
        else:
            order = rng.permutation(len(self.entries))
        pool = self.config.pool
        all_chunks = [order[i : i + pool].tolist() for i in range(0, len(order), pool)]
        return all_chunks[self.rank :: self.world_size]

    def batches_in_chunk(self, chunk: list[int]) -> int:
        return len(chunk) * self.config.per_slide // self.config.batch_size

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader takes batches from its workers in turn, always starting with worker 0; so that
        # batch `start_batch` comes first, worker w plays the part of stream v = (w + start) mod W,
        # which makes the batches v, v + W, v + 2W, ... of the rank's stream.
        worker = (worker + self.start_batch) % n_workers
        skip = _batches_before(self.start_batch, worker, n_workers)
        epoch = 0
        while True:
            chunks = self.chunks(epoch)
            if not any(self.batches_in_chunk(c) for c in chunks):
                raise ConfigError(
                    "batch size is larger than a chunk's samples: lower batch_size or raise per_slide/pool"
                )
            for ci, chunk in enumerate(chunks):
                if ci % n_workers != worker:
                    continue
                n = self.batches_in_chunk(chunk)
                if skip >= n:
                    skip -= n
                    continue
                yield from self._chunk_batches(epoch, ci, chunk, first=skip)
                skip = 0
            epoch += 1

    def _chunk_batches(self, epoch: int, ci: int, chunk: list[int], first: int) -> Iterator[dict]:
        c = self.config
        rng = np.random.default_rng([c.seed, epoch, self.rank, ci])
        # a slide drawn twice into one chunk (slide_sampling "regions") is read once
        loaded = {i: read_store(self.entries[i].path, validate=False) for i in dict.fromkeys(chunk)}
        stores = [loaded[i] for i in chunk]
        kind = "contexts" if c.context else "regions"
        size = c.context or c.t
        samples = []
        for k, store in enumerate(stores):
            n = store.windows[kind].shape[0]
            samples += [(k, int(w)) for w in rng.integers(0, n, c.per_slide)]
        rng.shuffle(samples)
        made = {i: RegionTable(store) for i, store in loaded.items()}
        tables = [made[i] for i in chunk]
        s_len = sequence_length(c.t, self.n_levels)
        views = _view_templates(c.t, self.n_levels, c.context)
        n_batches = self.batches_in_chunk(chunk)
        for b in range(n_batches):
            picked = samples[b * c.batch_size : (b + 1) * c.batch_size]
            rot = rng.integers(0, 4, (len(picked), 2)) if c.augment else np.zeros((len(picked), 2), int)
            flips = rng.integers(0, 2, (len(picked), 2)) if c.augment else np.zeros((len(picked), 2), int)
            offsets = rng.integers(0, size - c.t + 1, (len(picked), 4)) if c.context else None
            if b < first:
                continue  # resumed: the draws above keep the stream identical, the tensors are not built
            x_tensor = self._buffers.next((len(picked), s_len, stores[0].dim))
            xp_tensor = self._buffers.next(tuple(x_tensor.shape)) if c.context else None
            x = x_tensor.numpy()
            xp = xp_tensor.numpy() if xp_tensor is not None else None
            for i, (k, w) in enumerate(picked):
                row, col = (int(v) for v in stores[k].windows[kind][w])
                if c.context:
                    for view, out, o in ((0, x, offsets[i, :2]), (1, xp, offsets[i, 2:])):
                        template = views[(int(o[0]), int(o[1]), int(rot[i, view]), int(flips[i, view]))]
                        tables[k].take(tables[k].window_rows(row, col, size, template), out=out[i])
                else:
                    template = views[(0, 0, int(rot[i, 0]), int(flips[i, 0]))]
                    tables[k].take(tables[k].window_rows(row, col, size, template), out=x[i])
            batch = {"x": x_tensor}
            if xp_tensor is not None:
                batch["x_prime"] = xp_tensor
            yield batch


def _usable(
    entries: list[StoreEntry], dims: set[int], levels: set[int], config: RegionSamplingConfig
) -> tuple[list[StoreEntry], int, int]:
    """The checks index_stores and catalog_stores share: some store usable, one D and one level count."""
    size = config.context or config.t
    if not entries:
        kind = "contexts" if config.context else "regions"
        raise ConfigError(
            f"no store holds {size} x {size} {kind}"
            + (" (tile with --context-size c for CMEM)" if config.context else "")
        )
    if len(dims) > 1 or len(levels) > 1:
        raise ConfigError(f"stores disagree: embedding dims {sorted(dims)}, level counts {sorted(levels)}")
    return entries, dims.pop(), levels.pop()


def _view_templates(t: int, n_levels: int, context: int | None) -> dict[tuple[int, int, int, int], TokenTemplate]:
    """Template of every (crop row, crop col, rotation, flip) view: the t x t crop of the window
    (the window itself for MEM), turned; composing index maps once spares per-sample work."""
    size = context or t
    base = TokenTemplate.build(size, n_levels)
    out = {}
    for r0 in range(size - t + 1):
        for c0 in range(size - t + 1):
            crop = np.asarray(crop_indices(size, t, n_levels, r0, c0))
            for rot in range(4):
                for flip in (0, 1):
                    out[(r0, c0, rot, flip)] = base.permuted(crop[region_permutation(t, n_levels, rot, bool(flip))])
    return out


class BufferRing:
    """Batch buffers reused round-robin. A fresh 100+ MB buffer per batch costs more in page faults
    than filling it; in a DataLoader worker the buffers live in shared memory, so a batch reaches the
    training process as a handle. `depth` must exceed the batches in flight (prefetch + 3)."""

    def __init__(self, depth: int = 12) -> None:
        self.depth = depth
        self.buffers: dict[tuple, list[torch.Tensor]] = {}
        self.turn: dict[tuple, int] = {}

    def next(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A buffer to fill through `.numpy()` and to yield as the tensor itself (a tensor made anew
        from the numpy view would not be recognised as shared and would be copied on hand-over)."""
        ring = self.buffers.setdefault(tuple(shape), [])
        if len(ring) < self.depth:
            tensor = torch.empty(shape, dtype=torch.float16)
            if get_worker_info() is not None:
                tensor.share_memory_()
            ring.append(tensor)
            return tensor
        k = self.turn.get(tuple(shape), 0)
        self.turn[tuple(shape)] = (k + 1) % self.depth
        return ring[k]


def _batches_before(start: int, worker: int, n_workers: int) -> int:
    """How many of worker w's batches fall among the first `start` batches of the round-robin stream."""
    return max(0, (start - worker + n_workers - 1) // n_workers)
