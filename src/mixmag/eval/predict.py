"""Predict with a trained run on new slides' stores: the chosen checkpoint, the run's bag mode and
mixer, and a check that the new stores were made the way the training stores were.

A run folder records how its stores were made (pipeline.json: tiling, encoder, read mode), so new
slides can be tiled and embedded the same way (`stages.predict`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import __version__
from ..data.bags import BagCache
from ..errors import MixmagError
from ..store import STORE_MUST_MATCH, StoreError, read_attrs, read_index
from ..train.finetune import PIPELINE_FILENAME, RUN_FORMAT_VERSION, TrainConfig, Trainer
from ..weights_io import load_state_dict_file



class RunMismatchError(MixmagError):
    pass


def load_pipeline(run: Path) -> dict | None:
    """pipeline.json of a run (None for runs written before it existed)."""
    path = run / PIPELINE_FILENAME
    if not path.is_file():
        return None
    pipeline = json.loads(path.read_text())
    if int(pipeline.get("run_format", 0)) > RUN_FORMAT_VERSION:
        raise RunMismatchError(f"{run}: written by mixmag {pipeline.get('mixmag_version')} (run format {pipeline['run_format']}), "
                               f"newer than this mixmag {__version__}; upgrade mixmag to use it")
    return pipeline


def load_trained(run: str | Path) -> Trainer:
    """The run's model with its chosen weights (best.pt, loaded with weights_only)."""
    run = Path(run)
    for name in ("config.json", "best.pt"):
        if not (run / name).is_file():
            raise MixmagError(f"{run}: no {name}; is it a finished `mixmag train` run folder?")
    try:
        config = TrainConfig(**json.loads((run / "config.json").read_text()))
    except ValueError as exc:
        raise RunMismatchError(f"{run}/config.json does not fit this mixmag {__version__} ({exc}); "
                               "use the mixmag version that trained it, or retrain") from exc
    pipeline = load_pipeline(run)
    trainer = Trainer(config, pipeline=pipeline)  # without pipeline.json (older runs): rebuilt from the training stores
    if pipeline is None:
        trainer.pipeline = {"run_format": RUN_FORMAT_VERSION} | trainer.store_settings
    try:
        trainer.model.load_state_dict(load_state_dict_file(run / "best.pt", fix="retrain the run with `mixmag train`; never load it otherwise"))
    except RuntimeError as exc:
        raise RunMismatchError(f"{run}/best.pt does not fit the model its config describes ({exc})") from exc
    trainer.model.eval()
    return trainer


def store_misfit(trainer: Trainer, path: Path, slide: str = "") -> str | None:
    """Why a new slide's store cannot be scored by this run (absent, unreadable or invalid header, cells outside
    the slide, made with other settings than the run's training stores), or None. Reads no embeddings."""
    if not path.is_file():
        return f"{path}: no store for slide {slide or path.stem}; run `mixmag embed` first"
    try:
        attrs = read_index(path).attrs
    except StoreError as exc:
        return str(exc)
    reference = trainer.pipeline
    different = [k for k in STORE_MUST_MATCH if k in reference and attrs.get(k) != reference.get(k)]
    if different:
        detail = "; ".join(f"{k}: run {reference.get(k)!r} vs slide {attrs.get(k)!r}" for k in different)
        return f"{path}: made differently from the run's training stores ({detail}); tile and embed the slide with the run's settings"
    return None


def check_stores_fit(trainer: Trainer, stores: dict[str, Path]) -> None:
    for slide, path in stores.items():
        problem = store_misfit(trainer, path, slide)
        if problem:
            raise RunMismatchError(problem)


def precision_note(trainer: Trainer, stores: dict[str, Path]) -> str | None:
    """Stores embedded in another precision than the training stores (bf16 on a GPU vs fp32 on a CPU)
    score slightly differently; said, not refused."""
    trained = (trainer.pipeline or {}).get("compute_dtype")
    other = sorted({str(_attrs_or_empty(p).get("compute_dtype")) for p in stores.values()} - {str(trained), "None"})
    if trained and other:
        return (f"the run's stores were embedded in {trained}, these in {', '.join(other)}: scores differ from the same "
                "slides' evaluation scores at that precision's rounding (embed on the same kind of device for identical scores)")
    return None


def _attrs_or_empty(path: Path) -> dict:
    try:
        return read_attrs(path)
    except OSError:  # absent or unreadable: its own row says so
        return {}


def use_stores(trainer: Trainer, stores: dict[str, Path], encoded_dir: Path | None = None) -> None:
    """Point the trainer's bags at new slides' stores. Runs on precomputed mixer outputs (patch / cls)
    get them made by the run's own mixer, into encoded_dir."""
    check_stores_fit(trainer, stores)
    config = trainer.config
    encoded = None
    if config.bags in ("patch", "cls"):
        from ..stages.encode import encode_stores

        if encoded_dir is None:
            raise MixmagError("this run reads precomputed mixer outputs: give a folder for the new slides' ones")
        encode_stores(list(stores.values()), encoded_mixer(trainer), encoded_dir)
        encoded = encoded_dir
    trainer.bags = BagCache(config.bags, stores, encoded, config.region_level)


def encoded_mixer(trainer: Trainer) -> Path:
    """The mixer weights a patch / cls run's embeddings were made with."""
    from ..stages.encode import encoded_mixer_weights

    recorded = (trainer.pipeline or {}).get("encoded_mixer")
    if recorded:
        if not Path(recorded).is_file():
            raise RunMismatchError(f"{recorded}: the mixer this run's embeddings were made with is gone; it is needed for new slides")
        return Path(recorded)
    return encoded_mixer_weights(Path(trainer.config.encoded))


@torch.no_grad()
def predict_stores(trainer: Trainer, stores: dict[str, Path], encoded_dir: Path | None = None) -> dict[str, float]:
    """Slide scores (probabilities) from the stores of new slides."""
    use_stores(trainer, stores, encoded_dir)
    return {slide: float(torch.sigmoid(trainer.slide_logits([slide]))[0]) for slide in stores}
