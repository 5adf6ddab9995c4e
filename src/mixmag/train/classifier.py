"""A trained slide-level model apart from its training loop: the network, the kind of bag it reads, and the record
of how its stores were made (the run's pipeline.json).

The training loop builds one and writes it into its run folder; prediction, reports and evaluation `load()` it and
`score()` or `explain()` slides with it: no cohort, optimiser or random seed is needed to use a trained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..config import MAX_WIDTH
from ..data.bags import BagCache, BagMode, region_bag
from ..data.encoded import encoded_mixer_weights
from ..errors import RunError, RunMismatchError
from ..models.aggregators import AggregatorName
from ..models.mixer import MixerConfig, RegionMixer
from ..models.slide import SlideModel, rename_old_aggregator_keys
from ..runs import PipelineRecord, TrainRun
from ..store import StoreError, read_index
from .mixer_file import load_mixer
from .tasks import Task, TaskType, task_for

ATTENTION = "AB-MIL attention"
GRADIENT = "gradient x input"


class RunModelSettings(BaseModel):
    """What a trained model needs of its run's config.json (the training config holds more: cohort, epochs...)."""

    model_config = ConfigDict(extra="ignore")

    bags: BagMode
    hidden: int = Field(ge=1, le=MAX_WIDTH)
    mixer: dict | None = None
    region_level: str | None = None
    specimen_score: Literal["max", "mean"] = "max"
    encoded: str | None = None
    task: TaskType = "binary"
    aggregator: AggregatorName = "abmil"  # runs before the aggregator registry are AB-MIL runs

    @property
    def mixer_output(self) -> str:
        return (self.mixer or {}).get("output", "patch")


@dataclass
class BagAttribution:
    """One value per item of a slide's bag (tile, token or region; per store embedding for gradients)."""

    logit: float
    method: str  # ATTENTION or GRADIENT
    values: np.ndarray  # (items,) what is placed on the slide
    attention: np.ndarray  # (AB-MIL items,) AB-MIL's own weights
    contribution: np.ndarray  # (AB-MIL items,) each item's share of the logit: a_i (w . h_i), sums to logit - bias


