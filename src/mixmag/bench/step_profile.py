"""Where one MEM step's time goes, for when the benchmark misses its MFU target: phases timed with the device
synchronised between them (waiting on the loader, host-to-device copy, forward, backward, optimizer), then one step
under torch.profiler for what wall times cannot show (which attention kernel ran, how many copies crossed the bus)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch.profiler import ProfilerActivity, profile

from .mem_step import TrainingSetup, training_step

# scaled_dot_product_attention's backends as their aten ops name them (torch 2.4 to 2.14; CPU has its own flash kernel)
ATTENTION_BACKENDS = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "memory-efficient",
    "_scaled_dot_product_cudnn_attention": "cuDNN",
    "_scaled_dot_product_fused_attention_overrideable": "fused (backend override)",
    "_scaled_dot_product_attention_math": "math (unfused: slow)",
}
PHASES = ("loader wait", "host->device copy", "forward", "backward", "optimizer")


def profile_mem_step(setup: TrainingSetup, timed_steps: int = 3) -> dict:
    """Phase times (ms, mean over `timed_steps` synchronised steps) and the profiler's view of one more step."""
    training_step(setup)  # warm-up: first-call allocations and kernel selection
    totals = dict.fromkeys(PHASES, 0.0)
    for _ in range(timed_steps):
        for phase, seconds in _timed_phases(setup).items():
            totals[phase] += seconds * 1e3 / timed_steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        training_step(setup)
        _sync(setup.device)
    events = prof.key_averages()
    return {
        "device": setup.device.type,
        "phases_ms": totals,
        "step_ms": sum(totals.values()),
        "attention": _attention(events),
        "copies": _copies(events),
    }


def _timed_phases(setup: TrainingSetup) -> dict[str, float]:
    times: dict[str, float] = {}
    state: dict = {}

    def timed(phase: str, work: Callable[[], None]) -> None:
        start = time.perf_counter()
        work()
        _sync(setup.device)
        times[phase] = time.perf_counter() - start

    def forward() -> None:
        with setup.autocast:
            state["loss"] = setup.step_fn(state["x"])["loss"]

    def backward() -> None:
        setup.optimizer.zero_grad(set_to_none=True)
        state["loss"].backward()

    timed("loader wait", lambda: state.update(batch=next(setup.loader)))
    timed("host->device copy", lambda: state.update(x=state["batch"]["x"].to(setup.device, non_blocking=True).float()))
    timed("forward", forward)
    timed("backward", backward)
    timed("optimizer", setup.optimizer.step)
    return times


def _attention(events) -> dict:
    """The attention backends that ran, by the aten op that dispatched them, with their calls."""
    used: dict = {}
    for event in events:
        op = event.key.removeprefix("aten::")
        if op in ATTENTION_BACKENDS:
            used[ATTENTION_BACKENDS[op]] = used.get(ATTENTION_BACKENDS[op], 0) + event.count
    return used


def _copies(events) -> dict:
    """Host<->device traffic: copy kernels by direction (GPU) and host syncs (`.item()` and the like) in one step."""
    out = {"HtoD": [0, 0.0], "DtoH": [0, 0.0], "DtoD": [0, 0.0]}
    syncs = 0
    for event in events:
        name = event.key
        for direction in out:
            if f"Memcpy {direction}" in name:
                out[direction][0] += event.count
                out[direction][1] += _device_us(event) / 1e3
        if name == "aten::_local_scalar_dense":
            syncs += event.count
    copies = {f"{d} copies": n for d, (n, _) in out.items()}
    copies |= {f"{d} ms": round(ms, 3) for d, (_, ms) in out.items()}
    copies["host syncs (.item())"] = syncs
    return copies


def _device_us(event) -> float:
    # torch 2.4 names it cuda_time_total; later versions device_time_total
    return float(getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0) or 0.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def print_profile(console: Console, p: dict) -> None:
    table = Table(
        title=f"One eager MEM step on {p['device']}: {p['step_ms']:.1f} ms with the device synchronised per phase"
    )
    table.add_column("what")
    table.add_column("value")
    for phase, ms in p["phases_ms"].items():
        table.add_row(phase, f"{ms:.1f} ms ({ms / max(p['step_ms'], 1e-9):.0%})")
    attention = (
        ", ".join(f"{name} x{n}" for name, n in p["attention"].items()) or "no scaled_dot_product_attention op seen"
    )
    table.add_row("attention kernel", attention)
    for what, value in p["copies"].items():
        table.add_row(what, str(value))
    console.print(table)
