"""The tiling stage over many slides: plan each one, write QC pictures, skip what is current,
keep going past bad slides and report them at the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import MixmagError, OptionError
from ..fileio import ensure_free_space, inside_folder, make_folder, write_atomic, write_json_atomic
from ..interop.annotations import AnnotationSource
from ..markup import utf8_path
from ..report.qc import png_bytes, regions_overlay, tissue_overlay
from ..slides.reader import BACKENDS, Slide
from ..slides.sources import SlideSource
from ..slides.tiling import TilingParams, TilingPlan, load_plan, make_plan, plan_is_current, plan_path, save_plan
from ..slides.tissue import TissueModel, tissue_model_id

Outcome = Literal["tiled", "skipped", "failed"]
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
        assert p is not None
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
    on_result: Callable[[SlideResult], None] | None = None,
    annotations: AnnotationSource | None = None,
) -> list[SlideResult]:
    """Tile every slide; a failing slide is recorded and the run goes on. Writes a run summary."""
    check_backend(backend)
    out_dir = Path(out_dir)
    make_folder(out_dir)
    results = []
    for source in sources:
        start = time.perf_counter()
        try:
            result = tile_slide(
                source,
                out_dir,
                params,
                backend=backend,
                tissue_model=tissue_model,
                force=force,
                annotations=annotations,
            )
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop a cohort; it is reported below
            result = SlideResult(source, "failed", error=_describe(exc), seconds=time.perf_counter() - start)
        results.append(result)
        if on_result is not None:
            on_result(result)
    write_summary(out_dir, params, results)
    return results


def check_backend(backend: str) -> None:
    """An unknown --backend is refused once, before any slide is opened (not once per slide)."""
    if backend != "auto" and backend not in BACKENDS:
        raise OptionError(f"--backend {backend}: unknown slide reader backend; use auto, {', '.join(BACKENDS)}")


def _describe(exc: Exception) -> str:
    if isinstance(exc, MixmagError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def write_summary(out_dir: Path, params: TilingParams, results: list[SlideResult]) -> Path:
    rows = []
    for r in results:
        row = {"slide": r.source.slide_id, "path": str(r.source.path), "outcome": r.outcome}
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
    return write_json_atomic(out_dir / SUMMARY_FILENAME, payload, indent=1)
