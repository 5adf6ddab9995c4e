"""Pretraining of the region mixer with MEM or CMEM: config, engine, checkpoints, logs.

One loop for one CPU or many GPUs: under `torchrun` the model is wrapped in DDP and each rank reads
its own share of the region stream. Checkpoints hold model, optimiser, scaler, step and RNG state,
and the stream restarts at the checkpoint's batch, so a resumed run follows the same trajectory.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator
from torch.utils.data import DataLoader

from .. import __version__, devices
from ..catalog import Catalog, CatalogReport, load_catalog_with_report
from ..config import (
    MAX_BATCH,
    MAX_LR,
    MAX_SEED,
    MAX_STEPS,
    MAX_WEIGHT_DECAY,
    MAX_WORKERS,
)
from ..config import load_config as load_yaml_config
from ..data.cohort import load_cohort, table_task
from ..data.regions import RegionSamplingConfig, RegionStream, SlideSampling, catalog_stores
from ..errors import ConfigError, RunError, TrainingDivergedError
from ..fileio import (
    FolderLock,
    append_atomic,
    atomic_path,
    inside_folder,
    make_folder,
    write_csv_atomic,
    write_json_atomic,
)
from ..models.mem import MEMPretrainer, n_masked
from ..models.mixer import MixerConfig, MixerOverrides, mixer_config
from ..runs import REPRETRAIN, PretrainRun
from ..store import STORE_SUFFIX
from ..weights_io import UnsafeCheckpointError, load_torch_weights
from .mixer_file import export_mixer
from .optim import param_groups, warmup_cosine

MAX_REGION = 64  # t and c, in cells
MAX_PER_SLIDE = 1 << 16
MAX_POOL = 1 << 14
MAX_CHUNK_WINDOWS = 1 << 22  # pool x per_slide: the windows of one chunk are drawn into memory together
Beta = Annotated[float, Field(ge=0, lt=1)]


class PretrainSettings(BaseModel):
    """How to pretrain (the `pretrain:` section of a demo config); defaults are the paper's recipe (batch 4096,
    200M samples = 48,828 steps, AdamW 0.9/0.95, lr 1.5e-4 x batch / 256) with settings for one machine."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # what may differ between a checkpoint and the config that resumes it; every other field must match
    MAY_CHANGE_ON_RESUME: ClassVar[frozenset[str]] = frozenset(
        {"out", "steps", "log_every", "checkpoint_every", "compile", "tensorboard", "check_replicas", "peak_tflops"}
    )

    preset: str = "paper"
    mixer: MixerOverrides = Field(
        default_factory=MixerOverrides, description="overrides of the mixer preset (dim, depth, mlp, ...)"
    )
    t: int = Field(3, ge=1, le=MAX_REGION)
    mask_ratio: float = Field(0.5, description="r: fraction of the s tokens hidden")
    context: int | None = Field(
        None, ge=1, le=MAX_REGION, description="c: CMEM with two t x t crops of a c x c context; None = MEM"
    )
    tau: float = Field(0.2, gt=0, le=100)
    mem_reduction: Literal["mean", "sum"] = Field(
        "mean", description="CMEM: the two crops' MEM losses averaged or added"
    )
    contrastive: Literal["paper", "symmetric"] = Field(
        "paper",
        description="CMEM eq. 5: 'paper' = z against z' only, "
        "positive left out of the denominator; 'symmetric' = InfoNCE both ways",
    )
    batch_size: int = Field(4096, ge=2, le=MAX_BATCH, description="global batch (split evenly across ranks)")
    steps: int = Field(48828, ge=1, le=MAX_STEPS)
    warmup_steps: int = Field(2000, ge=0, le=MAX_STEPS)
    base_lr: float = Field(1.5e-4, gt=0, le=MAX_LR, description="lr = base_lr * batch_size / 256")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.05, ge=0, le=MAX_WEIGHT_DECAY)
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    grad_clip: float | None = Field(1.0, gt=0, le=1e6)
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    workers: int = Field(4, ge=0, le=MAX_WORKERS)
    per_slide: int = Field(16, ge=1, le=MAX_PER_SLIDE, description="windows drawn from a slide per visit")
    pool: int = Field(8, ge=1, le=MAX_POOL, description="slides loaded together; shuffling spans them")
    slide_sampling: SlideSampling = Field(
        "uniform",
        description="'uniform': each slide once an epoch; 'regions': slides "
        "drawn in proportion to their window count (from the store catalog)",
    )
    augment: bool = True
    log_every: int = Field(10, ge=1, le=MAX_STEPS)
    checkpoint_every: int = Field(200, ge=1, le=MAX_STEPS)
    compile: bool = False
    tensorboard: bool = True
    check_replicas: bool = Field(False, description="compare weights across ranks after every step (tests)")
    peak_tflops: float | None = Field(None, gt=0, le=1e6, description="for MFU; measured at start when not given")

    @field_serializer("mixer")
    def _given_mixer_fields(self, mixer: MixerOverrides) -> dict:
        return mixer.given()

    @model_validator(mode="after")
    def _check(self) -> PretrainSettings:
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio r must be in (0, 1), got {self.mask_ratio}")
        if self.context is not None and self.t > self.context:
            raise ValueError(f"t = {self.t} is larger than the context c = {self.context}")
        if self.pool * self.per_slide > MAX_CHUNK_WINDOWS:
            raise ValueError(
                f"pool x per_slide = {self.pool * self.per_slide:,} windows would be drawn into memory at once "
                f"(at most {MAX_CHUNK_WINDOWS:,}); lower pool or per_slide"
            )
        return self

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256


