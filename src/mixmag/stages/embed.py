"""The embedding stage: tiling plans -> one store per slide, on one process or many (torchrun).

Slides are sharded across ranks, balanced by cell count; each rank writes its own slides' stores.
A store is skipped when its provenance matches the plan, the encoder and its weights; otherwise it
is (re)written atomically, so a run killed midway restarts where it stopped.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from ..catalog import CatalogWriter
from ..devices import DistInfo, compute_dtype
from ..encoders.extract import SlideJob, embed_slides, tiles_per_cell
from ..encoders.model import TileEncoder
from ..errors import MixmagError, MixmagWarning, OptionError
from ..fileio import DiskFullError, FolderLock, RunLockedError, ensure_free_space
from ..slides.pyramids import ReadMode, read_mpps
from ..slides.tiling import PLAN_FILENAME, load_plan
from ..store import (
    StoreError,
    StoreHeader,
    plan_provenance,
    read_header,
    store_from_plan,
    store_path,
    store_problems,
    store_size_lower_bound,
    write_store,
)


class UnfinishedTilingWarning(MixmagWarning):
    """A tiling folder without its plan: the slide is skipped, and said so."""


class EmbedError(MixmagError):
    pass


@dataclass
class EmbedResult:
    slide_id: str
    outcome: str  # "embedded" | "skipped" | "failed"
    cells: int = 0
    error: str | None = None


def gather_results(results: list[EmbedResult], dist: DistInfo) -> list[EmbedResult]:
    """Every rank's outcomes, on rank 0 (other ranks get their own back), through torchrun's store.

    Shards never exchange tensors, so embedding starts no process group: a gloo group's worker
    threads could outlive the interpreter at exit and abort a rank that had finished its work.
    Ranks may finish hours apart, so rank 0 waits for days rather than a collective's 30 minutes."""
    if not dist.active:
        return results
    store, _, _ = next(torch.distributed.rendezvous("env://", rank=dist.rank, world_size=dist.world_size))
    store = torch.distributed.PrefixStore("mixmag-embed-results", store)
    store.set(str(dist.rank), json.dumps([asdict(r) for r in results]))
    if dist.rank != 0:
        return results
    keys = [str(r) for r in range(dist.world_size)]
    store.wait(keys, timedelta(days=7))
    return [EmbedResult(**row) for key in keys for row in json.loads(store.get(key))]


def find_plans(plans_dir: Path, slide_ids: list[str] | None = None) -> list[Path]:
    plans_dir = Path(plans_dir)
    if slide_ids is None:
        found = sorted(plans_dir.glob(f"*/{PLAN_FILENAME}"))
        unfinished = sorted(d.name for d in plans_dir.glob("*/") if d.is_dir() and not (d / PLAN_FILENAME).is_file())
        if unfinished:  # the plan is written last: its tiling was interrupted or failed
            warnings.warn(
                UnfinishedTilingWarning(
                    f"{plans_dir}: no {PLAN_FILENAME} in {len(unfinished)} slide folder(s) "
                    f"({', '.join(unfinished[:10])}): their tiling "
                    f"did not finish, so they are not embedded; run `mixmag tile` on them again"
                ),
                stacklevel=2,
            )
        if not found:
            raise EmbedError(
                f"{plans_dir}: no tiling plans (*/{PLAN_FILENAME}); run `mixmag tile --out {plans_dir}` first."
            )
        return found
    missing = [s for s in slide_ids if not (plans_dir / s / PLAN_FILENAME).is_file()]
    if missing:
        raise EmbedError(
            f"{plans_dir}: no tiling plan for {len(missing)} slide(s): {', '.join(missing[:10])}; tile them first."
        )
    return [plans_dir / s / PLAN_FILENAME for s in slide_ids]


def shard(sizes: list[int], world_size: int) -> list[list[int]]:
    """Greedy longest-first assignment of items to ranks by size; deterministic."""
    loads = [0] * world_size
    parts: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        parts[r].append(i)
        loads[r] += sizes[i]
    return [sorted(p) for p in parts]


def store_provenance(
    plan_path: Path, job: SlideJob, encoder: TileEncoder, mode: ReadMode, device: torch.device | None = None
) -> dict:
    return {
        "compute_dtype": compute_dtype(device or torch.device("cpu")),
        **plan_provenance(plan_path, job.plan),
        "read_mode": mode,
        "read_mpps": read_mpps(job.plan, mode),
        **encoder.provenance(),
    }


def store_is_current(path: Path, wanted: dict) -> bool:
    """The store was made from the same plan by the same encoder (weights, output, dimension) and read mode."""
    if not path.is_file():
        return False
    try:
        header = read_header(path)
    except (OSError, StoreError):
        return False
    return header.same_making(StoreHeader.from_attrs(wanted))


def check_read_mode(mode: str) -> None:
    """An unknown --read-mode is refused once, before any slide is read (not once per slide)."""
    if mode not in get_args(ReadMode):
        raise OptionError(f"--read-mode {mode}: unknown read mode; use {' or '.join(get_args(ReadMode))}")


