"""Slide-level training (AB-MIL or another aggregator, with or without a jointly trained mixer) and its run folder.

The task type (`task`: binary, multiclass, survival, regression; `mixmag.train.tasks`) gives the loss and its
specimen rule (eq. 9 for binary: the minimum over a specimen's slides of a label-smoothed binary cross-entropy) and
the primary metric; the model is selected on the tune split's primary metric only (AUROC for binary); test
predictions are made once, by the chosen model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator
from pydantic_core import to_jsonable_python

from .. import __version__
from ..catalog import shared_settings_of
from ..config import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LR,
    MAX_MEMORY_MB,
    MAX_RESAMPLES,
    MAX_SEED,
    MAX_WEIGHT_DECAY,
    MAX_WIDTH,
    MAX_WORKERS,
    load_config,
)
from ..data.bags import (
    DEFAULT_CACHE_MB,
    DEFAULT_MICRO_BATCH_MB,
    DEFAULT_READ_AHEAD,
    BagCache,
    BagMode,
    plan_micro_batches,
)
from ..data.cohort import Cohort, Specimen, load_cohort
from ..data.encoded import encoded_mixer_weights
from ..errors import ConfigError, MixmagError
from ..models.aggregators import AGGREGATORS, AggregatorName
from ..models.mixer import MixerOverrides, RegionMixer, mixer_config
from ..models.slide import SlideModel
from ..runs import TrainRun
from ..store import EmbeddingSpace, PipelineSettings, StoreHeader, read_header
from .classifier import SlideClassifier
from .crossval import CrossValConfig
from .mixer_file import load_mixer, random_mixer, weights_digest
from .optim import layer_decay_groups
from .tasks import Task, TaskType, task_for

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class MixerSetting(BaseModel):
    """The `mixer:` section of a training config: the mixer trained jointly with AB-MIL (bags = regions)."""

    model_config = ConfigDict(extra="forbid")

    init: Literal["random", "pretrained"] = "pretrained"
    weights: str | None = Field(None, description="mixer.safetensors of a pretraining run (its mixer.json beside it)")
    preset: str = "tiny"
    overrides: MixerOverrides = Field(
        default_factory=MixerOverrides, description="architecture overrides of the preset"
    )
    output: Literal["patch", "cls"] = "patch"

    @field_serializer("overrides")
    def _given_overrides(self, overrides: MixerOverrides) -> dict:
        return overrides.given()

    @model_validator(mode="after")
    def _weights(self) -> MixerSetting:
        if self.init == "pretrained" and not self.weights:
            raise ValueError("mixer.init = pretrained needs mixer.weights (the pretraining run's mixer.safetensors)")
        return self


class TrainSettings(BaseModel):
    """How to train (the `train:` sections of a grid or demo config set some of these for every run)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    hidden: int = Field(16, ge=1, le=MAX_WIDTH)
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="specimens per step")
    lr: float = Field(1e-5, gt=0, le=MAX_LR)
    weight_decay: float = Field(0.05, ge=0, le=MAX_WEIGHT_DECAY)
    label_smoothing: float = Field(0.1, ge=0, lt=0.5)
    layer_decay: float = Field(0.75, gt=0, le=1)
    freeze_epochs: int = Field(1, ge=0, le=MAX_EPOCHS, description="epochs with the mixer frozen before joint training")
    specimen_score: Literal["max", "mean"] = "max"
    bootstrap: int = Field(2000, ge=100, le=MAX_RESAMPLES)
    bag_cache_mb: float = Field(
        DEFAULT_CACHE_MB,
        ge=0,
        le=MAX_MEMORY_MB,
        description="MiB of slides' bags kept in memory between steps (least recently used dropped first)",
    )
    micro_batch_mb: float = Field(
        DEFAULT_MICRO_BATCH_MB,
        gt=0,
        le=MAX_MEMORY_MB,
        description="MiB of the largest padded float32 batch of one forward/backward; a step over it is split into "
        "micro-batches of whole specimens whose gradients add up to the step's (docs/scale.md)",
    )
    read_ahead: int = Field(
        DEFAULT_READ_AHEAD,
        ge=0,
        le=MAX_WORKERS,
        description="bags read in a background thread ahead of the step that uses them (0: each read when asked)",
    )

    def given(self) -> dict:
        """The fields set explicitly (a section's overrides), not the defaults."""
        return self.model_dump(exclude_unset=True)


