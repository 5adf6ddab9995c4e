"""The tiling stage over many slides: plan each one, write QC pictures, skip what is current,
keep going past bad slides and report them at the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..claims import DEFAULT_TIMEOUT, SlideClaims, TakeoverHook
from ..errors import MixmagError, OptionError
from ..fileio import ensure_free_space, inside_folder, make_folder, write_atomic, write_json_atomic
from ..interop.annotations import AnnotationSource
from ..markup import utf8_path
from ..report.qc import png_bytes, regions_overlay, tissue_overlay
from ..slide_state import add_to_cohort, write_state
from ..slides.reader import BACKENDS, Slide
from ..slides.sources import SlideSource, sources_from_paths, sources_from_table
from ..slides.tiling import TilingParams, TilingPlan, load_plan, make_plan, plan_is_current, plan_path, save_plan
from ..slides.tissue import TissueModel, tissue_model_id
from ..workers import Worker

Outcome = Literal["tiled", "skipped", "failed"]
STAGE = "tile"
SUMMARY_FILENAME = "tiling_summary.json"
QC_TISSUE = "qc_tissue.png"
QC_REGIONS = "qc_regions.png"
TISSUE_MASK = "tissue_mask.png"


@dataclass
class SlideResult:
    source: SlideSource
    outcome: Outcome
    plan: TilingPlan | None = None
    error: str | None = None
    seconds: float = 0.0

    def summary_line(self) -> str:
        sid = self.source.slide_id
        if self.outcome == "failed":
            return f"{sid}: FAILED - {self.error}"
        p = self.plan
        if p is None:  # another worker has the slide
            return f"{sid}: skipped ({self.error})"
        head = "skipped (plan is current)" if self.outcome == "skipped" else f"tiled in {self.seconds:.1f}s"
        line = (
            f"{sid}: {head}; {p.slide.backend}, {p.slide.mpp:g} um/px ({p.slide.mpp_source}); grid "
            f"{p.n_rows}x{p.n_cols} cells; "
            f"{len(p.regions)} regions, {len(p.cells)} cells to embed"
        )
        if p.contexts:
            line += f", {len(p.contexts)} contexts"
        if p.status != "ok" or p.warnings:
            line += f"; {p.status}: " + " ".join(p.warnings)
        return line


def tile_slide(
    source: SlideSource,
    out_dir: Path,
    params: TilingParams,
    *,
    backend: str = "auto",
    tissue_model: TissueModel | None = None,
    force: bool = False,
    annotations: AnnotationSource | None = None,
) -> SlideResult:
    """Tile one slide into out_dir/<slide_id>/ (plan.json written last, atomically); with `annotations`, inside the
    slide's drawn regions (its file is read first: a changed file re-tiles)."""
    start = time.perf_counter()
    utf8_path(source.path, "slide")  # plan.json records it: refused in one sentence, not by the JSON writer
    target = plan_path(out_dir, source.slide_id)
    inside_folder(out_dir, target.parent, "slide's tiling folder")  # a linked <slide>/ never takes plan.json elsewhere
    drawn = annotations.for_slide(source.slide_id, source.path) if annotations is not None else None
    record = drawn.record if drawn is not None else None
    model_id = tissue_model_id(tissue_model)
    if not force and plan_is_current(target, source.path, params, source.mpp, backend, model_id, record):
        return SlideResult(source, "skipped", plan=load_plan(target))
    with Slide(source.path, mpp=source.mpp, backend=backend) as slide:
        plan, thumbnail, mask = make_plan(
            slide,
            params,
            slide_id=source.slide_id,
            mpp_override=source.mpp,
            tissue_model=tissue_model,
            annotations=drawn,
        )
    pictures = {
        TISSUE_MASK: png_bytes((mask[..., None].repeat(3, axis=2) * 255).astype("uint8")),
        QC_TISSUE: png_bytes(tissue_overlay(thumbnail, mask)),
        QC_REGIONS: png_bytes(regions_overlay(thumbnail, plan)),
    }
    # all of the slide's outputs or none: a slide that cannot fit leaves no pictures that would crowd out the next one
    ensure_free_space(target.parent, sum(map(len, pictures.values())) + len(plan.model_dump_json(indent=1)))
    for name, data in pictures.items():
        write_atomic(target.parent / name, data)
    save_plan(plan, target)
    return SlideResult(source, "tiled", plan=plan, seconds=time.perf_counter() - start)


