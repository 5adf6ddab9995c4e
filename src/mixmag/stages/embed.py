"""The embedding stage: tiling plans -> one store per slide, on one process or many (torchrun).

Slides are sharded across ranks, balanced by cell count; each rank writes its own slides' stores.
A store is skipped when its provenance matches the plan, the encoder and its weights; otherwise it
is (re)written atomically, so a run killed midway restarts where it stopped.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal, cast, get_args

import numpy as np
import torch

from ..catalog import CatalogWriter, refresh_catalog
from ..claims import DEFAULT_TIMEOUT, SlideClaims, TakeoverHook
from ..devices import DistInfo, compute_dtype, start_distributed
from ..encoders.extract import SlideJob, embed_slides, tiles_per_cell
from ..encoders.model import TileEncoder, build_encoder
from ..encoders.registry import OutputMode, unseen_levels_note
from ..errors import MixmagError, MixmagWarning, OptionError
from ..fileio import DiskFullError, ensure_free_space, remove_stale_partials
from ..slide_state import add_to_cohort, write_state
from ..slides.pyramids import ReadMode, read_mpps
from ..slides.sources import slide_ids_from_table
from ..slides.tiling import PLAN_FILENAME, TilingPlan, load_plan
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
from ..workers import Worker, balanced_part, balanced_parts, resolve_shard

STAGE = "embed"


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
        folders = [d for d in plans_dir.glob("*/") if d.is_dir()]
        # a plan.json that is there but is a FIFO, a folder, a device or a dangling link is found, so that reading it
        # names the file and what it is; only a folder without one is unfinished
        found = sorted(
            {*plans_dir.glob(f"*/{PLAN_FILENAME}"), *(p for d in folders if os.path.lexists(p := d / PLAN_FILENAME))}
        )
        unfinished = sorted(  # hidden folders are mixmag's machinery (.mixmag/: claims and state records)
            d.name for d in folders if not d.name.startswith(".") and not os.path.lexists(d / PLAN_FILENAME)
        )
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
    missing = [s for s in slide_ids if not os.path.lexists(plans_dir / s / PLAN_FILENAME)]  # a FIFO: said on read
    if missing:
        raise EmbedError(
            f"{plans_dir}: no tiling plan for {len(missing)} slide(s): {', '.join(missing[:10])}; tile them first."
        )
    return [plans_dir / s / PLAN_FILENAME for s in slide_ids]


def shard(sizes: list[int], world_size: int) -> list[list[int]]:
    """Greedy longest-first assignment of slides to workers (shards x ranks) by cell count; deterministic."""
    return balanced_parts(sizes, world_size)


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


def check_read_mode(mode: str) -> ReadMode:
    """An unknown --read-mode is refused once, before any slide is read (not once per slide)."""
    if mode not in get_args(ReadMode):
        raise OptionError(f"--read-mode {mode}: unknown read mode; use {' or '.join(get_args(ReadMode))}")
    return cast(ReadMode, mode)


def run_embed(
    plan_paths: list[Path],
    out_dir: Path,
    encoder: TileEncoder,
    *,
    device: torch.device,
    cells_per_batch: int = 8,
    workers: int = 2,
    mode: ReadMode | str = "derive",
    dist: DistInfo = DistInfo(),
    worker: Worker | None = None,
    force: bool = False,
    claim_timeout: float = DEFAULT_TIMEOUT,
    on_batch: Callable[[int], None] | None = None,
    on_result: Callable[[EmbedResult], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_takeover: TakeoverHook | None = None,
) -> list[EmbedResult]:
    """Embed this worker's share of the plans into out_dir/<slide>.h5; returns this worker's results.
    `on_start(tiles)` gets the number of tiles to embed, `on_batch(tiles)` each batch's tiles once embedded.

    The share: slides balanced by cell count over every worker, shards (`--shard`, a Slurm array) times torchrun
    ranks (`worker`; `dist` alone for ranks only). Each slide is claimed while it is made (`mixmag.claims`, a claim
    file under `out_dir/.mixmag/embed/`), so workers that overlap never make one store twice, and a dead worker's
    claims are taken over by the next run; each finished slide gets a state record there (`mixmag.slide_state`).
    A slide whose store cannot fit on the disk is refused before its tiles are embedded."""
    mode = check_read_mode(mode)
    worker = worker or Worker(dist=dist)
    out_dir = Path(out_dir)
    session = _EmbedSession(out_dir, encoder.dim, on_result)
    plans = _load_plans(plan_paths, worker, session)
    mine = balanced_part([len(plan.cells) for _, plan in plans], worker.slots, worker.slot)
    session.claims = StoreClaims(out_dir, force, worker, timeout=claim_timeout, on_takeover=on_takeover)
    add_to_cohort(out_dir, STAGE, [plan.slide.slide_id for _, plan in plans])
    todo = []
    for i in mine:
        path, plan = plans[i]
        job = SlideJob(plan.slide.slide_id, plan)
        wanted = store_provenance(path, job, encoder, mode, device)
        if not force and store_is_current(store_path(out_dir, job.slide_id), wanted):
            session.claims.note_current(job.slide_id)
            session.record(EmbedResult(job.slide_id, "skipped", job.n_cells))
            continue
        todo.append(job)
        session.provenance[job.slide_id] = wanted
    if on_start:  # the tiles to embed, the unit `on_batch` counts in
        on_start(sum(j.n_cells * tiles_per_cell(j.plan.params.n_levels) for j in todo))
    try:
        with CatalogWriter(out_dir) as catalog:  # this worker's own part of the folder's catalog (mixmag.catalog)
            session.catalog = catalog
            embed_slides(
                todo,
                encoder,
                device=device,
                cells_per_batch=cells_per_batch,
                workers=workers,
                mode=mode,
                on_batch=on_batch,
                on_slide=session.finish,
                on_failed=session.failed,
                on_slide_start=session.start,
            )
    finally:
        session.claims.release_all()
    return session.results


def _load_plans(plan_paths: list[Path], worker: Worker, session: _EmbedSession) -> list[tuple[Path, TilingPlan]]:
    """The plans that load; a plan is untrusted input: a damaged or forged one fails its slide alone (reported once,
    by the first worker)."""
    plans = []
    for p in plan_paths:
        try:
            plans.append((p, load_plan(p)))
        except (OSError, ValueError) as exc:
            if worker.slot == 0:
                session.record(EmbedResult(Path(p).parent.name, "failed", 0, str(exc)))
    return plans


class _EmbedSession:
    """One worker's embedding run: its results so far, its claims on the slides it makes, each slide's wanted
    provenance, and the catalog part it records landed stores in. Its methods are the extraction loop's callbacks."""

    claims: StoreClaims

    def __init__(self, out_dir: Path, dim: int, on_result: Callable[[EmbedResult], None] | None) -> None:
        self.out_dir, self.dim, self.on_result = out_dir, dim, on_result
        self.results: list[EmbedResult] = []
        self.provenance: dict[str, dict] = {}
        self.catalog: CatalogWriter | None = None

    def record(self, result: EmbedResult) -> None:
        self.results.append(result)
        if self.on_result:
            self.on_result(result)

    def start(self, job: SlideJob) -> bool:
        refused = self.claims.claim(job, self.provenance[job.slide_id], self.dim)
        if refused is not None:
            self.record(refused)
        return refused is None

    def finish(self, job: SlideJob, levels: list[np.ndarray]) -> None:
        store = store_from_plan(job.plan, levels, self.provenance[job.slide_id])
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
        elif not self.claims.still_ours(job.slide_id):  # this worker stalled past the timeout and another took over
            text = self.claims.taken_over_text
            result = EmbedResult(job.slide_id, "skipped", job.n_cells, f"{job.slide_id}: {text}")
        else:
            try:
                written = write_store(store_path(self.out_dir, job.slide_id), store)
                result = EmbedResult(job.slide_id, "embedded", job.n_cells)
                if self.catalog is not None:
                    _catalogue(self.catalog, written)
            except (OSError, MixmagError) as exc:  # a full disk fails this slide; a smaller store may still fit
                result = EmbedResult(job.slide_id, "failed", job.n_cells, f"{job.slide_id}: {exc}")
        self.claims.finish(result)
        self.record(result)

    def failed(self, job: SlideJob, error: str) -> None:
        result = EmbedResult(
            job.slide_id,
            "failed",
            job.n_cells,
            f"{error} - no store written; the other slides go on. "
            "Re-copy or re-export the slide, then re-run (finished stores are kept).",
        )
        self.claims.finish(result)
        self.record(result)


