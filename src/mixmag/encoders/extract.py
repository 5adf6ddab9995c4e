"""Batched tile embedding: DataLoader workers read and derive cell pyramids, the model embeds them.

Workers return uint8 tiles (4x less to move than float); the encoder's device transform resizes and
normalises on the GPU. A batch never spans two slides, so a slide's embeddings do not depend on
which other slides share the run (a 2-rank run gives the same bits as a 1-rank run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..devices import embedding_autocast, keep_freed_memory
from ..errors import MixmagError
from ..slides.pyramids import ReadMode, read_pyramid
from ..slides.reader import Slide
from ..slides.tiling import TilingPlan
from .model import TileEncoder


@dataclass
class SlideJob:
    slide_id: str
    plan: TilingPlan

    @property
    def n_cells(self) -> int:
        return len(self.plan.cells)


class CellTiles(Dataset):
    """Item i -> (slide index, cell index, uint8 tiles (sum_i 4^i, tile, tile, 3), None), levels coarsest
    first; (slide index, cell index, None, error) when the slide cannot be read there, so one corrupt
    slide fails alone. After a failure this worker skips the rest of that slide."""

    def __init__(self, jobs: Sequence[SlideJob], mode: ReadMode = "derive", max_open: int = 2) -> None:
        self.jobs = list(jobs)
        self.mode = mode
        self.max_open = max_open
        self.starts = np.cumsum([0] + [j.n_cells for j in self.jobs])
        self._open: dict[int, Slide] = {}  # per worker process
        self._failed: dict[int, str] = {}  # per worker process

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        j = int(np.searchsorted(self.starts, index, side="right") - 1)
        return j, int(index - self.starts[j])

    def __getitem__(self, index: int):
        j, k = self.locate(index)
        if j in self._failed:
            return j, k, None, self._failed[j]
        plan = self.jobs[j].plan
        row, col = plan.cells[k]
        try:
            pyramid = read_pyramid(
                self._slide(j), plan.grid, plan.levels, row, col, mode=self.mode, **plan.params.read_options
            )
        except Exception as exc:  # noqa: BLE001 - any reader or decoder failure belongs to this slide only
            self._failed[j] = (
                str(exc)
                if isinstance(exc, MixmagError)
                else f"{plan.slide.path}: cell ({row}, {col}): {type(exc).__name__}: {exc}"
            )
            return j, k, None, self._failed[j]
        return j, k, torch.from_numpy(pyramid.stacked()), None

    def _slide(self, j: int) -> Slide:
        if j not in self._open:
            while len(self._open) >= self.max_open:
                self._open.pop(next(iter(self._open))).close()
            self._open[j] = self.jobs[j].plan.open_slide()
        return self._open[j]


class PerSlideBatches(Sampler[list[int]]):
    """Batches of up to `cells` consecutive cells of one slide; slides in order."""

    def __init__(self, dataset: CellTiles, cells: int) -> None:
        self.dataset = dataset
        self.cells = max(1, cells)

    def __iter__(self) -> Iterator[list[int]]:
        for j in range(len(self.dataset.jobs)):
            start, stop = int(self.dataset.starts[j]), int(self.dataset.starts[j + 1])
            for b in range(start, stop, self.cells):
                yield list(range(b, min(b + self.cells, stop)))

    def __len__(self) -> int:
        return sum(math.ceil(j.n_cells / self.cells) for j in self.dataset.jobs)


def collate(items):
    """(slide indices, cell indices, tiles, None), or (..., None, error) when a cell could not be read."""
    jobs = torch.tensor([i[0] for i in items])
    cells = torch.tensor([i[1] for i in items])
    error = next((i[3] for i in items if i[3] is not None), None)
    if error is not None:
        return jobs, cells, None, error
    parts = [i[2] for i in items]
    tiles = torch.empty((sum(p.shape[0] for p in parts), *parts[0].shape[1:]), dtype=parts[0].dtype)
    if get_worker_info() is not None:
        tiles.share_memory_()  # built in shared memory, the batch reaches the main process without a copy
    return jobs, cells, torch.cat(parts, out=tiles), None


class SlideEmbeddings:
    """Accumulates one slide's embeddings, level by level, until every cell is in."""

    def __init__(self, n_cells: int, n_levels: int, dim: int) -> None:
        self.levels = [np.zeros((n_cells, 4**i, dim), np.float32) for i in range(n_levels)]
        self.filled = 0
        self.n_cells = n_cells

    def add(self, cells: np.ndarray, emb: np.ndarray) -> None:
        offset = 0
        for level in self.levels:
            per = level.shape[1]
            level[cells] = emb[:, offset : offset + per]
            offset += per
        self.filled += len(cells)

    @property
    def complete(self) -> bool:
        return self.filled >= self.n_cells


