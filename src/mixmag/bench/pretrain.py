"""Benchmark of pretraining: the region loader alone (regions/s per worker from on-disk stores), and
training steps with real batches from the loader (samples/s, counted FLOPs per sample, MFU against
a matmul rate measured here). The paper preset at batch 1024 on a GPU; the small preset on CPU."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from ..data.regions import RegionSamplingConfig, RegionStream, index_stores
from ..fileio import write_json_atomic
from ..markup import plain_console
from ..store import write_store
from ..synth.stores import synthetic_store
from ..train.pretrain import measure_matmul_tflops
from .mem_step import training_setup, training_step
from .step_profile import print_profile, profile_mem_step


def ensure_stores(workdir: Path, n: int = 8, dim: int = 1280) -> list[Path]:
    folder = workdir / f"stores-{dim}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"s{i}.h5"
        if not path.exists():
            write_store(path, synthetic_store(f"s{i}", seed=i, n_rows=14, n_cols=14, dim=dim))
        paths.append(path)
    return paths


def loader_rate(paths: list[Path], workers: int, batch: int = 128, n_batches: int = 100) -> float:
    cfg = RegionSamplingConfig(t=3, per_slide=256, pool=4, batch_size=batch, seed=0)
    entries, _, n_levels = index_stores(paths, cfg)
    loader = DataLoader(RegionStream(entries, n_levels, cfg), batch_size=None, num_workers=workers)
    it = iter(loader)
    next(it)  # worker start-up and the first chunk's reads are not the steady state
    start = time.perf_counter()
    regions = 0
    for _ in range(n_batches):
        regions += next(it)["x"].shape[0]
    return regions / (time.perf_counter() - start)


def train_rate(
    paths: list[Path],
    device: torch.device,
    preset: str,
    batch: int,
    steps: int,
    workers: int,
    compile: bool,
    warmup: int = 3,
) -> dict:
    setup = training_setup(paths, device, preset, batch, workers, compile)
    for _ in range(warmup):  # warm-up (and compilation)
        training_step(setup)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        training_step(setup)
    _sync(device)
    rate = batch * steps / (time.perf_counter() - start)
    peak = measure_matmul_tflops(device, setup.precision)
    return {
        "preset": preset,
        "batch": batch,
        "precision": setup.precision,
        "compiled": compile,
        "samples_per_s": rate,
        "workers": workers,
        "gflop_per_sample": setup.flops_per_sample / 1e9,
        "matmul_tflops": peak,
        "mfu": rate * setup.flops_per_sample / (peak * 1e12),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MFU_TARGET = 0.65  # issue 15: the paper mixer at batch 1024 with the real loader


def run_pretrain_benchmark(
    workdir: Path,
    *,
    console: Console | None = None,
    gpu_batch: int = 1024,
    steps: int | None = None,
    cpu_batch: int = 32,
    cpu_preset: str = "small",
    loader_batches: int = 100,
    profile_below: float = MFU_TARGET,
) -> dict:
    """Loader rates, then timed training steps; when the best MFU is under `profile_below`, one profiled step says where
    the time goes (attention kernel, optimizer, loader stalls, host-device copies)."""
    console = console or plain_console()
    workdir = Path(workdir)
    paths = ensure_stores(workdir)
    torch.set_num_threads(1)  # per-core figures on CPU
    results: dict = {
        "loader_regions_per_s": {
            "main process": loader_rate(paths, 0, n_batches=loader_batches),
            "1 worker": loader_rate(paths, 1, n_batches=loader_batches),
        }
    }
    runs = []
    if torch.cuda.is_available():
        device, preset, batch, workers = torch.device("cuda"), "paper", gpu_batch, 8
        for compile in (False, True):
            runs.append(train_rate(paths, device, preset, batch, steps or 20, workers=workers, compile=compile))
            console.print(
                f"training {'compiled' if compile else 'eager'}: {runs[-1]['samples_per_s']:,.0f} samples/s, "
                f"MFU {runs[-1]['mfu']:.1%}"
            )
            # saved now, so a run cut short later keeps these figures
            write_json_atomic(workdir / "bench_pretrain.json", results | {"training": runs})
    else:
        device, preset, batch, workers = torch.device("cpu"), cpu_preset, cpu_batch, 1
        runs.append(train_rate(paths, device, preset, batch, steps or 5, workers=workers, compile=False, warmup=1))
    results["training"] = runs
    _print(console, results)
    best = max(run["mfu"] for run in runs)
    if best < profile_below:
        console.print(f"MFU {best:.1%} is under {profile_below:.0%}: profiling one eager MEM step")
        results["profile"] = profile_mem_step(training_setup(paths, device, preset, batch, workers, compile=False))
        print_profile(console, results["profile"])
    write_json_atomic(workdir / "bench_pretrain.json", results)
    return results


def _print(console: Console, r: dict) -> None:
    table = Table(title="Pretraining benchmark (regions of 189 x 1280 fp16, augmented)")
    table.add_column("what")
    table.add_column("rate")
    table.add_column("note")
    for k, v in r["loader_regions_per_s"].items():
        table.add_row(
            f"region loader, {k}", f"{v:,.0f} regions/s", "from on-disk stores, 1 thread (target >= 3,000 per worker)"
        )
    for run in r["training"]:
        table.add_row(
            f"training, {run['preset']} preset, batch {run['batch']}, "
            f"{run['precision']}{', compiled' if run['compiled'] else ''}",
            f"{run['samples_per_s']:,.1f} samples/s",
            f"{run['gflop_per_sample']:.1f} GFLOP/sample (counted), MFU {run['mfu']:.1%} of {run['matmul_tflops']:.3g} "
            "TFLOP/s measured matmul",
        )
    console.print(table)