class PretrainConfig(PretrainSettings):
    """Everything that defines a pretraining run (YAML in `configs/`); a typo is an error."""

    stores: str = Field(description="folder of per-slide stores (*.h5) from `mixmag embed`")
    exclude_test_of: list[str] = Field(
        default_factory=list,
        description="cohort CSVs whose test-split slides are left "
        "out, so that no slide a model is evaluated on was seen in pretraining",
    )
    out: str = Field(description="run folder: checkpoints, logs, the final mixer")

    def resume_conflicts(self, saved: dict) -> list[str]:
        """The fields (not listed in MAY_CHANGE_ON_RESUME) whose value differs from a checkpoint's saved config;
        a field the checkpoint predates counts as its default."""
        now = self.model_dump(mode="json")
        fields = type(self).model_fields
        conflicts = []
        for name in sorted(set(now) - self.MAY_CHANGE_ON_RESUME):
            then = (
                saved[name]
                if name in saved
                else json.loads(json.dumps(fields[name].get_default(call_default_factory=True), default=_jsonable))
            )
            if json.dumps(then, sort_keys=True) != json.dumps(now[name], sort_keys=True):
                conflicts.append(name)
        return conflicts


def _jsonable(value):
    return value.given() if isinstance(value, MixerOverrides) else str(value)


def load_config(path: str | Path, sets: list[str] | None = None) -> PretrainConfig:
    return load_yaml_config(PretrainConfig, path, sets)


def build_model(config: PretrainConfig, in_dim: int, n_levels: int) -> tuple[MEMPretrainer, MixerConfig]:
    if config.mixer.in_dim is not None and config.mixer.in_dim != in_dim:
        raise ConfigError(f"mixer in_dim {config.mixer.in_dim} does not match the stores' embedding dimension {in_dim}")
    mc = mixer_config(config.preset, **(config.mixer.given() | {"in_dim": in_dim, "t": config.t, "n_levels": n_levels}))
    n_masked(mc.seq_len, config.mask_ratio)
    model = MEMPretrainer(
        mc,
        config.mask_ratio,
        contrastive=config.context is not None,
        tau=config.tau,
        mem_reduction=config.mem_reduction,
        contrastive_form=config.contrastive,
    )
    return model, mc


def stores_catalog(folder: str | Path) -> Catalog:
    """The folder's stores (flat or in sub-folders) from its catalog, refreshed against the folder (mixmag.catalog)."""
    return stores_catalog_with_report(folder)[0]


def stores_catalog_with_report(folder: str | Path) -> tuple[Catalog, CatalogReport]:
    """stores_catalog, and what its refresh found: a command that owes every store a result counts the unreadable
    ones (each already named in a warning) among its failures."""
    catalog, report = load_catalog_with_report(folder) if Path(folder).is_dir() else (None, CatalogReport())
    if not catalog:
        if report.unreadable:
            raise ConfigError(
                f"{folder}: none of its {len(report.unreadable)} store(s) is readable (each is named above): "
                "re-run `mixmag embed` for them"
            )
        raise ConfigError(f"{folder}: no stores (*{STORE_SUFFIX}); run `mixmag embed` first")
    return catalog, report