def embed_slides(
    jobs: Sequence[SlideJob],
    encoder: TileEncoder,
    *,
    device: torch.device,
    cells_per_batch: int = 8,
    workers: int = 2,
    mode: ReadMode = "derive",
    on_batch: Callable[[int], None] | None = None,
    on_slide: Callable[[SlideJob, list[np.ndarray]], None] | None = None,
    on_failed: Callable[[SlideJob, str], None] | None = None,
    on_slide_start: Callable[[SlideJob], bool] | None = None,
) -> None:
    """Embed every cell of every job; `on_batch(tiles)` counts each batch's tiles once the encoder has run on them
    (or their slide was dropped), so a progress bar moves with the work; `on_slide(job, levels)` gets each slide's
    arrays when complete,
    `on_failed(job, error)` each slide that could not be read (the others go on). `on_slide_start(job)` is asked when
    a slide's first cells arrive; False drops that slide (another process has it, or its output cannot fit)."""
    jobs = list(jobs)
    n_levels = {j.plan.params.n_levels for j in jobs}
    if len(n_levels) > 1:
        raise ValueError(f"plans disagree on the number of levels: {sorted(n_levels)}")
    pending: dict = {}
    for job in jobs:
        if job.n_cells == 0 and on_slide is not None and (on_slide_start is None or on_slide_start(job)):
            on_slide(job, [np.zeros((0, 4**i, encoder.dim), np.float32) for i in range(job.plan.params.n_levels)])
    work = [j for j in jobs if j.n_cells]
    if not work:
        return
    if device.type == "cpu":
        keep_freed_memory()  # a CPU batch's large intermediates are reused, not zero-filled again by the kernel
    dataset = CellTiles(work, mode)
    loader = DataLoader(
        dataset,
        batch_sampler=PerSlideBatches(dataset, cells_per_batch),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        multiprocessing_context="fork" if workers and _fork_ok() else None,
    )
    autocast = embedding_autocast(device)
    per_cell = tiles_per_cell(next(iter(n_levels)))
    with torch.inference_mode():
        failed: set[int] = set()
        for job_idx, cell_idx, tiles, error in loader:
            j = int(job_idx[0])
            done = len(cell_idx) * per_cell  # tiles this batch settles: embedded, or dropped with its slide
            if j in failed:
                _count(on_batch, done)
                continue
            if error is not None:
                failed.add(j)
                pending.pop(j, None)
                if on_failed is not None:
                    on_failed(work[j], error)
                _count(on_batch, done)
                continue
            if j not in pending and on_slide_start is not None and not on_slide_start(work[j]):
                failed.add(j)
                _count(on_batch, done)
                continue
            with autocast:
                emb = encoder(tiles.to(device, non_blocking=True))
            emb = emb.float().cpu().numpy().reshape(len(cell_idx), per_cell, -1)
            _count(on_batch, done)  # after the encoder ran: the count is work done, not cells loaded
            acc = pending.setdefault(j, SlideEmbeddings(work[j].n_cells, len(work[j].plan.levels.mpps), emb.shape[-1]))
            acc.add(cell_idx.numpy(), emb)
            if acc.complete:
                del pending[j]
                if on_slide is not None:
                    on_slide(work[j], acc.levels)


def tiles_per_cell(n_levels: int) -> int:
    """Tiles one cell holds over its levels (1 + 4 + 16 = 21 with three)."""
    return sum(4**i for i in range(n_levels))


def _count(on_batch: Callable[[int], None] | None, tiles: int) -> None:
    if on_batch is not None:
        on_batch(tiles)


def _fork_ok() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()
