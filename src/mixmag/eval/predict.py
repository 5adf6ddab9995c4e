"""Predict with a trained run on new slides' stores: the chosen checkpoint, the run's bag mode and
mixer, and a check that the new stores were made the way the training stores were."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from ..data.bags import BagCache
from ..errors import MixmagError
from ..store import read_attrs
from ..train.finetune import TrainConfig, Trainer

# store attributes that must agree between training and prediction
_MUST_MATCH = ("encoder", "encoder_weights_digest", "encoder_output", "embedding_dim", "level_mpps", "tile_px", "region_size")


class RunMismatchError(MixmagError):
    pass


def load_trained(run: str | Path) -> Trainer:
    """The run's model with its chosen weights (best.pt, loaded with weights_only)."""
    run = Path(run)
    for name in ("config.json", "best.pt"):
        if not (run / name).is_file():
            raise MixmagError(f"{run}: no {name}; is it a finished `mixmag train` run folder?")
    config = TrainConfig(**json.loads((run / "config.json").read_text()))
    trainer = Trainer(config)
    trainer.model.load_state_dict(torch.load(run / "best.pt", weights_only=True))
    trainer.model.eval()
    return trainer


def check_stores_fit(trainer: Trainer, stores: dict[str, Path]) -> None:
    reference_slide = next(iter(trainer.cohort.stores.values()))
    reference = read_attrs(reference_slide)
    for slide, path in stores.items():
        if not path.is_file():
            raise RunMismatchError(f"{path}: no store for slide {slide}; run `mixmag embed` first")
        attrs = read_attrs(path)
        different = [k for k in _MUST_MATCH if k in reference and attrs.get(k) != reference.get(k)]
        if different:
            detail = "; ".join(f"{k}: run {reference.get(k)!r} vs slide {attrs.get(k)!r}" for k in different)
            raise RunMismatchError(f"{path}: made differently from the run's training stores ({detail}); "
                                   "tile and embed the slide with the run's settings")


@torch.no_grad()
def predict_stores(trainer: Trainer, stores: dict[str, Path]) -> dict[str, float]:
    """Slide scores (probabilities) from the stores of new slides."""
    check_stores_fit(trainer, stores)
    config = trainer.config
    trainer.bags = BagCache(config.bags, stores, Path(config.encoded) if config.encoded else None, config.region_level)
    return {slide: float(torch.sigmoid(trainer.slide_logits([slide]))[0]) for slide in stores}


def write_predictions(path: Path, slide_scores: dict[str, float], specimen_of: dict[str, str] | None = None) -> Path:
    from .metrics import specimen_scores

    specimen_of = specimen_of or {s: s for s in slide_scores}
    specimens = specimen_scores(slide_scores, specimen_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["specimen", "slide", "slide_score", "specimen_score"])
        for slide, score in slide_scores.items():
            spec = specimen_of[slide]
            w.writerow([spec, slide, f"{score:.6f}", f"{specimens[spec]:.6f}"])
    return path