def tile_slides(
    sources: list[SlideSource],
    out_dir: Path,
    params: TilingParams,
    *,
    backend: str = "auto",
    tissue_model: TissueModel | None = None,
    force: bool = False,
    worker: Worker | None = None,
    claim_timeout: float = DEFAULT_TIMEOUT,
    on_result: Callable[[SlideResult], None] | None = None,
    annotations: AnnotationSource | None = None,
    on_takeover: TakeoverHook | None = None,
) -> list[SlideResult]:
    """Tile this worker's share of the slides (every `slots`-th one from its `slot`: `worker`, from `--shard` or a
    Slurm array); a failing slide is recorded and the run goes on. Each slide is claimed while it is tiled
    (`mixmag.claims`), so overlapping workers never tile one slide twice, and gets a state record
    (`mixmag.slide_state`). Writes a run summary (one per shard when sharded)."""
    check_backend(backend)
    worker = worker or Worker()
    out_dir = Path(out_dir)
    make_folder(out_dir)
    add_to_cohort(out_dir, STAGE, [s.slide_id for s in sources])
    results = []
    options = dict(backend=backend, tissue_model=tissue_model, force=force, annotations=annotations)
    with SlideClaims(out_dir, STAGE, timeout=claim_timeout, on_takeover=on_takeover) as claims:
        for source in sources[worker.slot :: worker.slots]:
            result = _tile_claimed(source, out_dir, params, claims, worker, options)
            results.append(result)
            if on_result is not None:
                on_result(result)
    write_summary(out_dir, params, results, worker)
    return results


def _tile_claimed(
    source: SlideSource, out_dir: Path, params: TilingParams, claims: SlideClaims, worker: Worker, options: dict
) -> SlideResult:
    """One slide under its claim, then its state record; a slide another worker holds is left to it."""
    start = time.perf_counter()
    try:
        held = claims.claim(source.slide_id, f"tiling {source.slide_id}")
    except MixmagError as exc:  # a claim that is a link or a FIFO, a full disk: this slide fails, the batch goes on
        return SlideResult(source, "failed", error=str(exc), seconds=time.perf_counter() - start)
    if held is not None:
        return SlideResult(source, "skipped", error=held.describe())
    try:
        result = tile_slide(source, out_dir, params, **options)
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop a cohort; it is reported below
        result = SlideResult(source, "failed", error=_describe(exc), seconds=time.perf_counter() - start)
    state = "failed" if result.outcome == "failed" else "done"
    seconds = time.perf_counter() - start
    write_state(
        out_dir,
        STAGE,
        source.slide_id,
        state,
        outcome=result.outcome,
        reason=result.error,
        seconds=seconds,
        worker=worker.describe(),
        only_new=result.outcome == "skipped",
    )
    claims.release(source.slide_id)
    return result


def check_backend(backend: str) -> None:
    """An unknown --backend is refused once, before any slide is opened (not once per slide)."""
    if backend != "auto" and backend not in BACKENDS:
        raise OptionError(f"--backend {backend}: unknown slide reader backend; use auto, {', '.join(BACKENDS)}")


def tile_sources(slides: list[Path | str], cohort: Path | None, mpp: float | None) -> list[SlideSource]:
    """The slides to tile: files, folders and URLs given, then a cohort table's `path` column (one is needed)."""
    if not slides and cohort is None:
        raise OptionError("give slide files or --cohort TABLE.csv")
    sources = sources_from_paths(list(slides), mpp)
    if cohort is not None:
        sources += sources_from_table(cohort, mpp)
    return sources


def describe_tiling(share: str, params: TilingParams, out: Path) -> str:
    """The run in one line (printed before it starts); `share`: the slides this worker tiles, said ("12 slide(s)")."""
    levels = params.levels
    return (
        f"Tiling {share}: {params.region_size}x{params.region_size} regions of "
        f"{levels.cell_um:g} um cells, levels {'/'.join(levels.names)} ({params.tile_px} px tiles), tissue >= "
        f"{params.tissue_threshold:.0%} -> {out}"
    )


def _describe(exc: Exception) -> str:
    if isinstance(exc, MixmagError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def summary_name(worker: Worker = Worker()) -> str:
    """tiling_summary.json, or tiling_summary.shard-<i>-of-<N>.json for one shard (shards never overwrite each
    other's; `mixmag status` sums up the folder)."""
    s = worker.shard
    return SUMMARY_FILENAME if s.count == 1 else f"tiling_summary.shard-{s.index}-of-{s.count}.json"


def write_summary(out_dir: Path, params: TilingParams, results: list[SlideResult], worker: Worker = Worker()) -> Path:
    rows = []
    for r in results:
        row: dict[str, object] = {"slide": r.source.slide_id, "path": str(r.source.path), "outcome": r.outcome}
        if r.plan is not None:
            row |= {
                "status": r.plan.status,
                "regions": len(r.plan.regions),
                "cells": len(r.plan.cells),
                "warnings": r.plan.warnings,
            }
        if r.error:
            row["error"] = r.error
        rows.append(row)
    payload = {"params": params.model_dump(), "slides": rows}
    return write_json_atomic(out_dir / summary_name(worker), payload, indent=1)
