"""`mixmag demo`: the pipeline on built-in data. For now: generate a slide, tile it and the real
sample slide, and show one region's aligned 5x/10x/20x tiles. Later stages extend it."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console

from ..report.qc import save_png
from ..slides.pyramids import read_pyramid
from ..slides.sources import SlideSource
from ..slides.tiling import TilingParams
from ..synth.patterns import tissue_like
from ..synth.slide_writer import write_slide
from .tile import tile_slides

SAMPLE_ENV = "MIXMAG_SAMPLE_SLIDE"


def find_sample_slide() -> Path | None:
    """The real CMU sample slide: $MIXMAG_SAMPLE_SLIDE, else ../shared/data beside the source tree."""
    if os.environ.get(SAMPLE_ENV):
        return Path(os.environ[SAMPLE_ENV])
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data" / "CMU-1-Small-Region.svs"
        if candidate.is_file():
            return candidate
    return None


def run_demo(out: Path, *, sample: Path | None = None, small: bool = False, console: Console | None = None) -> int:
    console = console or Console()
    out = Path(out)
    slides_dir = out / "slides"
    generated = slides_dir / ("generated-small.tiff" if small else "generated.tiff")
    side = (4600, 3800) if small else (9000, 7200)
    if not generated.exists():
        console.rule("[bold]1. generate a synthetic slide")
        image = tissue_like(*side, 0.5, seed=11, tissue_mask=_demo_layout())
        write_slide(generated, image, 0.5, downsamples=(1, 4, 16), flavor="generic")
        console.print(f"wrote {generated} ({side[0]}x{side[1]} px at 0.5 um/px, levels 0.5/2/8 um/px)")
    else:
        console.print(f"reusing {generated}")

    console.rule("[bold]2. tile: 3x3 regions of 5x/10x/20x tiles (paper settings)")
    params = TilingParams()
    results = tile_slides([SlideSource(generated, generated.stem)], out / "tiles", params, on_result=lambda r: console.print(r.summary_line()))

    sample = sample or find_sample_slide()
    if sample is not None and sample.exists():
        console.rule("[bold]3. tile the real sample slide (CMU-1-Small-Region, CC0)")
        console.print("It is 1.1 x 1.5 mm, too small for a 3x3 region of 448 um cells; tiled with t = 1 instead.")
        results += tile_slides([SlideSource(sample, "CMU-1-Small-Region")], out / "tiles_t1", TilingParams(region_size=1),
                               on_result=lambda r: console.print(r.summary_line()))
    else:
        console.print(f"[yellow]real sample slide not found; set {SAMPLE_ENV} to include it.[/]")

    first = results[0].plan
    if first is not None and first.regions:
        console.rule("[bold]4. one region as aligned tile pyramids")
        with first.open_slide() as slide:
            row, col = first.regions[0]
            pyramid = read_pyramid(slide, first.grid, first.levels, row, col, first.params.region_size)
        montage = _montage(pyramid.tiles, first.params.region_size, first.params.tile_px)
        path = save_png(out / "region_pyramid.png", montage)
        counts = " + ".join(f"{t.shape[0]} at {n}" for t, n in zip(pyramid.tiles, first.levels.names))
        console.print(f"region ({row}, {col}): {counts} = {pyramid.n_tiles} tiles -> {path}")
    console.rule("[bold]5. embed every tile of every level with the built-in 'stats' encoder")
    embedded = _embed(out, console)
    failed = [r for r in results if r.outcome == "failed"] + [r for r in embedded if r.outcome == "failed"]
    console.rule("[bold]done")
    console.print(f"outputs in {out}/ (plans and QC pictures under tiles*/<slide>/)")
    return 1 if failed else 0


def _embed(out: Path, console: Console):
    import torch

    from ..encoders.model import build_encoder
    from ..store import read_store, store_path
    from .embed import find_plans, run_embed

    encoder = build_encoder("stats")
    plans = [p for folder in ("tiles", "tiles_t1") if (out / folder).is_dir() for p in find_plans(out / folder)]
    results = run_embed(plans, out / "stores", encoder, device=torch.device("cpu"), workers=0)
    for r in results:
        if r.outcome == "failed":
            console.print(f"[red]{r.slide_id}: {r.error}[/]")
            continue
        store = read_store(store_path(out / "stores", r.slide_id))
        shapes = ", ".join(f"{name} {tuple(emb.shape)}" for name, emb in store.embeddings.items())
        console.print(f"{r.slide_id}: {r.outcome}; store {store_path(out / 'stores', r.slide_id)}: {shapes}")
    return results


def _demo_layout() -> np.ndarray:
    """Two tissue pieces: a large one that holds several 3x3 regions and a small one that holds none."""
    mask = np.zeros((190, 230), np.uint8)
    cv2.ellipse(mask, (95, 95), (85, 80), 15, 0, 360, 1, thickness=-1)
    cv2.ellipse(mask, (200, 150), (22, 30), 0, 0, 360, 1, thickness=-1)
    return mask.astype(bool)


def _montage(levels: tuple[np.ndarray, ...], t: int, tile_px: int, gap: int = 16) -> np.ndarray:
    """The region at each level side by side, each level reassembled from its tiles at common size."""
    side = t * tile_px
    panels = []
    for level, tiles in enumerate(levels):
        n = t * 2**level
        grid = tiles.reshape(n, n, tile_px, tile_px, 3).transpose(0, 2, 1, 3, 4).reshape(n * tile_px, n * tile_px, 3)
        panel = cv2.resize(grid, (side, side), interpolation=cv2.INTER_AREA)
        step = side / n
        for k in range(1, n):
            p = round(k * step)
            panel[:, p] = (0, 0, 0)
            panel[p, :] = (0, 0, 0)
        panels.append(panel)
    spacer = np.full((side, gap, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [spacer, p]
    return np.concatenate(row, axis=1)
