"""The front door for Python and notebooks: the pipeline's stages as plain functions, with their config models.

`import mixmag` gives these names (loaded on first use, so `mixmag tile` never pays for torch):

    import mixmag
    mixmag.tile(["slides/a.svs"], "tiles", mpp=0.25)
    mixmag.embed("tiles", "stores", encoder="virchow2", weights="v2.safetensors")
    mixmag.pretrain(mixmag.PretrainConfig(stores="stores", out="mixer", preset="tiny", steps=1000))
    metrics = mixmag.train(mixmag.TrainConfig(cohort="cohort.csv", stores="stores", out="run", bags="20x"))
    scores = mixmag.predict("run", slides=["new.svs"], out="predictions.csv")
    mixmag.report("run")

Each function is the command of the same name without the printing: the same checks, the same files, the same
errors (`mixmag.errors.MixmagError` and its family, one sentence naming the input and the fix). Devices follow one
rule everywhere: `device=None` (or "auto") is the GPU when there is one, else the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .config import load_config
from .devices import choose_device
from .encoders.model import build_encoder
from .eval.runs import evaluate_run
from .interop import clam, trident
from .interop.plans import plan_for_store
from .report.html import build_reports
from .runs import CrossValRun
from .slides.params import TilingParams, TissueParams
from .slides.sources import sources_from_paths
from .stages import predict as prediction
from .stages.crossval import run_cross_validation
from .stages.embed import EmbedResult, find_plans, run_embed
from .stages.tile import SlideResult, tile_slides
from .store import read_store
from .train.classifier import SlideClassifier
from .train.finetune import TrainConfig, run_training
from .train.pretrain import PretrainConfig, run_pretraining

__all__ = [
    "PretrainConfig",
    "SlideClassifier",
    "TilingParams",
    "TissueParams",
    "TrainConfig",
    "embed",
    "evaluate",
    "export",
    "predict",
    "pretrain",
    "report",
    "tile",
    "train",
]

PathLike = str | Path


def tile(
    slides: PathLike | Sequence[PathLike], out: PathLike, *, mpp: float | None = None, **settings
) -> list[SlideResult]:
    """`mixmag tile`: plan regions on every slide (files, folders of them, or URLs: s3://, https://, dicomweb+http://)
    into `out/<slide>/plan.json`; `settings` are TilingParams fields (region_size=1, tissue_threshold=0.3, ...). One
    bad slide fails alone."""
    paths: list[Path | str] = [slides] if isinstance(slides, (str, Path)) else list(slides)  # a str may be a URL
    return tile_slides(sources_from_paths(paths, mpp), Path(out), TilingParams(**settings))


def embed(
    plans: PathLike,
    out: PathLike,
    *,
    encoder: str = "stats",
    weights: PathLike | None = None,
    from_hub: bool = False,
    device: str | None = None,
    workers: int = 2,
) -> list[EmbedResult]:
    """`mixmag embed`: every tile of every planned cell through the tile encoder, one store per slide in `out`."""
    dev = choose_device(device)
    model = build_encoder(encoder, weights=weights, from_hub=from_hub).to(dev)
    return run_embed(find_plans(Path(plans)), Path(out), model, device=dev, workers=workers)


def _config(model, given):
    """A config model from an instance, a dict of its fields, or a YAML file (checked like the CLI's)."""
    if isinstance(given, model):
        return given
    if isinstance(given, dict):
        return model(**given)
    return load_config(model, Path(given))


def pretrain(config: PretrainConfig | dict | PathLike, *, device: str | None = None):
    """`mixmag pretrain`: MEM (or CMEM) pretraining of the region mixer; resumes a run folder that stopped."""
    return run_pretraining(_config(PretrainConfig, config), device=choose_device(device))


def train(config: TrainConfig | dict | PathLike, *, device: str | None = None) -> dict:
    """`mixmag train`: a slide-level model selected on tune; returns the run's metrics (also in metrics.json). With a
    `cv:` section, every fold's run and the summary (cv.json), which it returns."""
    checked: TrainConfig = _config(TrainConfig, config)
    if checked.cv is not None:
        return run_cross_validation(checked, device=choose_device(device))
    return run_training(checked, device=choose_device(device))


def evaluate(run: PathLike) -> dict:
    """`mixmag evaluate`: a finished run's metrics with bootstrap CIs, from its saved predictions; a cross-validated
    folder's summary (cv.json)."""
    if CrossValRun(run).is_cross_validated():
        return CrossValRun(run).read_summary()
    return evaluate_run(run)


def predict(
    run: PathLike,
    *,
    slides: Sequence[PathLike] | None = None,
    stores: PathLike | None = None,
    cohort: PathLike | None = None,
    out: PathLike = "predictions.csv",
    work: PathLike | None = None,
    heatmaps: bool = False,
    device: str | None = None,
    mpp: float | None = None,
) -> prediction.Prediction:
    """`mixmag predict`: score new slides (tiled and embedded with the run's settings) or existing stores."""
    names = [str(s) for s in slides] if slides else None
    inputs = prediction.read_inputs(names, Path(cohort) if cohort else None, Path(stores) if stores else None, mpp)
    out = Path(out)
    work = Path(work) if work else out.with_name(f"{out.stem}_work")
    return prediction.run(Path(run), inputs, out, work, heatmaps=heatmaps, device=device)


def report(run: PathLike, *, heatmaps: bool = True) -> Path | list[Path]:
    """`mixmag report`: RUN/report.html; for a cross-validated folder, every fold's (a list)."""
    pages = build_reports(run, heatmaps=heatmaps)
    return pages if CrossValRun(run).is_cross_validated() else pages[0]


def export(stores: Sequence[PathLike], out: PathLike, *, format: str = "trident") -> list[Path]:
    """`mixmag store export`: stores as TRIDENT (needs each store's tiling plan) or CLAM feature files."""
    written: list[Path] = []
    for path in map(Path, stores):
        store = read_store(path)
        if format == "clam":
            written += clam.export_store(store, Path(out))
        elif format == "trident":
            written += trident.export_store(store, plan_for_store(store, None), Path(out))
        else:
            raise ValueError(f"format {format!r}: use trident or clam")
    return written
