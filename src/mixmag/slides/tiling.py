"""Tiling plans: the global cell grid, tissue per cell, accepted regions, and their provenance.

A plan is what every later stage consumes: which cells to embed (all cells of all accepted windows,
background cells included, so every region is complete) and which t x t regions (and, for CMEM,
c x c contexts) were accepted. It records every parameter, so a rerun can check, not assume, that
an existing plan is still valid.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .. import __version__
from ..errors import PlanError, SlideError
from ..fileio import FileTooLargeError, UnsafePathError, file_sha256, read_text_limited, write_atomic
from ..geometry import Box, CellGrid, LevelSpec
from ..ids import ID_RULE, is_safe_id
from .metadata import PLAUSIBLE_MPP
from .params import TilingParams
from .reader import Slide, slide_fingerprint
from .remote import check_unchanged, is_url, slide_location
from .tissue import TissueModel, cell_tissue_fractions, segment_tissue, tissue_model_id, window_fractions

PLAN_FORMAT_VERSION = 1
PLAN_FILENAME = "plan.json"
MAX_SLIDE_SIDE_PX = 2**24  # 16.7 M px a side: over 4 m at 0.25 um/px; the largest scans are about 200 k px


_MPP = Field(ge=PLAUSIBLE_MPP[0], le=PLAUSIBLE_MPP[1])  # the band the slide reader accepts
_SIDE = Field(ge=0, le=MAX_SLIDE_SIDE_PX)


class SlideRecord(BaseModel):
    """Which file was tiled, how it was read, and at what resolution."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    slide_id: str
    path: str = Field(description="the slide's absolute path, or its URL (s3://..., dicomweb+http://...)")
    size_bytes: int = Field(ge=0)
    mtime: float
    etag: str | None = Field(None, description="a URL's ETag (DICOMweb: a digest of the series' instance UIDs)")
    backend: str
    mpp: float = _MPP
    mpp_source: str
    mpp_override: float | None = Field(None, ge=PLAUSIBLE_MPP[0], le=PLAUSIBLE_MPP[1])
    width: int = _SIDE
    height: int = _SIDE
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    bounds: tuple[int, int, int, int] | None = Field(
        None,
        description="the part of level 0 QuPath's OpenSlide server shows (x, y, width, height): OpenSlide's bounds "
        "where it reports them, else the whole slide; None in plans written before mixmag recorded it",
    )

    @field_validator("slide_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:  # a plan is read back by `embed`, which names the store after it
        if not is_safe_id(value):
            raise ValueError(f"slide id {value!r} is not a safe file name ({ID_RULE})")
        return value


PlanStatus = Literal["ok", "too_small", "no_tissue", "no_regions"]


class TilingPlan(BaseModel):
    """Checked whole when read (`plan_problem`): later stages turn its numbers into pixel reads and array sizes."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format_version: int = PLAN_FORMAT_VERSION
    mixmag_version: str = __version__
    created: str = ""
    slide: SlideRecord
    params: TilingParams
    cell_px: float
    n_rows: int
    n_cols: int
    tissue_grid: list[list[float]] = Field(description="tissue fraction of every grid cell, row-major")
    cells: list[tuple[int, int]] = Field(description="(row, col) of every cell to embed, row-major order")
    cell_tissue: list[float]
    regions: list[tuple[int, int]] = Field(description="top-left (row, col) of every accepted t x t region")
    region_tissue: list[float]
    contexts: list[tuple[int, int]] = Field(
        default_factory=list, description="top-left cells of accepted c x c contexts"
    )
    context_tissue: list[float] = Field(default_factory=list)
    status: PlanStatus
    warnings: list[str] = Field(default_factory=list)
    tissue_model: str | None = Field(
        None, description="the user tissue model used (file#digest), None for the built-in detector"
    )
    annotations: str | None = Field(
        None, description="the annotations that restricted or replaced the tissue (file#digest and rule), or None"
    )

    @model_validator(mode="after")
    def _consistent(self) -> TilingPlan:
        problem = plan_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def grid(self) -> CellGrid:
        return CellGrid(self.slide.mpp, self.slide.width, self.slide.height, self.params.levels.cell_um)

    @property
    def levels(self) -> LevelSpec:
        return self.params.levels

    def open_slide(self) -> Slide:
        """Re-open the planned slide with the same backend and mpp the plan was made with. A slide by URL must still
        be the object that was tiled (size and ETag): another image under the same name is refused."""
        slide = Slide(slide_location(self.slide.path), mpp=self.slide.mpp, backend=self.slide.backend)
        if is_url(slide.path):
            try:
                check_unchanged(self.slide.path, self.slide.size_bytes, self.slide.etag, slide.fingerprint())
            except SlideError:
                slide.close()
                raise
        return slide


def plan_problem(plan: TilingPlan) -> str | None:
    """What makes a plan unusable, or None: its grid is not the one its slide record gives, or a cell, region or
    context lies outside it, is listed twice, or lacks its tissue fraction. Cheap (numpy over the lists), so a forged
    plan is refused before any slide is read or any embedding computed."""
    grid = plan.grid
    if not math.isclose(plan.cell_px, grid.cell_px, rel_tol=1e-9):
        return (
            f"cell_px {plan.cell_px!r} is not the slide's cell size ({grid.cell_px:.6g} px at {plan.slide.mpp} um/px)"
        )
    if (plan.n_rows, plan.n_cols) != (grid.n_rows, grid.n_cols):
        return f"the grid {plan.n_rows} x {plan.n_cols} is not the slide's ({grid.n_rows} x {grid.n_cols} cells)"
    tissue = plan.tissue_grid
    if len(tissue) != plan.n_rows or any(len(row) != plan.n_cols for row in tissue):
        return f"tissue_grid is not {plan.n_rows} x {plan.n_cols}"
    if tissue and not _fractions(np.asarray(tissue, np.float64)):
        return "tissue_grid holds values outside 0-1"
    t, c = plan.params.region_size, plan.params.context_size or 1
    for name, windows, side, fractions in (
        ("cells", plan.cells, 1, plan.cell_tissue),
        ("regions", plan.regions, t, plan.region_tissue),
        ("contexts", plan.contexts, c, plan.context_tissue),
    ):
        problem = _windows_problem(name, windows, side, fractions, plan.n_rows, plan.n_cols)
        if problem:
            return problem
    return None


def _windows_problem(
    name: str, windows: list[tuple[int, int]], side: int, fractions: list[float], n_rows: int, n_cols: int
) -> str | None:
    """Every side x side window inside the n_rows x n_cols grid, none twice, one tissue fraction (0-1) each."""
    if len(fractions) != len(windows):
        return f"{len(windows)} {name} but {len(fractions)} tissue fractions"
    if not windows:
        return None
    try:
        rc = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
    except OverflowError:
        return f"{name} hold a position far outside the {n_rows} x {n_cols} grid"
    rows, cols = rc[:, 0], rc[:, 1]
    outside = (rows < 0) | (cols < 0) | (rows > n_rows - side) | (cols > n_cols - side)
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        return f"{name} hold ({rc[k, 0]}, {rc[k, 1]}), outside the {n_rows} x {n_cols} grid"
    if len(np.unique(rc, axis=0)) != len(rc):
        return f"{name} hold the same position more than once"
    if not _fractions(np.asarray(fractions, np.float64)):
        return f"the tissue fractions of the {name} hold values outside 0-1"
    return None


def _fractions(values: np.ndarray) -> bool:
    return bool(np.all((values >= 0) & (values <= 1)))


def accepted_windows(
    window_tissue: np.ndarray, stride: int, threshold: float
) -> tuple[list[tuple[int, int]], list[float]]:
    """Top-left cells of windows on the global lattice (multiples of stride) with tissue >= threshold."""
    rows, cols = window_tissue.shape
    picked, fractions = [], []
    for r in range(0, rows, stride):
        for c in range(0, cols, stride):
            f = float(window_tissue[r, c])
            if f >= threshold:
                picked.append((r, c))
                fractions.append(round(f, 6))
    return picked, fractions


def cells_of_windows(windows: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    cells = {(r + dr, c + dc) for r, c in windows for dr in range(size) for dc in range(size)}
    return sorted(cells)


class MaskRule(Protocol):
    """Drawn regions that change the tissue mask before cells are scored (interop.annotations.AnnotationSet)."""

    record: str

    def apply(
        self, mask: np.ndarray, width: int, height: int, bounds: tuple[int, int, int, int]
    ) -> tuple[np.ndarray, list[str]]: ...


def make_plan(
    slide: Slide,
    params: TilingParams,
    *,
    slide_id: str,
    mpp_override: float | None = None,
    tissue_model: TissueModel | None = None,
    annotations: MaskRule | None = None,
) -> tuple[TilingPlan, np.ndarray, np.ndarray]:
    """Segment tissue, lay the grid, score cells, accept windows. Returns (plan, thumbnail, mask). With
    `annotations`, the tissue is what they leave of it (or what they draw) before any cell is scored."""
    levels = params.levels
    # Fail early, before any work, if the finest level needs upsampling.
    slide.plan(
        Box(0, 0, 1, 1), levels.finest_mpp, (1, 1), tolerance=params.mpp_tolerance, allow_upsample=params.allow_upsample
    )
    thumb_mpp = params.tissue.thumbnail_mpp
    thumbnail = slide.thumbnail(thumb_mpp, tolerance=params.mpp_tolerance, allow_upsample=True)
    mask = segment_tissue(thumbnail, params.tissue, tissue_model)
    warnings: list[str] = []
    if annotations is not None:
        mask, notes = annotations.apply(mask, slide.width, slide.height, slide.bounds)
        warnings += notes
    grid = CellGrid(slide.mpp, slide.width, slide.height, levels.cell_um)
    tissue = cell_tissue_fractions(mask, grid)

    t = params.region_size
    regions, region_tissue = accepted_windows(window_fractions(tissue, t), params.stride, params.tissue_threshold)
    contexts: list[tuple[int, int]] = []
    context_tissue: list[float] = []
    if params.context_size is not None:
        c = params.context_size
        contexts, context_tissue = accepted_windows(window_fractions(tissue, c), 1, params.tissue_threshold)
    status, empty_plan = _plan_status(slide, params, grid, mask, regions)
    warnings += empty_plan  # after the annotations' notes, which it must not replace
    cells = cells_of_windows(regions, t)
    if contexts:
        cells = sorted(set(cells) | set(cells_of_windows(contexts, params.context_size or 1)))
    record = SlideRecord(
        slide_id=slide_id,
        **slide.fingerprint(),
        backend=slide.backend,
        mpp=slide.mpp,
        mpp_source=slide.mpp_source,
        mpp_override=mpp_override,
        width=slide.width,
        height=slide.height,
        level_dimensions=[tuple(d) for d in slide.level_dimensions],
        level_downsamples=list(slide.level_downsamples),
        bounds=slide.bounds,
    )
    plan = TilingPlan(
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        slide=record,
        params=params,
        cell_px=grid.cell_px,
        n_rows=grid.n_rows,
        n_cols=grid.n_cols,
        tissue_grid=np.round(tissue, 6).tolist(),
        cells=cells,
        cell_tissue=[round(float(tissue[r, c]), 6) for r, c in cells],
        regions=regions,
        region_tissue=region_tissue,
        contexts=contexts,
        context_tissue=context_tissue,
        status=status,
        warnings=warnings,
        tissue_model=tissue_model_id(tissue_model),
        annotations=annotations.record if annotations is not None else None,
    )
    return plan, thumbnail, mask


def _plan_status(
    slide: Slide, params: TilingParams, grid: CellGrid, mask: np.ndarray, regions: list
) -> tuple[PlanStatus, list[str]]:
    """Whether the plan is usable, and if it is empty, why in one sentence with the fix."""
    t, cell_um = params.region_size, params.levels.cell_um
    # without one whole cell a slide is too small, tissue or not
    if not mask.any() and min(grid.n_rows, grid.n_cols) > 0:
        return "no_tissue", [
            "no tissue found; the plan is empty. Check the slide, or the tissue settings (--min-saturation)."
        ]
    if grid.n_rows < t or grid.n_cols < t:
        return "too_small", [
            f"slide is {slide.width * slide.mpp:.0f} x {slide.height * slide.mpp:.0f} um, smaller than one "
            f"{t} x {t} region ({t * cell_um:.0f} um); the plan is empty. "
            f"{_smaller_regions_hint(min(grid.n_rows, grid.n_cols), cell_um)}"
        ]
    if not regions:
        return "no_regions", [
            f"tissue found ({float(mask.mean()):.1%} of the thumbnail) but no {t} x {t} region reaches "
            f"{params.tissue_threshold:.0%} tissue; the plan is empty. Lower --tissue-threshold to accept sparser "
            "regions."
        ]
    return "ok", []


def _smaller_regions_hint(fits: int, cell_um: float) -> str:
    """What would tile a slide too small for its regions: the region sizes that fit, if any."""
    if fits >= 1:
        sizes = {1: "1", 2: "1 or 2"}.get(fits, f"{fits} or less")
        return f"Use --region-size {sizes} to tile it."
    return f"It is smaller than one {cell_um:g} um cell: these levels and tile size cannot tile it."


def plan_path(out_dir: str | Path, slide_id: str) -> Path:
    return Path(out_dir) / slide_id / PLAN_FILENAME


def plan_digest(path: str | Path) -> str:
    """The first 16 hex digits of the plan file's sha256: names the exact plan a store was made from."""
    return file_sha256(path, "tiling plan")[:16]


def save_plan(plan: TilingPlan, path: str | Path) -> Path:
    """Write atomically: a reader sees either no plan or a complete one."""
    return write_atomic(path, plan.model_dump_json(indent=1))


def load_plan(path: str | Path) -> TilingPlan:
    path = Path(path)
    if path.is_dir() and path.name != PLAN_FILENAME:  # a slide's folder; a plan.json that is a folder is said below
        path = path / PLAN_FILENAME
    try:
        return TilingPlan.model_validate_json(read_text_limited(path, "plan", what="tiling plan"))
    except (UnsafePathError, FileTooLargeError) as exc:
        raise PlanError(f"{exc}; delete it and re-run `mixmag tile`.") from None
    except FileNotFoundError as exc:
        if path.is_symlink():
            raise PlanError(
                f"{path}: the tiling plan is a link to a missing file; delete it and re-run `mixmag tile`."
            ) from None
        raise PlanError(f"{path}: no tiling plan; run `mixmag tile` first.") from exc
    except ValueError as exc:
        errors = exc.errors() if hasattr(exc, "errors") else []  # pydantic: say which field, and why
        why = exc.__class__.__name__
        if errors:
            where, msg = ".".join(map(str, errors[0]["loc"])), errors[0]["msg"].removeprefix("Value error, ")
            why = f"{where}: {msg}" if where else msg
        raise PlanError(f"{path}: not a valid mixmag tiling plan ({why}); delete it and re-run `mixmag tile`.") from exc


def plan_is_current(
    path: str | Path,
    slide_path: str | Path,
    params: TilingParams,
    mpp_override: float | None,
    backend: str,
    tissue_model: str | None = None,
    annotations: str | None = None,
) -> bool:
    """True when an existing plan was made from this very file with every same parameter, tissue model and
    annotations (their file's digest and rule)."""
    try:
        plan = load_plan(path)
    except PlanError:
        return False
    try:
        stat = slide_fingerprint(slide_path)  # a DICOM or OME-Zarr slide is a folder of files; a URL asks the storage
    except (OSError, SlideError):
        return False
    where = str(slide_path) if is_url(slide_path) else str(Path(slide_path).resolve())
    return (
        plan.format_version == PLAN_FORMAT_VERSION
        and plan.params == params
        and plan.tissue_model == tissue_model
        and plan.annotations == annotations
        and plan.slide.mpp_override == mpp_override
        and plan.slide.path == where
        and plan.slide.size_bytes == stat["size_bytes"]
        and plan.slide.mtime == stat["mtime"]
        and plan.slide.etag == stat.get("etag")
        and backend in ("auto", plan.slide.backend)
    )