def store_paths(folder: str | Path) -> list[Path]:
    return stores_catalog(folder).paths()


def pretraining_catalog(config: PretrainConfig) -> Catalog:
    """The stores folder's catalog, less the test slides of the cohorts named in exclude_test_of (by slide id, or by
    the path a cohort's `store` column names)."""
    held_ids, held_paths = set(), set()
    for table in config.exclude_test_of:
        cohort = load_cohort(table, config.stores, require_stores=False, task=table_task(table))
        test = [slide for specimen in cohort.split("test") for slide in specimen.slides]
        held_ids |= set(test)
        held_paths |= {cohort.stores[slide].resolve() for slide in test if slide in cohort.stores}
    catalog = stores_catalog(config.stores)
    if held_ids:
        catalog = catalog.subset(lambda e: e.slide_id not in held_ids and catalog.path(e).resolve() not in held_paths)
    if not len(catalog):
        raise ConfigError(
            f"{config.stores}: every store is a test slide of {', '.join(config.exclude_test_of)}; nothing left to "
            "pretrain on"
        )
    return catalog


def pretraining_stores(config: PretrainConfig) -> list[Path]:
    return pretraining_catalog(config).paths()


def run_pretraining(
    config: PretrainConfig,
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    on_log=None,
    on_resume=None,
    on_step=None,
) -> dict:
    """Train until config.steps; resumes from out/checkpoints/last.pt when present (`on_resume(step, checkpoint)` says
    from where). Returns the last log row. Rank 0 locks the run folder: a second run on it is refused, naming the
    process that holds it, instead of both writing one log and one checkpoint. `on_step(step)` is called on rank 0
    after every optimiser step (a progress bar counts steps done)."""
    with FolderLock(config.out, "pretraining") if rank == 0 else nullcontext():
        return _pretrain(
            config,
            device=device,
            rank=rank,
            world_size=world_size,
            on_log=on_log,
            on_resume=on_resume,
            on_step=on_step if rank == 0 else None,
        )


def _pretrain(
    config: PretrainConfig, *, device: torch.device, rank: int, world_size: int, on_log, on_resume, on_step=None
) -> dict:
    out = Path(config.out)
    if config.batch_size % world_size:
        raise ConfigError(f"batch_size {config.batch_size} does not split evenly over {world_size} ranks")
    local_batch = config.batch_size // world_size
    sampling = _sampling(config, local_batch)
    catalog = pretraining_catalog(config)
    settings = catalog.shared_settings()  # refuses a folder mixing encoders or tilings: one check over the catalog
    space = settings.space.key()  # what a checkpoint's weights are tied to
    entries, in_dim, n_levels = catalog_stores(catalog, sampling)
    torch.manual_seed(config.seed)
    model, mixer_cfg = build_model(config, in_dim, n_levels)
    model.to(device)
    distributed = world_size > 1
    net = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if distributed
        else model
    )
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas, fused=device.type == "cuda"
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    ckpt_path = PretrainRun(out).checkpoint
    step = _open_run(out, config, mixer_cfg, (model, optimizer, scaler), world_size, device, space, rank, on_resume)
    stream = RegionStream(entries, n_levels, sampling, rank=rank, world_size=world_size, start_batch=step)
    forward = torch.compile(net) if config.compile else net
    autocast = devices.autocast(config.precision, device)
    flops_per_sample = count_flops(model, local_batch, mixer_cfg, config, device) if step < config.steps else 0.0
    peak = (config.peak_tflops or measure_matmul_tflops(device, config.precision)) * 1e12
    logger = RunLogger(out, enabled=rank == 0, tensorboard=config.tensorboard, resume_step=step)
    gather = _gatherer(world_size) if distributed and config.context else None
    last: dict = {}
    timer = time.perf_counter()
    samples_since = 0
    for batch in _loader(stream, config, device):
        if step >= config.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warmup_cosine(step, config.warmup_steps, config.steps, config.min_lr_ratio)
        torch.manual_seed(_step_seed(config.seed, rank, step))  # masks depend on (seed, rank, step) only: resumable
        with autocast:
            losses = _forward(forward, batch, gather, device)
        if not torch.isfinite(losses["loss"]):
            raise TrainingDivergedError(
                f"{out}: step {step}: the loss is {losses['loss'].item()}; lower base_lr or use precision fp32/bf16"
            )
        _backward(losses["loss"], model, optimizer, scaler, config.grad_clip)
        step += 1
        samples_since += config.batch_size
        if on_step is not None:
            on_step(step)
        replica_diff = replica_spread(model) if (distributed and config.check_replicas) else 0.0
        if step % config.log_every == 0 or step == config.steps or config.check_replicas:
            elapsed = time.perf_counter() - timer
            rate = samples_since / elapsed if elapsed > 0 else 0.0
            last = _log_row(step, config.batch_size, optimizer, losses, rate, flops_per_sample, peak, replica_diff)
            logger.log(last)
            if on_log is not None and rank == 0:
                on_log(last)
            timer, samples_since = time.perf_counter(), 0
        if step % config.checkpoint_every == 0 or step == config.steps:
            if rank == 0:
                save_checkpoint(ckpt_path, model, optimizer, scaler, step, config, mixer_cfg, world_size, device, space)
            if distributed:
                torch.distributed.barrier()
    logger.close()
    if rank == 0:
        export_mixer(out, model.mixer, mixer_cfg, config.model_dump(), settings)
    return last