class TrainConfig(TrainSettings):
    """Everything that defines a `mixmag train` run (configs/mil.yaml); a typo is an error."""

    cohort: str
    stores: str
    out: str
    bags: BagMode = "20x"
    encoded: str | None = Field(None, description="folder from `mixmag encode` for bags = patch / cls")
    mixer: MixerSetting | None = Field(None, description="for bags = regions: the mixer trained jointly")
    region_level: str | None = Field(
        None, description="for bags = regions: mix only this level's tokens (e.g. 5x); default all"
    )
    seed: Seed = 0
    cv: CrossValConfig | None = Field(
        None, description="cross-validate: train `folds` runs into <out>/fold-<i>/ (the table's split is ignored)"
    )
    task: TaskType = Field(
        "binary",
        description="binary (label 0/1), multiclass (label = class name), survival (time, event), regression "
        "(target): the cohort's columns, the loss and the metrics (docs/method.md, Task types)",
    )
    classes: list[str] | None = Field(
        None, description="multiclass: the class names in output order; default the table's labels, sorted"
    )
    aggregator: AggregatorName = Field(
        "abmil",
        description=f"the slide aggregator over the bag's instances, at any level and after any mixer: "
        f"{', '.join(AGGREGATORS)} (mixmag.models.aggregators)",
    )

    @model_validator(mode="after")
    def _mode(self) -> TrainConfig:
        if self.bags == "regions" and self.mixer is None:
            raise ValueError("bags = regions trains a mixer jointly: give a `mixer:` section")
        if self.region_level is not None and self.bags != "regions":
            raise ValueError("region_level applies to bags = regions only")
        if self.region_level is not None and self.mixer is not None and self.mixer.init == "pretrained":
            raise ValueError("a pretrained mixer takes all levels; region_level is for randomly initialised mixers")
        if self.bags != "regions" and self.mixer is not None:
            raise ValueError(f"bags = {self.bags} has no mixer; drop the `mixer:` section or use bags = regions")
        if self.bags in ("patch", "cls") and not self.encoded:
            raise ValueError(f"bags = {self.bags} reads precomputed outputs: set `encoded:` (from `mixmag encode`)")
        if self.classes is not None and (self.task != "multiclass" or len(set(self.classes)) != len(self.classes)):
            raise ValueError("classes: a list of distinct class names, for task = multiclass only")
        if self.classes is not None and len(self.classes) < 2:
            raise ValueError("classes: a multiclass task needs at least two classes")
        return self


def load_train_config(path: str | Path, sets: list[str] | None = None) -> TrainConfig:
    return load_config(TrainConfig, path, sets)


def build_mixer(
    setting: MixerSetting,
    in_dim: int,
    t: int,
    n_levels: int,
    stores: EmbeddingSpace | dict | None = None,
    seed: int | None = None,
) -> RegionMixer:
    """A fresh mixer of a preset, or a pretrained one (refused when `stores`, the cohort's shared
    settings, were made unlike the stores it was pretrained on). A fresh one with `seed` is drawn from the random-init
    stream (`mixer_file.random_mixer`), never a pretraining run's starting weights; without, from torch's state."""
    if setting.init == "pretrained":
        mixer, _ = load_mixer(setting.weights, stores)
        if mixer.config.in_dim != in_dim:
            raise ConfigError(
                f"{setting.weights}: the mixer takes {mixer.config.in_dim}-d embeddings but the stores hold {in_dim}-d "
                "ones"
            )
        return mixer.train()
    cfg = mixer_config(setting.preset, **(setting.overrides.given() | {"in_dim": in_dim, "t": t, "n_levels": n_levels}))
    return RegionMixer(cfg) if seed is None else random_mixer(cfg, seed)


