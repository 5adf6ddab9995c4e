"""`mixmag doctor`: before a long run, what each slide is to mixmag's readers.

Per slide: which backends may read it (fastest first, and why), which open it, its levels and their mpp, where the
mpp came from, how far the backends that open it agree on the same pixels, how fast each reads cells, and what
`mixmag tile` will do with it, or the one-sentence reason it cannot. Pure reporting: nothing is written.
"""

from __future__ import annotations

import importlib.metadata
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MixmagError, MppError
from ..geometry import Box, CellGrid, LevelSpec
from ..markup import utf8_path
from .backends import BACKENDS, candidates, install_command, installed, open_backend
from .pyramids import read_pyramid
from .reader import Slide, SlideTooLargeError
from .remote import is_url, slide_location
from .sources import slide_entries

_DISTRIBUTIONS = {
    "tiffslide": "tiffslide",
    "openslide": "openslide-bin",
    "omezarr": "zarr",
    "czi": "pylibCZIrw",
    "slideio": "slideio",
    "dicomweb": "wsidicom",
}


@dataclass
class BackendCheck:
    backend: str
    reason: str
    installed: bool
    install: str | None = None
    opened: bool = False
    error: str | None = None
    levels: list[tuple[int, int, float | None]] = field(default_factory=list)  # width, height, mpp (None: unknown)
    mpp: float | None = None
    mpp_source: str | None = None
    mpp_error: str | None = None
    tiles_per_s: float | None = None
    diff_to_chosen: float | None = None  # mean |difference| of the same read, grey levels


@dataclass
class SlideCheck:
    path: Path | str
    slide_id: str
    backends: list[BackendCheck]
    chosen: str | None = None
    verdict: str = ""
    can_tile: bool = False
    region_note: str | None = None  # too small for the configured regions, and which region sizes fit


def installed_backends() -> list[tuple[str, bool, str, str | None]]:
    """(backend, installed, version, install command) for every backend mixmag knows."""
    rows = []
    for name in BACKENDS:
        ok = installed(name)
        version = ""
        if ok:
            try:
                version = importlib.metadata.version(_DISTRIBUTIONS[name])
            except importlib.metadata.PackageNotFoundError:
                version = "?"
        rows.append((name, ok, version, install_command(name)))
    return rows


def check_paths(
    paths: list[Path | str],
    mpp: float | None = None,
    levels: LevelSpec | None = None,
    cells: int = 2,
    region_size: int = 3,
) -> list[SlideCheck]:
    """Diagnose every slide the paths hold (a DICOM folder with several series is several slides)."""
    out = []
    for given in paths:
        path = slide_location(given)  # a URL stays a URL
        entries = slide_entries(path) if is_url(path) or path.exists() else [(path, path.name)]
        out += [check_slide(p, sid, mpp, levels or LevelSpec(), cells, region_size) for p, sid in entries]
    return out


def check_slide(
    path: Path | str, slide_id: str, mpp: float | None, levels: LevelSpec, cells: int, region_size: int = 3
) -> SlideCheck:
    found = is_url(path) or Path(path).exists()
    checks = [BackendCheck(c.backend, c.reason, c.installed, c.install) for c in candidates(path)] if found else []
    reads: dict[str, np.ndarray] = {}
    forged = False  # a file that declares more than it holds is read by no further backend (one may not check)
    for check in checks:
        if check.installed and not forged:
            forged = _check_backend(path, check, mpp, levels, cells, reads)
        elif check.installed:
            check.error = "not tried: the file declares more than it holds (see above)"
    result = SlideCheck(path, slide_id, checks)
    try:
        utf8_path(path, "slide")  # `mixmag tile` refuses such a path before reading it (plan.json records it)
        with Slide(path, mpp=mpp) as slide:
            result.chosen = slide.backend
            grid = CellGrid(slide.mpp, slide.width, slide.height, levels.cell_um)
            plan = slide.plan(grid.cell_box(0, 0), levels.finest_mpp)
            result.verdict = (
                f"`mixmag tile` reads it with {slide.backend} at {slide.mpp:g} um/px ({slide.mpp_source}); "
                f"{levels.names[-1]} from level {plan.level} ({slide.level_mpps[plan.level]:g} um/px); "
                f"grid {grid.n_rows} x {grid.n_cols} cells of {levels.cell_um:g} um"
            )
            result.can_tile = True
            result.region_note = region_fit_note(grid, slide.mpp, levels.cell_um, region_size)
    except MixmagError as exc:
        result.verdict = f"`mixmag tile` cannot tile it: {exc}"
    _speed_follows_measurement(checks)
    _readable_is_not_corrupt(checks, result.chosen if result.can_tile else None)
    if result.chosen in reads:
        for check in checks:
            if check.backend in reads and reads[check.backend].shape == reads[result.chosen].shape:
                check.diff_to_chosen = float(
                    np.abs(reads[check.backend].astype(np.int16) - reads[result.chosen]).mean()
                )
    return result


