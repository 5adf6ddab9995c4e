"""One MEM pretraining step as the benchmark runs it: the model, its fused AdamW, the real region loader from
on-disk stores, bf16 autocast on a GPU. Shared by the timed runs and the profiled step, so both measure the same
work."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .. import devices
from ..data.regions import RegionSamplingConfig, RegionStream, index_stores
from ..train.optim import param_groups
from ..train.pretrain import PretrainConfig, build_model, count_flops


@dataclass
class TrainingSetup:
    """What a timed or profiled MEM step needs: the model, its optimizer, the real region loader and the precision."""

    model: torch.nn.Module
    step_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: Iterator[dict]
    autocast: torch.autocast
    device: torch.device
    precision: str
    flops_per_sample: float


def training_setup(
    paths: list[Path], device: torch.device, preset: str, batch: int, workers: int, compile: bool
) -> TrainingSetup:
    precision = "bf16" if device.type == "cuda" else "fp32"
    config = PretrainConfig(
        stores=str(paths[0].parent),
        out="unused",
        preset=preset,
        batch_size=batch,
        precision=precision,
        workers=workers,
        per_slide=max(64, batch // 4),
        pool=4,
    )
    sampling = RegionSamplingConfig(t=3, per_slide=config.per_slide, pool=config.pool, batch_size=batch, seed=0)
    entries, dim, n_levels = index_stores(paths, sampling)
    model, mixer_cfg = build_model(config, dim, n_levels)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    flops = count_flops(model, batch, mixer_cfg, config, device)
    loader = iter(
        DataLoader(
            RegionStream(entries, n_levels, sampling),
            batch_size=None,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers else None,
        )
    )
    autocast = devices.autocast(precision, device)
    return TrainingSetup(
        model, torch.compile(model) if compile else model, optimizer, loader, autocast, device, precision, flops
    )


def training_step(setup: TrainingSetup) -> None:
    x = next(setup.loader)["x"].to(setup.device, non_blocking=True).float()
    with setup.autocast:
        loss = setup.step_fn(x)["loss"]
    setup.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    setup.optimizer.step()