class SlideClassifier:
    """model + bag kind + pipeline record; `use_stores()` points it at slides' stores, then `score()`/`explain()`."""

    def __init__(
        self,
        model: SlideModel,
        bag_kind: str,
        pipeline: dict,
        *,
        region_level: str | None = None,
        specimen_score: str = "max",
        encoded_dir: Path | None = None,
        bags: BagCache | None = None,
        task: Task | None = None,
    ) -> None:
        self.model = model
        self.bag_kind = bag_kind
        self.pipeline = pipeline  # pipeline.json as read (how the stores were made, bag_dim, mixer architecture)
        self.region_level = region_level
        self.specimen_score = specimen_score
        self.encoded_dir = encoded_dir  # the training stores' precomputed mixer outputs (bags patch / cls)
        self.bags = bags if bags is not None else BagCache(bag_kind, {}, None, region_level)
        self.task = task if task is not None else Task()  # what the outputs mean (mixmag.train.tasks)
        self._mixer: RegionMixer | None = None  # `encoded_mixer_model`, loaded on first use

    @classmethod
    def load(cls, run: str | Path, device: torch.device | None = None) -> SlideClassifier:
        """The run's model with its chosen weights (best.pt, loaded with weights_only), in eval mode; no random state
        is seeded or consumed."""
        folder = TrainRun(run)
        try:
            config = RunModelSettings(**folder.read_config())
        except (ValidationError, TypeError) as exc:
            raise RunMismatchError(
                f"{folder.config} does not fit this mixmag {__version__} ({exc}); "
                "use the mixmag version that trained it, or retrain"
            ) from exc
        pipeline = folder.read_pipeline()
        if pipeline is None:
            raise RunMismatchError(
                f"{folder.folder}: written before run folders recorded how their stores were made "
                "(no pipeline.json); train it again with this mixmag"
            )
        with torch.random.fork_rng(
            devices=[]
        ):  # the initial weights are replaced: leave the caller's random state alone
            record = PipelineRecord.of(pipeline)
            mixer = RegionMixer(MixerConfig(**record.mixer)) if record.mixer else None
            task = task_for(config.task, pipeline=pipeline)
            model = SlideModel(
                record.bag_dim or 0, config.hidden, mixer, config.mixer_output, task.n_outputs, config.aggregator
            )
        try:
            model.load_state_dict(rename_old_aggregator_keys(folder.read_weights()))
        except RuntimeError as exc:
            raise RunMismatchError(f"{folder.weights} does not fit the model its config describes ({exc})") from exc
        return cls(
            model.to(device or torch.device("cpu")).eval(),
            config.bags,
            pipeline,
            region_level=config.region_level,
            specimen_score=config.specimen_score,
            encoded_dir=Path(config.encoded) if config.encoded else None,
            task=task,
        )

    @property
    def record(self) -> PipelineRecord:
        """The pipeline as a typed record (`pipeline` is the file as read; a caller may still amend it)."""
        return PipelineRecord.of(self.pipeline)

    # -- which slides ---------------------------------------------------------------------------------------
    @property
    def reads_encoded(self) -> bool:
        """Bags of precomputed mixer outputs (made by `encoded_mixer()`), not of store embeddings."""
        return self.bag_kind in ("patch", "cls")

    @property
    def pools_regions(self) -> bool:
        """AB-MIL weighs whole regions (compressed region embeddings), not tiles or tokens."""
        return self.bag_kind == "cls" or (
            self.bag_kind == "regions" and self.model.mixer is not None and self.model.output == "cls"
        )

    def store_misfit(self, path: Path, slide: str = "") -> str | None:
        """Why a new slide's store cannot be scored by this model (absent, unreadable or invalid header, made with
        other settings than the run's training stores: encoder, weights, levels, tiles, regions), or None. Reads no
        embeddings."""
        if not path.is_file():
            return f"{path}: no store for slide {slide or path.stem}; run `mixmag embed` first"
        try:
            header = read_index(path).header
        except StoreError as exc:
            return str(exc)
        reference = self.record
        different = reference.differences(header)
        if different:
            detail = "; ".join(f"{k}: run {getattr(reference, k)!r} vs slide {getattr(header, k)!r}" for k in different)
            return (
                f"{path}: made differently from the run's training stores ({detail}); tile and embed the slide with "
                "the run's settings"
            )
        return None

    def check_stores(self, stores: dict[str, Path]) -> None:
        """New slides' stores must be made as the training stores were; the first that is not is an error."""
        for slide, path in stores.items():
            problem = self.store_misfit(path, slide)
            if problem:
                raise RunMismatchError(problem)

    def use_stores(self, stores: dict[str, Path], encoded_dir: Path | None = None) -> None:
        """Read bags from these stores (checked first); runs on precomputed mixer outputs read them from
        `encoded_dir`, made by `encoded_mixer()` (`stages.encode.encode_stores`)."""
        self.check_stores(stores)
        if self.reads_encoded and encoded_dir is None:
            raise RunError("this run reads precomputed mixer outputs: give a folder with the new slides' ones")
        self.bags = BagCache(self.bag_kind, stores, encoded_dir if self.reads_encoded else None, self.region_level)

    def encoded_mixer(self) -> Path:
        """The mixer weights a patch / cls run's bags were made with."""
        recorded = self.record.encoded_mixer
        if recorded:
            if not Path(recorded).is_file():
                raise RunMismatchError(
                    f"{recorded}: the mixer this run's embeddings were made with is gone; it is needed for new slides"
                )
            return Path(recorded)
        if self.encoded_dir is None:
            raise RunError("this run reads no precomputed mixer outputs")
        return encoded_mixer_weights(self.encoded_dir)

    def encoded_mixer_model(self) -> RegionMixer:
        """The mixer of `encoded_mixer`, loaded once: attribution and occlusion run it on every slide's regions."""
        if self._mixer is None:
            self._mixer = load_mixer(self.encoded_mixer())[0]
        return self._mixer

    # -- scores -------------------------------------------------------------------------------------------
    def logits(self, slides: list[str]) -> torch.Tensor:
        return self.model.bag_logits([self.bags(s) for s in slides])

    @torch.no_grad()
    def outputs(self, slides: list[str]) -> dict[str, np.ndarray]:
        """Each slide's outputs as its task reads them (binary: the probability; multiclass: the class probabilities;
        survival: the log-risk; regression: the predicted value), float64 vectors, one slide at a time as in
        evaluation; the model's mode is kept."""
        training = self.model.training
        self.model.eval()
        with self.bags.reading_ahead(slides, self.model.device):
            out = {s: self.task.transform(self.logits([s]))[0].double().cpu().numpy().reshape(-1) for s in slides}
        self.model.train(training)
        return out

    def score(self, slides: list[str]) -> dict[str, float]:
        """Slide scores of a one-output task (binary: probabilities; survival: risk; regression: value)."""
        if self.task.n_outputs != 1:
            raise RunError(f"a {self.task.name} run gives class probabilities (`outputs`), not one score a slide")
        return {slide: float(v[0]) for slide, v in self.outputs(slides).items()}

    def explain(self, slide: str, method: str = "auto") -> BagAttribution:
        """Attribution over the slide's bag: "attention" (AB-MIL's weights on tiles or tokens), "gradient"
        (|x . dlogit/dx| on the store's embeddings, through the mixer where there is one), or "auto": attention where
        AB-MIL weighs tiles or tokens, gradient where it weighs whole regions or where the aggregator has no
        attention (mean pooling)."""
        if method == "auto":
            method = "gradient" if self.pools_regions or not self.model.aggregator.attends else "attention"
        if method == "attention" and self.pools_regions:
            raise RunError(
                f"{slide}: this model weighs whole regions; per-magnification attention needs method='gradient'"
            )
        if method == "attention" and not self.model.aggregator.attends:
            raise RunError(
                f"{slide}: this model's aggregator ({type(self.model.aggregator).__name__}) weighs every instance "
                "alike, so it has no attention to draw; use method='gradient'"
            )
        model = self.model.eval()
        bag = self.bags(slide).float()
        if method == "attention":
            with torch.no_grad():
                logit, alpha, share = top_class(
                    *model.contributions(bag[None], torch.ones(1, bag.shape[0], dtype=torch.bool))
                )
            alpha = alpha[0].numpy()
            share = share[0].numpy().astype(np.float64)
            return BagAttribution(float(logit.reshape(-1)[0]), ATTENTION, alpha.astype(np.float64), alpha, share)
        if method == "gradient":
            inputs = (
                torch.from_numpy(region_bag(self.bags.stores[slide]).astype(np.float32)) if self.reads_encoded else bag
            )
            return self._gradient_x_input(inputs)
        raise RunError(f"unknown attribution method {method!r}; use auto, attention or gradient")

    def _gradient_x_input(self, inputs: torch.Tensor) -> BagAttribution:
        """|sum_d x * dlogit/dx| per embedding of the store (tile, or mixer input token), and AB-MIL's weights."""
        x = inputs.detach().clone().requires_grad_(True)
        if self.reads_encoded:  # precomputed mixer outputs: run the mixer that made them
            contextual, compressed = self.encoded_mixer_model()(x)
            feats = compressed if self.bag_kind == "cls" else contextual.reshape(-1, contextual.shape[-1])
        else:
            feats = x
        logit, alpha, share = top_class(
            *self.model.contributions(feats[None], torch.ones(1, feats.shape[0], dtype=torch.bool))
        )
        logit.sum().backward()
        values = (x.grad * x).sum(-1).abs().detach().numpy().astype(np.float64).ravel()
        share = share.detach()[0].numpy().astype(np.float64)
        return BagAttribution(float(logit.detach().reshape(-1)[0]), GRADIENT, values, alpha.detach()[0].numpy(), share)


def top_class(
    logit: torch.Tensor, alpha: torch.Tensor, share: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A multiclass model's contributions to its top class's logit (one bag: logit (1, classes), share (1, N,
    classes)); a one-output model's unchanged. Attribution explains the class the model predicts."""
    if logit.dim() < 2:
        return logit, alpha, share
    k = int(logit[0].argmax())
    return logit[:, k], alpha, share[..., k]