def region_fit_note(grid: CellGrid, mpp: float, cell_um: float, region_size: int) -> str | None:
    """None when at least one t x t region fits the slide's grid; otherwise what it needs and which t fit."""
    t = region_size
    if (grid.n_rows // t) * (grid.n_cols // t) > 0:
        return None
    side_mm = t * cell_um / 1000
    width_mm, height_mm = grid.width * mpp / 1000, grid.height * mpp / 1000
    fits = [(s, (grid.n_rows // s) * (grid.n_cols // s)) for s in range(t - 1, 0, -1)]
    fits = [(s, n) for s, n in fits if n]
    what = (
        "; ".join(f"`--region-size {s}` fits {n} region{'s' if n > 1 else ''}" for s, n in fits)
        if fits
        else "no region size fits: it is smaller than one cell"
    )
    return (
        f"too small for a {t}x{t} region of {cell_um:g} um cells (needs at least {side_mm:.2f} x {side_mm:.2f} mm; "
        f"the slide is {width_mm:.2f} x {height_mm:.2f} mm, {grid.n_rows} x {grid.n_cols} whole cells), so "
        f"`mixmag tile` would give it an empty plan; {what} (before the tissue check)"
    )


def _speed_follows_measurement(checks: list[BackendCheck]) -> None:
    """A reason that calls a reader faster (or fastest) is corrected when this slide's measurement says otherwise."""
    rates = {c.backend: c.tiles_per_s for c in checks if c.tiles_per_s}
    if len(rates) < 2:
        return
    best = max(rates, key=lambda b: rates[b])
    for c in checks:
        if c.backend in rates and c.backend != best and ("faster" in c.reason or "fastest" in c.reason):
            kind = c.reason.split(":", 1)[0]
            c.reason = (
                f"{kind}: tried first for this kind of file, but on this slide {best} read faster "
                f"({rates[best]:.0f} vs {rates[c.backend]:.0f} tiles/s, measured below)"
            )


def _readable_is_not_corrupt(checks: list[BackendCheck], reader: str | None) -> None:
    """One reader failing to decode a file that another reads is that reader's limit, not a corrupt file."""
    if reader is None:
        return
    for c in checks:
        if c.error and c.backend != reader and "probably corrupt" in c.error:
            cause = c.error.split(" Fix: ")[0].rstrip(". ")
            c.error = f"{c.backend} cannot decode it ({cause}); {reader} reads it, so the file itself is readable"


def _check_backend(
    path: Path | str, check: BackendCheck, mpp: float | None, levels: LevelSpec, cells: int, reads: dict
) -> bool:
    """Open and read the slide with one backend; True when the file declares more than it holds (SlideTooLargeError):
    then no other backend should decode it."""
    try:
        handle = open_backend(check.backend, path)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a diagnosis
        check.error = f"{type(exc).__name__}: {exc}"
        return False
    handle.close()
    try:
        slide = Slide(path, mpp=mpp, backend=check.backend)
    except MppError as exc:  # the pixels open; the resolution is missing or absurd
        check.opened, check.mpp_error = True, str(exc)
        check.levels = [(w, h, None) for w, h in handle.level_dimensions]
        return False
    except MixmagError as exc:
        check.error = str(exc)
        check.levels = [(w, h, None) for w, h in handle.level_dimensions]
        return isinstance(exc, SlideTooLargeError)
    with slide:
        check.opened = True
        check.mpp, check.mpp_source = slide.mpp, slide.mpp_source
        check.levels = [(w, h, m) for (w, h), m in zip(slide.level_dimensions, slide.level_mpps)]
        try:
            check.tiles_per_s, reads[check.backend] = _read_speed(slide, levels, cells)
        except MixmagError as exc:
            check.error = str(exc)
            return isinstance(exc, SlideTooLargeError)
    return False


def _read_speed(slide: Slide, levels: LevelSpec, cells: int) -> tuple[float | None, np.ndarray]:
    """Tiles/s of reading `cells` central cells at the finest level (21 tiles each for 3 levels), and one read
    of the central cell at the coarsest level to compare backends on."""
    grid = CellGrid(slide.mpp, slide.width, slide.height, levels.cell_um)
    centre = Box(
        slide.width / 2 - grid.cell_px / 2,
        slide.height / 2 - grid.cell_px / 2,
        slide.width / 2 + grid.cell_px / 2,
        slide.height / 2 + grid.cell_px / 2,
    )
    sample = slide.read_box(centre, levels.mpp(0), (levels.tile_px, levels.tile_px), allow_upsample=True)
    if grid.n_rows == 0 or grid.n_cols == 0:
        return None, sample
    picked = [(grid.n_rows // 2, (grid.n_cols // 2 + k) % grid.n_cols) for k in range(cells)]
    start = time.perf_counter()
    for row, col in picked:
        read_pyramid(slide, grid, levels, row, col)
    elapsed = time.perf_counter() - start
    per_cell = sum(levels.tiles_per_cell(i) for i in range(levels.n_levels))
    return per_cell * len(picked) / max(elapsed, 1e-9), sample