def _log_row(
    step: int, batch_size: int, optimizer, losses: dict, rate: float, flops: float, peak: float, spread: float
):
    """log.csv's row of a step: samples seen, the learning rate, the losses, throughput and model FLOPs utilisation."""
    return {
        "step": step,
        "samples": step * batch_size,
        "lr": optimizer.param_groups[0]["lr"],
        **{k: float(v.detach()) for k, v in losses.items()},
        "samples_per_s": rate,
        "mfu": rate * flops / peak if peak else 0.0,
        "replica_max_diff": spread,
    }


def _sampling(config: PretrainConfig, local_batch: int) -> RegionSamplingConfig:
    """How this rank draws its regions (its share of the batch)."""
    return RegionSamplingConfig(
        t=config.t,
        context=config.context,
        per_slide=config.per_slide,
        pool=config.pool,
        batch_size=local_batch,
        seed=config.seed,
        augment=config.augment,
        slide_sampling=config.slide_sampling,
    )


def _open_run(
    out: Path,
    config: PretrainConfig,
    mixer_cfg: MixerConfig,
    state: tuple[Any, Any, Any],
    world_size: int,
    device,
    space,
    rank,
    on_resume,
) -> int:
    """The step the run starts from: resumed from its checkpoint (`state`: model, optimiser, scaler, restored in
    place) or 0; rank 0 checks the folder's log and writes config.json before anything else is written."""
    step = 0
    ckpt_path = PretrainRun(out).checkpoint
    inside_folder(out, ckpt_path.parent, "checkpoints folder")  # a linked checkpoints/ never writes elsewhere
    if ckpt_path.is_file():
        step = _resume(ckpt_path, config, *state, world_size, device, space)
        if on_resume is not None and rank == 0:
            on_resume(step, ckpt_path)
    if rank == 0:
        PretrainRun(out).read_log()  # another run's or a damaged log.csv is refused before anything is written
        make_folder(out)
        write_json_atomic(
            PretrainRun(out).config, config.model_dump() | {"mixer_resolved": asdict(mixer_cfg)}, indent=1
        )
    return step


def _loader(stream: RegionStream, config: PretrainConfig, device: torch.device) -> DataLoader:
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if config.workers else None,
        persistent_workers=config.workers > 0,
    )


def _forward(forward, batch: dict, gather, device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's losses (the views x and, for CMEM, x')."""
    x = batch["x"].to(device, non_blocking=True)
    x_prime = batch["x_prime"].to(device, non_blocking=True) if "x_prime" in batch else None
    return forward(x.float(), None if x_prime is None else x_prime.float(), gather)


def _backward(loss: torch.Tensor, model, optimizer, scaler, grad_clip: float | None) -> None:
    """One optimiser step on the loss (scaled for fp16, gradients clipped when asked)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 10_007 + step) % (2**63)


