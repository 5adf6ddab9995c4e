"""Where mixmag computes: the device, the precision tile embeddings are computed in, and torchrun's ranks.

One module decides these so that every stage (embed, pretrain, encode, predict) makes the same choice, and the
stores record the precision that was actually used.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from .errors import ConfigError
from .ranks import DistInfo, dist_from_env


def choose_device(name: str | None = None, dist: DistInfo = DistInfo()) -> torch.device:
    """The device named (cuda, cuda:1, cpu), else (no name, or "auto") this rank's GPU when there is one, else the
    CPU: one rule for every stage. A name torch does not know, or a GPU this machine does not have, is a ConfigError
    here rather than a traceback mid-run."""
    if not name or name == "auto":
        return torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a device name; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(
                f"device {name!r}: this machine has {count} usable CUDA GPU(s); use cpu"
                + (f" or cuda:0..cuda:{count - 1}" if count else "")
            )
    return device


def start_distributed(device: str | None = None, *, process_group: bool = True) -> tuple[DistInfo, torch.device]:
    """Rank info from torchrun's environment, this rank's device, and the process group when there is more than
    one rank and the stage's ranks talk to each other (pretraining; embedding's ranks only report through
    torchrun's store)."""
    dist = dist_from_env()
    dev = choose_device(device, dist)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.active and process_group:
        # torch._dynamo (imported by timm) keeps references to a group that exists when it is first imported, and a
        # group that outlives destroy_process_group() keeps gloo threads that can abort the process at exit
        importlib.import_module("torch._dynamo")
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist, dev


def stop_distributed() -> None:
    """End the process group, if one was started (its threads must not outlive the interpreter)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def describe_device(device: torch.device, asked: str | None) -> str:
    """One line for the output: where a stage runs and why (asked for, or the automatic choice)."""
    if asked and asked != "auto":
        return f"device: {device} (asked for)"
    return f"device: {device} ({'a GPU is available' if device.type == 'cuda' else 'no GPU found'}; --device to choose)"


def embedding_precision(device: torch.device) -> str:
    """What tile encoders compute in on this device: bf16 autocast on CUDA, fp32 elsewhere (CPUs gain nothing)."""
    return "bf16" if device.type == "cuda" else "fp32"


def compute_dtype(device: torch.device) -> str:
    """The name a store records for the precision its embeddings were computed in."""
    return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[embedding_precision(device)]


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of a precision setting (bf16, fp16 or fp32) on a device."""
    if precision == "fp32":
        return nullcontext()
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("fp16 needs a GPU; use bf16 or fp32 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def embedding_autocast(device: torch.device) -> AbstractContextManager:
    return autocast(embedding_precision(device), device)


@contextmanager
def core_left_for_reading(device: torch.device, reading: bool) -> Iterator[None]:
    """While a background thread reads data (bags read ahead) and the CPU computes, one core fewer for torch's
    intra-op threads: on this project's 2-core machine an AB-MIL epoch with bags read from disk took 0.048 s a slide
    with 1 thread + the reader against 0.061 s with 2 threads and no reader and 0.068 s with 2 threads + the reader
    (the reader pre-empted a compute thread that the others then waited for)."""
    threads = torch.get_num_threads()
    if not reading or device.type != "cpu" or threads < 2:
        yield
        return
    torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_kept = False


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory for the next batch instead of handing it back to the kernel.

    A CPU encoder batch makes intermediate tensors of ~100 MB; glibc serves each with a fresh mmap (anything above its
    32 MB ceiling for the heap) and unmaps it when freed, so every batch pays the kernel to zero-fill the same pages
    again: measured, 70% of the stats encoder's CPU was that system time (5.1-6.0 CPU s against 1.5-1.7 s for ten
    168-tile batches; same embeddings to the bit, ~60 MB more peak). Once per process; False where the C library is
    not glibc (nothing changes there)."""
    global _kept
    if _kept:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    return _kept