def _catalogue(catalog: CatalogWriter, path: Path) -> None:
    """Record a landed store; a store the catalog could not record is found by the next refresh's folder scan."""
    try:
        catalog.record(path)
    except (OSError, MixmagError):
        pass


class StoreClaims:
    """The stores this worker is making, each claimed (`mixmag.claims`) from its first cells until it is written,
    and each finished slide's state record (`mixmag.slide_state`)."""

    taken_over_text = (
        "another worker took this slide over while this one stalled past the claim timeout; its store is theirs"
    )

    def __init__(
        self,
        out_dir: Path,
        force: bool,
        worker: Worker = Worker(),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        on_takeover: TakeoverHook | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.force = force
        self.worker = worker.describe()
        self.claims = SlideClaims(out_dir, STAGE, timeout=timeout, on_takeover=on_takeover)
        self.started: dict[str, float] = {}

    def claim(self, job: SlideJob, wanted: dict, dim: int) -> EmbedResult | None:
        """None when this process may make the store; otherwise why not, as the slide's result."""
        target = store_path(self.out_dir, job.slide_id)
        try:  # first: a store that cannot fit is refused before anything is written for it
            ensure_free_space(target, store_size_lower_bound(job.n_cells, len(job.plan.levels.mpps), dim))
        except DiskFullError as exc:
            return EmbedResult(job.slide_id, "failed", job.n_cells, f"{job.slide_id}: {exc}")
        try:
            held = self.claims.claim(job.slide_id, f"embedding {job.slide_id}")
        except MixmagError as exc:  # a full disk, a claim that is a link or a FIFO: this slide fails, the batch goes on
            return EmbedResult(job.slide_id, "failed", job.n_cells, f"{job.slide_id}: {exc}")
        if held is not None:
            return EmbedResult(job.slide_id, "skipped", job.n_cells, f"{job.slide_id}: {held.describe()}")
        self.started[job.slide_id] = time.monotonic()
        remove_stale_partials(self.out_dir, target.name)  # a killed writer's temporary store: no live writer owns it
        if not self.force and store_is_current(target, wanted):  # made by another process meanwhile
            self.claims.release(job.slide_id)
            return EmbedResult(job.slide_id, "skipped", job.n_cells)
        return None

    def still_ours(self, slide_id: str) -> bool:
        return self.claims.still_ours(slide_id)

    def note_current(self, slide_id: str) -> None:
        """A store already current: recorded done (once), so the folder's summary counts it."""
        write_state(self.out_dir, STAGE, slide_id, "done", outcome="skipped", worker=self.worker, only_new=True)

    def finish(self, result: EmbedResult) -> None:
        """The slide's state record, then its claim released (a record without a claim reads as final)."""
        if self.claims.still_ours(result.slide_id):
            seconds = time.monotonic() - self.started.pop(result.slide_id, time.monotonic())
            state: Literal["done", "failed"] = "failed" if result.outcome == "failed" else "done"
            write_state(
                self.out_dir,
                STAGE,
                result.slide_id,
                state,
                outcome=result.outcome,
                reason=result.error,
                seconds=seconds,
                worker=self.worker,
            )
        self.claims.release(result.slide_id)

    def release_all(self) -> None:
        self.claims.release_all()


@dataclass
class EmbedSetup:
    """An embedding run ready to start on this process: which worker it is (its shard of the cohort, its rank among
    torchrun's), its device, the plans to embed, the encoder on the device, and a note to say once."""

    worker: Worker
    device: torch.device
    plans: list[Path]
    encoder: TileEncoder
    note: str | None = None  # e.g. an encoder trained at 20x only meets 5x and 10x tiles

    @property
    def dist(self) -> DistInfo:
        return self.worker.dist

    def describe(self, name: str, out: Path) -> str:
        """The run in one line (printed before it starts)."""
        model, dist, shard = self.encoder, self.worker.dist, self.worker.shard
        ranks = f" x {dist.world_size} ranks" if dist.active else ""
        sharded = f"; this is {shard.describe()}" if shard.count > 1 else ""
        sharded += ", its ranks share it by cell count" if shard.count > 1 and dist.active else ""
        return (
            f"Embedding {len(self.plans)} slide(s) with {name} ({model.dim}-d {model.output}, weights "
            f"{model.weights_digest}) on {self.device}{ranks} -> {out}{sharded}"
        )


def prepare_embed(
    plans: Path,
    *,
    cohort: Path | None = None,
    encoder: str,
    weights: Path | None = None,
    from_hub: bool = False,
    random_init: bool = False,
    output: OutputMode | str | None = None,
    device: str | None = None,
    compile: bool = False,
    read_mode: str = "derive",
    shard: str | None = None,
) -> EmbedSetup:
    """This worker (its --shard or Slurm array task, its torchrun rank) and its device, the plans (a cohort table's
    slides, or every plan in the folder) and the encoder built on the device; a bad option is refused before any
    slide is read (a bad --shard before torch and the encoder start)."""
    worker_shard = resolve_shard(shard)
    dist, dev = start_distributed(device, process_group=False)
    check_read_mode(read_mode)
    plan_paths = find_plans(plans, slide_ids_from_table(cohort) if cohort else None)
    kind = cast(OutputMode | None, output)  # build_encoder refuses an unknown output mode in one sentence
    model = build_encoder(encoder, weights=weights, from_hub=from_hub, random_init=random_init, output=kind).to(dev)
    if compile:
        model.backbone = cast(torch.nn.Module, torch.compile(model.backbone))
    note = unseen_levels_note(model.preset, first_plan_levels(plan_paths))
    return EmbedSetup(Worker(worker_shard, dist), dev, plan_paths, model, note)


def first_plan_levels(plan_paths: list[Path]) -> list[float]:
    """The level mpps of the first plan that reads (the note is said once per run); a plan that does not read is
    that slide's failure, reported by the embedding loop, not a reason to stop the run here."""
    for path in plan_paths:
        try:
            return list(load_plan(path).levels.mpps)
        except (MixmagError, OSError, ValueError):
            continue
    return []


def finish_embed(results: list[EmbedResult], dist: DistInfo, out: Path) -> list[EmbedResult]:
    """Every rank's results on rank 0 (`gather_results`), which then folds the ranks' catalog parts into the folder's
    one catalog file (every rank has finished by then)."""
    results = gather_results(results, dist)
    if dist.rank == 0 and Path(out).is_dir():
        refresh_catalog(Path(out))
    return results