def _gatherer(world_size: int):
    """All-gather z' across ranks with gradients, returning (all z', this rank's offset)."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    def gather(z: torch.Tensor):
        parts = dist_fn.all_gather(z)
        return torch.cat(parts), dist.get_rank() * z.shape[0]

    return gather


@torch.no_grad()
def replica_spread(model: torch.nn.Module) -> float:
    """Largest difference across ranks of a weight checksum (0 when replicas agree)."""
    import torch.distributed as dist

    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, total)
    values = torch.cat(gathered)
    return float(values.max() - values.min())


def count_flops(model: MEMPretrainer, batch: int, mixer_cfg: MixerConfig, config: PretrainConfig, device) -> float:
    """Training FLOPs per sample (forward + backward), counted by torch's FLOP counter on a small batch."""
    from torch.utils.flop_counter import FlopCounterMode

    n = min(batch, 4)
    x = torch.randn(n, mixer_cfg.seq_len, mixer_cfg.in_dim, device=device)
    x_prime = torch.randn_like(x) if config.context else None
    counter = FlopCounterMode(display=False)
    with counter:
        losses = model(x, x_prime)
        losses["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / n


def measure_matmul_tflops(device: torch.device, precision: str) -> float:
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if (device.type == "cuda" and precision != "fp32") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    reps = 10 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    scaler,
    step: int,
    config: PretrainConfig,
    mixer_cfg: MixerConfig,
    world_size: int,
    device,
    space: str = "",
) -> None:
    state = {
        "format": "mixmag-pretrain-checkpoint-1",
        "mixmag_version": __version__,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "config": json.dumps(config.model_dump()),
        "mixer": json.dumps(asdict(mixer_cfg)),
        "world_size": world_size,
        "embedding_space": space,
    }
    # through a file object: on a full disk torch.save(path) says only "unexpected pos", a file object's OSError is kept
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


CHECKPOINT_KEYS = ("step", "model", "optimizer", "scaler", "config", "world_size")


def load_checkpoint(path: Path, device) -> dict:
    """A pretraining checkpoint, read weights-only; anything else is refused in one sentence."""
    fix = "delete it (and the run folder's log.csv) to start over, or resume from a checkpoint mixmag wrote"
    state = load_torch_weights(path, fix=fix, map_location=device)
    if (
        not isinstance(state, dict)
        or any(k not in state for k in CHECKPOINT_KEYS)
        or not isinstance(state["config"], str)
    ):
        raise UnsafeCheckpointError(
            f"{path} is not a mixmag pretraining checkpoint (needs {', '.join(CHECKPOINT_KEYS)}); {fix}"
        )
    try:
        json.loads(state["config"])
    except ValueError:
        raise UnsafeCheckpointError(f"{path}: its saved config is not JSON; {fix}") from None
    return state


def _resume(
    path: Path, config: PretrainConfig, model, optimizer, scaler, world_size: int, device, space: str = ""
) -> int:
    state = load_checkpoint(path, device)
    changed = config.resume_conflicts(json.loads(state["config"]))
    if state.get("embedding_space") and state["embedding_space"] != space:
        changed.append(f"the stores were re-embedded differently (then {state['embedding_space']}, now {space})")
    if changed or state["world_size"] != world_size:
        raise ConfigError(
            f"{path}: the checkpoint was made with other settings "
            f"({', '.join(changed) or 'world size ' + str(state['world_size'])}); "
            "resume with the same config (only "
            + ", ".join(sorted(config.MAY_CHANGE_ON_RESUME))
            + " may change), or start a new run folder"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["step"])


class RunLogger:
    """CSV (always) and TensorBoard (when installed and enabled) logs of rank 0."""

    def __init__(self, out: Path, *, enabled: bool, tensorboard: bool, resume_step: int) -> None:
        self.enabled = enabled
        self.path = PretrainRun(out).log
        self.fields: list[str] | None = None
        self.writer = None
        if not enabled:
            return
        make_folder(out)
        if self.path.exists():
            rows = PretrainRun(out).log_rows_up_to(resume_step)
            self.fields = list(rows[0]) if rows else None
            if rows:  # the rows after the checkpoint are done again: drop them
                write_csv_atomic(self.path, list(rows[0]), [list(r.values()) for r in rows])
            else:
                self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                logs = inside_folder(out, PretrainRun(out).tensorboard, "tensorboard folder")
                self.writer = SummaryWriter(str(logs), purge_step=resume_step + 1)
            except ImportError:
                self.writer = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        new = self.fields is None
        if self.fields is None:
            self.fields = list(row)
        elif set(self.fields) != set(row):  # a log.csv of another run (CMEM against MEM, other levels)
            raise RunError(
                f"{self.path}: its columns are not the ones this run logs, so it is another run's log; {REPRETRAIN}"
            )
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=self.fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
        append_atomic(self.path, text.getvalue())  # a row is all there or not at all, also on a full disk
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    self.writer.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