class Trainer:
    """The training loop: cohort, optimiser and a `SlideClassifier` it trains; `fit()` trains, selects on tune and
    writes the run folder."""

    def __init__(self, config: TrainConfig, device: torch.device | None = None) -> None:
        self.config = config
        self.device = device or torch.device("cpu")
        torch.manual_seed(config.seed)
        self.cohort: Cohort = load_cohort(config.cohort, config.stores, task=config.task, classes=config.classes)
        self.task: Task = task_for(config.task, self.cohort)
        self.store_settings = shared_settings_of(list(self.cohort.stores.values()), config.stores)
        bags = BagCache(
            config.bags,
            self.cohort.stores,
            Path(config.encoded) if config.encoded else None,
            config.region_level,
            budget_bytes=int(config.bag_cache_mb * 2**20),
            read_ahead=config.read_ahead,
        )
        first = next(iter(self.cohort.specimens.values())).slides[0]
        bag_dim = int(bags(first).shape[-1])
        mixer = self._new_mixer(read_header(self.cohort.stores[first]), bag_dim) if config.bags == "regions" else None
        output = config.mixer.output if config.mixer else "patch"
        model = SlideModel(bag_dim, config.hidden, mixer, output, self.task.n_outputs, config.aggregator)
        model = model.to(self.device)
        self.classifier = SlideClassifier(
            model,
            config.bags,
            self._pipeline(bag_dim, mixer),
            region_level=config.region_level,
            specimen_score=config.specimen_score,
            bags=bags,
            encoded_dir=Path(config.encoded) if config.encoded else None,
            task=self.task,
        )
        self.optimizer = torch.optim.AdamW(
            layer_decay_groups(self.model, config.lr, config.weight_decay, config.layer_decay, self.model.mixer),
            lr=config.lr,
        )

    @property
    def model(self) -> SlideModel:
        return self.classifier.model

    @property
    def bags(self) -> BagCache:
        return self.classifier.bags

    def _new_mixer(self, header: StoreHeader, in_dim: int) -> RegionMixer:
        t, n_levels = header.region_size or 0, len(header.level_mpps or [])
        level = self.config.region_level
        if level is not None:  # one level: a (t 2^i) x (t 2^i) grid of that level's tiles
            t, n_levels = t * 2 ** (header.level_names or []).index(level), 1
        return build_mixer(self.config.mixer, in_dim, t, n_levels, self.store_settings, seed=self.config.seed)

    def _pipeline(self, bag_dim: int, mixer: RegionMixer | None) -> dict:
        """What prediction needs besides the weights: how the stores were made, the model's shape, the mixer read."""
        pipeline = {
            "mixmag_version": __version__,
            "torch_version": torch.__version__,
            "bag_dim": bag_dim,
            "mixer": asdict(mixer.config) if mixer is not None else None,
        }
        pipeline |= self.store_settings.model_dump()
        if self.config.encoded:
            pipeline["encoded_mixer"] = str(encoded_mixer_weights(Path(self.config.encoded)).resolve())
        pipeline["mixer_digest"] = pretrained_mixer_digest(self.config)
        return pipeline | self.task.pipeline()

    # -- one step ----------------------------------------------------------------------------
    def slide_logits(self, slides: list[str]) -> torch.Tensor:
        return self.classifier.logits(slides)

    def specimen_loss(self, specimens: list[Specimen]) -> torch.Tensor:
        """The task's loss of these specimens under its specimen rule (eq. 9 for binary: each specimen's loss is the
        smallest of its slides' label-smoothed losses), with the aggregator's own term where it has one."""
        slides = [s for sp in specimens for s in sp.slides]
        owner = torch.tensor([k for k, sp in enumerate(specimens) for _ in sp.slides], device=self.device)
        loss = self.task.loss(self.slide_logits(slides), owner, specimens, self.config.label_smoothing)
        aggregator = self.model.aggregator
        classes = self.task.classes_of(specimens) if aggregator.reads_classes else None  # CLAM-SB's instance loss
        return aggregator.training_loss(loss, None if classes is None else classes.to(self.device)[owner])

    def micro_batches(self, specimens: list[Specimen]) -> list[list[Specimen]]:
        """The step's specimens in micro-batches whose padded batch fits `micro_batch_mb` (one, in order, when the
        whole step fits); bag lengths come from the stores' headers, no bag is read to plan."""
        shapes = [[self.bags.shape(s) for s in sp.slides] for sp in specimens]
        item_bytes = math.prod(shapes[0][0][1:]) * 4
        plan = plan_micro_batches(
            [[sh[0] for sh in g] for g in shapes], item_bytes, int(self.config.micro_batch_mb * 2**20)
        )
        return [[specimens[i] for i in part] for part in plan]

    def train_step(self, specimens: list[Specimen], parts: list[list[Specimen]] | None = None) -> float:
        """One optimiser step over the specimens; its loss. Split into micro-batches (`parts`, planned here unless
        given), each micro-batch's loss is weighted by its share of the specimens, so the accumulated gradient is the
        whole step's (eq. 9's mean)."""
        parts = parts if parts is not None else self.micro_batches(specimens)
        self.optimizer.zero_grad(set_to_none=True)
        if len(parts) == 1:
            loss = self.specimen_loss(specimens)
            loss.backward()
            value = float(loss.detach())
        else:
            value = 0.0
            for part in parts:
                loss = self.specimen_loss(part) * (len(part) / len(specimens))
                loss.backward()
                value += float(loss.detach())
        self.optimizer.step()
        return value

    def set_mixer_frozen(self, frozen: bool) -> None:
        if self.model.mixer is not None:
            self.model.mixer.requires_grad_(not frozen)

    # -- evaluation on the cohort's splits ---------------------------------------------------------
    def predict(self, specimens: list[Specimen]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The task's outputs of each slide and each specimen (probability, class probabilities, risk or value)."""
        slide_outputs = self.classifier.outputs([s for sp in specimens for s in sp.slides])
        return slide_outputs, self.task.specimen_outputs(slide_outputs, specimens, self.config.specimen_score)

    def split_metric(self, name: str) -> float | None:
        """The task's primary metric on a split (AUROC for binary); None where it is undefined (a survival split
        without a comparable pair, a regression whose predictions do not vary)."""
        specimens = self.cohort.split(name)
        return self.task.tune_value(specimens, self.predict(specimens)[1])

    def split_auroc(self, name: str) -> float | None:
        return self.split_metric(name)

    # -- training ------------------------------------------------------------------------------
    def fit(self, on_epoch=None) -> dict:
        """Train, keep the weights of the best tune metric, write the run folder (locked while it is written)."""
        run = TrainRun(self.config.out)
        with run.lock():
            history, best_epoch = self._epochs(run, on_epoch)
            self.model.load_state_dict(run.read_weights())
            return self.write_run(run, history, best_epoch)

    def train_epoch(self, epoch: int) -> list[float]:
        """One pass over the train split in the epoch's seeded order; the steps' losses."""
        c = self.config
        train = self.cohort.split("train")
        self.set_mixer_frozen(epoch < c.freeze_epochs)
        order = np.random.default_rng([c.seed, epoch]).permutation(len(train))
        steps = [[train[i] for i in order[k : k + c.batch_size]] for k in range(0, len(order), c.batch_size)]
        plans = [self.micro_batches(step) for step in steps]  # from the stores' headers: no bag is read to plan
        wanted = (s for plan in plans for part in plan for sp in part for s in sp.slides)  # as the steps ask for bags
        with self.bags.reading_ahead(wanted, self.device):
            return [self.train_step(step, plan) for step, plan in zip(steps, plans, strict=True)]

    def _epochs(self, run: TrainRun, on_epoch) -> tuple[list[dict], int]:
        c = self.config
        best_auc, best_epoch = -math.inf, -1
        history = []
        for epoch in range(c.epochs):
            losses = self.train_epoch(epoch)
            tune_auc = self.split_metric("tune")  # selection uses the tune split only; None where undefined
            key = f"tune_{self.task.primary}"
            history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), key: tune_auc})
            if best_epoch < 0 or (tune_auc is not None and tune_auc > best_auc):
                best_auc, best_epoch = tune_auc, epoch + 1
                run.write_weights({k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
            if on_epoch is not None:
                on_epoch(history[-1])
        return history, best_epoch

    def write_run(self, run: TrainRun, history: list[dict], best_epoch: int) -> dict:
        c = self.config
        metrics: dict = {"best_epoch": best_epoch, "history": history, "mixmag_version": __version__}
        if self.task.name != "binary":
            metrics |= {"task": self.task.name, "primary": self.task.primary}
        outputs = {name: self.predict(self.cohort.split(name)) for name in ("tune", "test")}
        reference = outputs["tune"][1]  # thresholds (survival risk groups) are fixed on tune
        predictions = {}
        for name, (slide_outputs, spec_outputs) in outputs.items():
            specimens = self.cohort.split(name)
            metrics[name] = self.task.split_metrics(specimens, spec_outputs, reference, c.bootstrap, c.seed)
            predictions[name] = [
                self.task.prediction_row(sp, slide_outputs, spec_outputs, reference) for sp in specimens
            ]
        splits = {name: [sp.specimen_id for sp in self.cohort.split(name)] for name in ("train", "tune", "test")}
        run.write_results(
            config=c.model_dump(),
            splits=splits,
            pipeline=self.classifier.pipeline,
            predictions=predictions,
            metrics=metrics,
            prediction_fields=self.task.prediction_fields(),
        )
        return metrics


def pretrained_mixer_digest(config: TrainConfig) -> str | None:
    """The digest of the pretrained mixer a run reads (fine-tuned, or its precomputed outputs); None if none."""
    if config.encoded:
        return weights_digest(encoded_mixer_weights(Path(config.encoded)))
    if config.mixer is not None and config.mixer.init == "pretrained":
        return weights_digest(config.mixer.weights)
    return None


def run_training(config: TrainConfig, on_epoch=None, device: torch.device | None = None) -> dict:
    """One run on the table's splits; a config with a `cv:` section is refused (it would silently ignore the folds)."""
    if config.cv is not None:
        raise ConfigError(
            f"{config.out}: this config cross-validates (`cv:`); run it with `mixmag train`, `mixmag.train()` or "
            "mixmag.stages.crossval.run_cross_validation"
        )
    return Trainer(config, device).fit(on_epoch)


def run_is_current(cfg: TrainConfig, store_settings: PipelineSettings | None) -> bool:
    """A finished run is reused only if its config, its stores' provenance (`store_settings`, as
    store.shared_settings gives them now) and the pretrained mixer it read are those of now: a mixer
    retrained or stores re-embedded at the same paths make it stale."""
    run = TrainRun(cfg.out)
    if store_settings is None or not run.is_complete():
        return False
    try:
        if _with_new_defaults(run.read_config(), cfg) != json.loads(json.dumps(cfg.model_dump())):
            return False
        pipeline = run.read_pipeline_record()
        digest = pretrained_mixer_digest(cfg)
    except (MixmagError, OSError):
        return False  # let training say what is wrong
    return pipeline is not None and pipeline.settings == store_settings and pipeline.mixer_digest == digest


def _with_new_defaults(recorded: dict, cfg: TrainConfig) -> dict:
    """A recorded config with the fields added to TrainConfig since it was written filled in with their defaults: a
    run trained before a field existed was trained as its default says (new fields keep the old behaviour), so it is
    not retrained for the field alone."""
    filled = dict(recorded)
    for name, field in type(cfg).model_fields.items():
        if name not in filled and not field.is_required():
            filled[name] = to_jsonable_python(field.get_default(call_default_factory=True))
    return filled
