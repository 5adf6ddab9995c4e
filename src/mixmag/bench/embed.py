"""Benchmark of the embedding stage.

CPU: the data path alone (read, derive levels, collate, then resize + normalise) in tiles/s per
DataLoader worker, on a generated 20x slide. GPU (when CUDA is there): the Virchow2 architecture
with random weights, end to end from the slide on disk in bf16, in tiles/s and as a fraction of the
bf16 matmul rate measured on the same GPU.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from ..encoders.extract import CellTiles, PerSlideBatches, SlideJob, collate, embed_slides
from ..encoders.model import DeviceTransform, build_encoder
from ..encoders.registry import get_preset
from ..fileio import write_json_atomic
from ..markup import plain_console
from ..slides.reader import Slide
from ..slides.tiling import TilingParams, make_plan
from ..synth.patterns import tissue_like
from ..synth.slide_writer import write_slide

VIRCHOW2_GFLOP_PER_TILE = 340.0  # forward pass at 224 px, from the reference measurement


def bench_plan(workdir: Path, side: int) -> SlideJob:
    path = workdir / f"embed-20x-{side}.svs"
    if not path.exists():
        image = tissue_like(side, side, 0.5, seed=5, tissue_mask=np.ones((8, 8), bool))
        write_slide(path, image, 0.5, downsamples=(1, 4, 16), flavor="aperio", tile=256, quality=90)
    with Slide(path) as slide:
        plan, _, _ = make_plan(slide, TilingParams(region_size=1, tissue_threshold=0.0), slide_id=path.stem)
    return SlideJob(path.stem, plan)


def data_path_rate(job: SlideJob, workers: int, normalise: bool, cells_per_batch: int = 8) -> float:
    """Tiles/s through DataLoader + collate (uint8, what feeds the GPU), optionally + resize/normalise on CPU."""
    dataset = CellTiles([job])
    loader = DataLoader(
        dataset, batch_sampler=PerSlideBatches(dataset, cells_per_batch), num_workers=workers, collate_fn=collate
    )
    transform = DeviceTransform(get_preset("virchow2").transform)
    tiles = 0
    start = time.perf_counter()
    for _, _, batch, _ in loader:
        if normalise:
            transform(batch)
        tiles += batch.shape[0]
    return tiles / (time.perf_counter() - start)


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def gpu_end_to_end(job: SlideJob, device: torch.device, workers: int, cells_per_batch: int, compile: bool) -> dict:
    encoder = build_encoder("virchow2", random_init=True).to(device)
    if compile:
        encoder.backbone = torch.compile(encoder.backbone)
    # warm-up (and compilation) on a few cells
    warm = SlideJob(job.slide_id, job.plan.model_copy(update={"cells": job.plan.cells[: 2 * cells_per_batch]}))
    embed_slides([warm], encoder, device=device, cells_per_batch=cells_per_batch, workers=0)
    torch.cuda.synchronize(device)
    tiles = 0

    def count(n_tiles: int) -> None:
        nonlocal tiles
        tiles += n_tiles

    start = time.perf_counter()
    embed_slides([job], encoder, device=device, cells_per_batch=cells_per_batch, workers=workers, on_batch=count)
    torch.cuda.synchronize(device)
    return {
        "tiles_per_s": tiles / (time.perf_counter() - start),
        "compiled": compile,
        "workers": workers,
        "cells_per_batch": cells_per_batch,
    }


def run_embed_benchmark(
    workdir: Path, *, side: int = 6144, workers: int = 8, cells_per_batch: int = 16, console: Console | None = None
) -> dict:
    console = console or plain_console()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    job = bench_plan(workdir, side)
    results: dict = {"slide": job.plan.slide.path, "cells": job.n_cells, "tiles": 21 * job.n_cells}
    torch.set_num_threads(1)
    results["cpu_data_path_tiles_per_s"] = {
        "1 worker, uint8 batches (GPU feed)": data_path_rate(job, 1, normalise=False),
        "1 worker + CPU resize/normalise": data_path_rate(job, 1, normalise=True),
    }
    if torch.cuda.is_available():
        device = torch.device("cuda")
        tflops = matmul_tflops(device)
        results["gpu"] = {"name": torch.cuda.get_device_name(device), "bf16_matmul_tflops": tflops, "runs": []}
        for compile in (False, True):
            run = gpu_end_to_end(job, device, workers, cells_per_batch, compile)
            run["fraction_of_matmul_rate"] = run["tiles_per_s"] * VIRCHOW2_GFLOP_PER_TILE / 1e3 / tflops
            results["gpu"]["runs"].append(run)
            console.print(f"Virchow2 {'compiled' if compile else 'eager'}: {run['tiles_per_s']:,.0f} tiles/s")
            write_json_atomic(workdir / "bench_embed.json", results)  # kept if a later run is cut short
    _print(console, results)
    write_json_atomic(workdir / "bench_embed.json", results, indent=1)
    return results


def _print(console: Console, r: dict) -> None:
    table = Table(title=f"Embedding benchmark ({r['cells']} cells = {r['tiles']} tiles of a generated 20x slide)")
    table.add_column("what")
    table.add_column("tiles/s")
    table.add_column("note")
    for k, v in r["cpu_data_path_tiles_per_s"].items():
        table.add_row(f"CPU data path, {k}", f"{v:.0f}", "read + derive 5x/10x from 20x + collate, 1 thread")
    if "gpu" in r:
        g = r["gpu"]
        for run in g["runs"]:
            table.add_row(
                f"{g['name']} Virchow2 bf16 {'compiled' if run['compiled'] else 'eager'}",
                f"{run['tiles_per_s']:.0f}",
                f"{run['fraction_of_matmul_rate']:.0%} of {g['bf16_matmul_tflops']:.0f} TFLOP/s matmul; "
                f"{run['workers']} workers, {run['cells_per_batch']} cells/batch",
            )
    else:
        table.add_row("GPU end to end", "-", "no CUDA device here")
    console.print(table)