def run_embed(
    plan_paths: list[Path],
    out_dir: Path,
    encoder: TileEncoder,
    *,
    device: torch.device,
    cells_per_batch: int = 8,
    workers: int = 2,
    mode: ReadMode = "derive",
    dist: DistInfo = DistInfo(),
    force: bool = False,
    on_batch: Callable[[int], None] | None = None,
    on_result: Callable[[EmbedResult], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> list[EmbedResult]:
    """Embed this rank's share of the plans into out_dir/<slide>.h5; returns this rank's results.
    `on_start(tiles)` gets the number of tiles to embed, `on_batch(tiles)` each batch's tiles once embedded.

    Each store is locked while it is made (`.<slide>.h5.lock`), not the folder: ranks of one run, or separate runs
    a user starts on parts of a cohort, share the folder; a slide another process is embedding is skipped here
    rather than made twice. A slide whose store cannot fit on the disk is refused before its tiles are embedded."""
    check_read_mode(mode)
    out_dir = Path(out_dir)
    plans, results = [], []
    for p in plan_paths:  # a plan is untrusted input: a damaged or forged one fails its slide alone (reported once)
        try:
            plans.append((p, load_plan(p)))
        except (OSError, ValueError) as exc:
            if dist.rank == 0:
                results.append(EmbedResult(Path(p).parent.name, "failed", 0, str(exc)))
                if on_result:
                    on_result(results[-1])
    mine = shard([len(plan.cells) for _, plan in plans], dist.world_size)[dist.rank]
    todo, provenance = [], {}

    def record(result: EmbedResult) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    for i in mine:
        path, plan = plans[i]
        job = SlideJob(plan.slide.slide_id, plan)
        wanted = store_provenance(path, job, encoder, mode, device)
        if not force and store_is_current(store_path(out_dir, job.slide_id), wanted):
            record(EmbedResult(job.slide_id, "skipped", job.n_cells))
            continue
        todo.append(job)
        provenance[job.slide_id] = wanted
    if on_start:  # the tiles to embed, the unit `on_batch` counts in
        on_start(sum(j.n_cells * tiles_per_cell(j.plan.params.n_levels) for j in todo))
    claims = StoreClaims(out_dir, force)

    def start(job: SlideJob) -> bool:
        refused = claims.claim(job, provenance[job.slide_id], encoder.dim)
        if refused is not None:
            record(refused)
        return refused is None

    def finish(job: SlideJob, levels: list[np.ndarray]) -> None:
        store = store_from_plan(job.plan, levels, provenance[job.slide_id])
        problems = store_problems(store)
        if problems:
            result = EmbedResult(
                job.slide_id,
                "failed",
                job.n_cells,
                f"{job.slide_id}: "
                + "; ".join(problems)
                + " - no store written. Check the slide and the encoder weights (on a GPU the encoder computes in "
                "bf16; --device cpu computes in fp32).",
            )
        else:
            try:
                written = write_store(store_path(out_dir, job.slide_id), store)
                result = EmbedResult(job.slide_id, "embedded", job.n_cells)
                _catalogue(catalog, written)
            except (OSError, MixmagError) as exc:  # a full disk fails this slide; a smaller store may still fit
                result = EmbedResult(job.slide_id, "failed", job.n_cells, f"{job.slide_id}: {exc}")
        claims.release(job.slide_id)
        record(result)

    def failed(job: SlideJob, error: str) -> None:
        claims.release(job.slide_id)
        record(
            EmbedResult(
                job.slide_id,
                "failed",
                job.n_cells,
                f"{error} - no store written; the other slides go on. "
                "Re-copy or re-export the slide, then re-run (finished stores are kept).",
            )
        )

    try:
        with CatalogWriter(out_dir) as catalog:  # this rank's own part of the folder's catalog (mixmag.catalog)
            embed_slides(
                todo,
                encoder,
                device=device,
                cells_per_batch=cells_per_batch,
                workers=workers,
                mode=mode,
                on_batch=on_batch,
                on_slide=finish,
                on_failed=failed,
                on_slide_start=start,
            )
    finally:
        claims.release_all()
    return results


def _catalogue(catalog: CatalogWriter, path: Path) -> None:
    """Record a landed store; a store the catalog could not record is found by the next refresh's folder scan."""
    try:
        catalog.record(path)
    except (OSError, MixmagError):
        pass


class StoreClaims:
    """The stores this process is making, each locked (`.<slide>.h5.lock`) from its first cells until it is written."""

    def __init__(self, out_dir: Path, force: bool) -> None:
        self.out_dir = out_dir
        self.force = force
        self.locks: dict[str, FolderLock] = {}

    def claim(self, job: SlideJob, wanted: dict, dim: int) -> EmbedResult | None:
        """None when this process may make the store; otherwise why not, as the slide's result."""
        target = store_path(self.out_dir, job.slide_id)
        lock = FolderLock(self.out_dir, f"embedding {job.slide_id}", name=f".{target.name}.lock")
        try:
            lock.acquire()
        except RunLockedError as exc:
            return EmbedResult(job.slide_id, "skipped", job.n_cells, f"{job.slide_id}: {exc}")
        except MixmagError as exc:  # a full disk, a lock that is a link or a FIFO: this slide fails, the batch goes on
            return EmbedResult(job.slide_id, "failed", job.n_cells, f"{job.slide_id}: {exc}")
        if not self.force and store_is_current(target, wanted):  # made by another process meanwhile
            lock.release()
            return EmbedResult(job.slide_id, "skipped", job.n_cells)
        try:
            ensure_free_space(target, store_size_lower_bound(job.n_cells, len(job.plan.levels.mpps), dim))
        except DiskFullError as exc:
            lock.release()
            return EmbedResult(job.slide_id, "failed", job.n_cells, f"{job.slide_id}: {exc}")
        self.locks[job.slide_id] = lock
        return None

    def release(self, slide_id: str) -> None:
        lock = self.locks.pop(slide_id, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for slide_id in list(self.locks):
            self.release(slide_id)
