"""Run folders as artifacts: the files of a pretraining run and of a training run, their format, and when a run is
complete. Every stage that writes or reads a run folder names its files through here.

A pretraining run folder (`mixmag pretrain`): config.json, log.csv, checkpoints/last.pt, tensorboard/, and the
pretrained mixer, mixer.safetensors with mixer.json beside it (its architecture, pretraining config and the
stores' embedding space).

A training run folder (`mixmag train`): best.pt (the chosen weights), config.json, splits.json, pipeline.json (how
the stores were made, for prediction; it carries the run format version), predictions_tune.csv,
predictions_test.csv, and metrics.json, written last: a run with metrics.json is complete. `mixmag report` adds
report.html and heatmaps/.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from . import __version__
from .errors import RunError, RunMismatchError
from .fileio import (
    FileTooLargeError,
    FolderLock,
    UnsafePathError,
    atomic_path,
    read_json_limited,
    read_text_limited,
    write_csv_atomic,
    write_json_atomic,
)
from .markup import spreadsheet_text
from .weights_io import load_state_dict_file

RUN_FORMAT_VERSION = 1  # of a training run folder; recorded in pipeline.json as "run_format"
MIXER_WEIGHTS = "mixer.safetensors"
MIXER_META = "mixer.json"
PREDICTION_FIELDS = ("specimen", "label", "score", "slides", "slide_scores")
SPLITS = ("train", "tune", "test")


class PretrainRun:
    """The files of a pretraining run folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.config = self.folder / "config.json"
        self.log = self.folder / "log.csv"
        self.checkpoint = self.folder / "checkpoints" / "last.pt"
        self.tensorboard = self.folder / "tensorboard"
        self.mixer_weights = self.folder / MIXER_WEIGHTS
        self.mixer_meta = self.folder / MIXER_META

    def last_step(self) -> int:
        """The last step logged (0 when nothing was)."""
        if not self.log.is_file():
            return 0
        rows = list(csv.DictReader(io.StringIO(read_text_limited(self.log, "log", what="pretraining log"))))
        return int(rows[-1]["step"]) if rows else 0

    def read_mixer_meta(self) -> dict | None:
        return read_json_limited(self.mixer_meta, what="mixer.json") if self.mixer_meta.is_file() else None

    def is_complete(self, steps: int) -> bool:
        """The mixer was exported after `steps` steps."""
        return self.mixer_weights.is_file() and self.mixer_meta.is_file() and self.last_step() >= steps


class TrainRun:
    """The files of a training run folder: written by the training loop, read by prediction, reports, evaluation."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.weights = self.folder / "best.pt"
        self.config = self.folder / "config.json"
        self.splits = self.folder / "splits.json"
        self.pipeline = self.folder / "pipeline.json"
        self.metrics = self.folder / "metrics.json"
        self.report = self.folder / "report.html"
        self.heatmaps = self.folder / "heatmaps"

    def predictions(self, split: str) -> Path:
        return self.folder / f"predictions_{split}.csv"

    def missing(self) -> list[str]:
        """The names of the files a finished run has and this folder lacks."""
        files = [
            self.weights,
            self.config,
            self.splits,
            self.pipeline,
            self.predictions("tune"),
            self.predictions("test"),
            self.metrics,
        ]
        return [f.name for f in files if not f.is_file()]

    def is_complete(self) -> bool:
        """Every file is there (metrics.json is written last)."""
        return not self.missing()

    def lock(self) -> FolderLock:
        """Held while training writes the folder: a second training into it is refused."""
        return FolderLock(self.folder, "mixmag train")

    # -- writing (the training loop) ------------------------------------------------------------------------
    def write_weights(self, state: dict[str, torch.Tensor]) -> Path:
        with atomic_path(self.weights) as tmp:
            torch.save(state, tmp)
        return self.weights

    def write_results(
        self, *, config: dict, splits: dict, pipeline: dict, predictions: dict[str, list[dict]], metrics: dict
    ) -> None:
        """Everything but the weights; metrics.json last, so that a complete-looking folder is complete."""
        write_json_atomic(self.config, config, indent=1)
        write_json_atomic(self.splits, splits, indent=1)
        write_json_atomic(self.pipeline, {"run_format": RUN_FORMAT_VERSION} | pipeline, indent=1)
        for split, rows in predictions.items():
            write_csv_atomic(
                self.predictions(split), PREDICTION_FIELDS, [[r[f] for f in PREDICTION_FIELDS] for r in rows]
            )
        write_json_atomic(self.metrics, metrics, indent=1)

    # -- reading -----------------------------------------------------------------------------------------
    def _need(self, path: Path) -> Path:
        if not path.is_file():
            raise RunError(f"{self.folder}: no {path.name}; is it a finished `mixmag train` run folder?")
        return path

    def _json(self, path: Path) -> dict:
        try:
            return read_json_limited(self._need(path), what=path.name)
        except (ValueError, UnsafePathError, FileTooLargeError) as exc:
            raise RunError(f"{path}: not readable JSON ({exc}); train the run again") from exc

    def read_config(self) -> dict:
        return self._json(self.config)

    def read_metrics(self) -> dict:
        return self._json(self.metrics)

    def read_splits(self) -> dict:
        return self._json(self.splits) if self.splits.is_file() else {}

    def read_pipeline(self) -> dict | None:
        """How the run's stores were made (None for runs written before pipeline.json existed); a run of a newer
        format than this mixmag reads is refused."""
        if not self.pipeline.is_file():
            return None
        pipeline = self._json(self.pipeline)
        if int(pipeline.get("run_format", 0)) > RUN_FORMAT_VERSION:
            raise RunMismatchError(
                f"{self.folder}: written by mixmag {pipeline.get('mixmag_version')} (run format "
                f"{pipeline['run_format']}), newer than this mixmag {__version__}; upgrade mixmag to use it"
            )
        return pipeline

    def read_predictions(self, split: str) -> list[dict]:
        path = self.predictions(split)
        if not path.is_file():
            raise RunError(f"{path}: no predictions; is {self.folder} a `mixmag train` run folder?")
        text = read_text_limited(path, "log", what="predictions table")
        rows = csv.DictReader(io.StringIO(text, newline=""))
        # cells as written, before spreadsheet escaping (`mixmag.markup`)
        return [{k: spreadsheet_text(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]

    def read_weights(self) -> dict[str, torch.Tensor]:
        """best.pt, tensors only (a file holding anything else is refused in one sentence)."""
        return load_state_dict_file(
            self._need(self.weights), fix="retrain the run with `mixmag train`; never load it otherwise"
        )
