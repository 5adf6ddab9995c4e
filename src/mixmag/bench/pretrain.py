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
from ..store import write_store
from ..synth.stores import synthetic_store
from ..train.optim import param_groups
from ..train.pretrain import PretrainConfig, build_model, count_flops, measure_matmul_tflops


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


def train_rate(paths: list[Path], device: torch.device, preset: str, batch: int, steps: int, workers: int, compile: bool) -> dict:
    precision = "bf16" if device.type == "cuda" else "fp32"
    config = PretrainConfig(stores=str(paths[0].parent), out="unused", preset=preset, batch_size=batch, precision=precision,
                            workers=workers, per_slide=max(64, batch // 4), pool=4)
    sampling = RegionSamplingConfig(t=3, per_slide=config.per_slide, pool=config.pool, batch_size=batch, seed=0)
    entries, dim, n_levels = index_stores(paths, sampling)
    model, mixer_cfg = build_model(config, dim, n_levels)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    flops = count_flops(model, batch, mixer_cfg, config, device)
    step_fn = torch.compile(model) if compile else model
    loader = iter(DataLoader(RegionStream(entries, n_levels, sampling), batch_size=None, num_workers=workers,
                             pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(device.type, enabled=False)

    def one_step() -> None:
        x = next(loader)["x"].to(device, non_blocking=True).float()
        with autocast:
            loss = step_fn(x)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up (and compilation)
        one_step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    _sync(device)
    rate = batch * steps / (time.perf_counter() - start)
    peak = measure_matmul_tflops(device, precision)
    return {"preset": preset, "batch": batch, "precision": precision, "compiled": compile, "samples_per_s": rate,
            "gflop_per_sample": flops / 1e9, "matmul_tflops": peak, "mfu": rate * flops / (peak * 1e12)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pretrain_benchmark(workdir: Path, *, console: Console | None = None, gpu_batch: int = 1024, steps: int | None = None) -> dict:
    console = console or Console()
    workdir = Path(workdir)
    paths = ensure_stores(workdir)
    torch.set_num_threads(1)  # per-core figures on CPU
    results: dict = {"loader_regions_per_s": {"main process": loader_rate(paths, 0), "1 worker": loader_rate(paths, 1)}}
    runs = []
    if torch.cuda.is_available():
        device = torch.device("cuda")
        for compile in (False, True):
            runs.append(train_rate(paths, device, "paper", gpu_batch, steps or 20, workers=8, compile=compile))
    else:
        runs.append(train_rate(paths, torch.device("cpu"), "small", 32, steps or 5, workers=1, compile=False))
    results["training"] = runs
    _print(console, results)
    write_json_atomic(workdir / "bench_pretrain.json", results, indent=1)
    return results


def _print(console: Console, r: dict) -> None:
    table = Table(title="Pretraining benchmark (regions of 189 x 1280 fp16, augmented)")
    table.add_column("what")
    table.add_column("rate")
    table.add_column("note")
    for k, v in r["loader_regions_per_s"].items():
        table.add_row(f"region loader, {k}", f"{v:,.0f} regions/s", "from on-disk stores, 1 thread (target >= 3,000 per worker)")
    for run in r["training"]:
        table.add_row(
            f"training, {run['preset']} preset, batch {run['batch']}, {run['precision']}{', compiled' if run['compiled'] else ''}",
            f"{run['samples_per_s']:,.1f} samples/s",
            f"{run['gflop_per_sample']:.1f} GFLOP/sample (counted), MFU {run['mfu']:.1%} of {run['matmul_tflops']:.1f} TFLOP/s measured matmul",
        )
    console.print(table)
