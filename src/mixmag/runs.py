"""Run folders as artifacts: the files of a pretraining run and of a training run, their format, and when a run is
complete. Every stage that writes or reads a run folder names its files through here.

A pretraining run folder (`mixmag pretrain`): config.json, log.csv, checkpoints/last.pt, tensorboard/, and the
pretrained mixer, mixer.safetensors with mixer.json beside it (its architecture, pretraining config and the
stores' embedding space).

A training run folder (`mixmag train`): best.pt (the chosen weights), config.json, splits.json, pipeline.json (how
the stores were made, for prediction; it carries the run format version), predictions_tune.csv,
predictions_test.csv, and metrics.json, written last: a run with metrics.json is complete. `mixmag report` adds
report.html and heatmaps/.

A cross-validated folder (`mixmag train` with `cv:`): fold-<i>/, a training run folder per fold with its fold's
cohort table, and the summary, cv.md and cv.json (written last).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__
from .config import MAX_RESAMPLES, MAX_SEED, MAX_WIDTH
from .errors import RunError, RunMismatchError
from .fileio import (
    FileTooLargeError,
    FolderLock,
    UnsafePathError,
    atomic_path,
    read_json_limited,
    read_text_limited,
    remove_own_file,
    write_atomic,
    write_csv_atomic,
    write_json_atomic,
)
from .markup import spreadsheet_text
from .store import EmbeddingSpace, PipelineSettings
from .weights_io import load_state_dict_file

_Data = TypeVar("_Data")
RUN_FORMAT_VERSION = 1  # of a training run folder; recorded in pipeline.json as "run_format"
MIXER_WEIGHTS = "mixer.safetensors"
MIXER_META = "mixer.json"
PIPELINE = "pipeline.json"
PREDICTION_FIELDS = ("specimen", "label", "score", "slides", "slide_scores")
TASK_PREDICTION_FIELDS = {  # a run's predictions table by task type (multiclass adds p_<class> for each class)
    "binary": PREDICTION_FIELDS,
    "multiclass": ("specimen", "label", "predicted", "score", "slides", "slide_scores"),
    "survival": ("specimen", "time", "event", "score", "risk_group", "slides", "slide_scores"),
    "regression": ("specimen", "target", "score", "slides", "slide_scores"),
}
SLIDE_SEPARATOR = ";"  # joins a specimen's slides and their scores in one predictions cell
SPLITS = ("train", "tune", "test")
RETRAIN = "train the run again with `mixmag train`"
REPRETRAIN = "move it away or pretrain into a new --out"


# -- the records a run's readers rely on (one small model per file; the files hold more, kept as they are) ----------


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class SplitMetrics(_Record):
    auroc: float = Field(ge=0, le=1)
    ci95: list[Annotated[float, Field(ge=0, le=1)]] = Field(min_length=2, max_length=2)
    specimens: int = Field(ge=1)
    positive: int = Field(ge=0)

    def value(self, metric: str) -> float:
        """The split's value of a metric (AUROC, or another task's primary metric the file holds)."""
        return float(getattr(self, metric))

    def counted(self) -> tuple[int, str] | None:
        """(positive specimens, "positive")."""
        return self.positive, "positive"

    def uno(self) -> tuple[float, float, float] | None:
        """No Uno C-index for a binary split."""
        return None


class EpochRecord(_Record):
    epoch: int = Field(ge=1)
    train_loss: float
    tune_auroc: float


class RunMetrics(_Record):
    """metrics.json: what `evaluate`, `report` and the experiment grid read from it."""

    best_epoch: int
    history: list[EpochRecord] = Field(default_factory=list)
    tune: SplitMetrics
    test: SplitMetrics
    primary: str = "auroc"  # the metric runs are compared on


class TaskSplitMetrics(_Record):
    """A split's entry of a multiclass, survival or regression run: its primary metric (named by metrics.json's
    `primary`) with `ci95`, and the type's other metrics (mixmag.train.tasks)."""

    ci95: list[float] = Field(min_length=2, max_length=2)
    specimens: int = Field(ge=1)
    classes: list[str] | None = None  # multiclass: the class names, in the confusion matrix's order
    confusion: list[list[int]] | None = None  # multiclass: counts, true class in rows
    balanced_accuracy: float | None = None  # multiclass
    events: int | None = None  # survival
    logrank_p: float | None = None  # survival: high- against low-risk group (None where undefined)
    uno_c_index: float | None = None  # survival: the censoring-weighted C-index beside Harrell's
    uno_ci95: list[float] | None = None
    mae: float | None = None  # regression

    def value(self, metric: str) -> float:
        """The split's value of a metric (the primary one, or another the file holds)."""
        return float(getattr(self, metric))

    def others(self, primary: str) -> dict[str, Any]:
        """The metrics the file holds besides the primary one, its interval, the counts and the confusion matrix (a
        report's 'more' column)."""
        return self.model_dump(exclude={primary, "ci95", "specimens", "confusion", "classes"}, exclude_unset=True)

    def counted(self) -> tuple[int, str] | None:
        """(events, "events") of a survival split; None for the others."""
        return None if self.events is None else (self.events, "events")

    def uno(self) -> tuple[float, float, float] | None:
        """A survival split's Uno C-index with its interval (value, low, high); None where the file has none."""
        if self.uno_c_index is None or self.uno_ci95 is None:
            return None
        return self.uno_c_index, self.uno_ci95[0], self.uno_ci95[1]


class TaskRunMetrics(_Record):
    """metrics.json of a run whose task is not binary."""

    task: Literal["multiclass", "survival", "regression"]
    primary: str
    best_epoch: int
    history: list[dict[str, Any]] = Field(default_factory=list)
    tune: TaskSplitMetrics
    test: TaskSplitMetrics


class RunModelRecord(_Record):
    """The part of config.json that says what the model reads (the report's magnification panel needs no more)."""

    bags: str | None = None
    region_level: str | None = None
    encoded: str | None = None  # the `mixmag encode` folder of patch / cls bags
    mixer: dict[str, Any] | None = None  # the jointly trained mixer's setting (bags = regions)

    @classmethod
    def of(cls, value: RunModelRecord | dict[str, Any]) -> RunModelRecord:
        """The record of a config as read (a dict), keeping what the file holds besides."""
        return value if isinstance(value, RunModelRecord) else cls.model_validate(value)

    @property
    def mixer_init(self) -> str | None:
        return None if self.mixer is None else self.mixer.get("init")

    @property
    def mixer_output(self) -> str:
        """What the jointly trained mixer hands the aggregator ("patch" unless the config says)."""
        return str((self.mixer or {}).get("output", "patch"))


def judged_auroc(metrics: RunMetrics | dict[str, Any] | None) -> tuple[str, float] | None:
    """(split, AUROC) a binary model is judged on: test, else tune when the test AUROC is missing or undefined; a
    metrics record, or a dict of (some of) metrics.json's entries."""
    data = metrics.model_dump() if isinstance(metrics, BaseModel) else (metrics or {})
    for split in ("test", "tune"):
        auroc = (data.get(split) or {}).get("auroc")
        if isinstance(auroc, (int, float)) and math.isfinite(auroc):
            return split, float(auroc)
    return None


def metrics_record(data: dict[str, Any]) -> RunMetrics | TaskRunMetrics:
    """A run's metrics (metrics.json, or what training and evaluation return) as the record of its task type: binary
    when it names no task."""
    return (TaskRunMetrics if data.get("task", "binary") != "binary" else RunMetrics).model_validate(data)


class RunConfigRecord(RunModelRecord):
    """config.json (the TrainConfig the run was trained with): the fields that reading a run back depends on."""

    cohort: str
    stores: str
    bags: str
    task: str = "binary"
    hidden: int | None = Field(None, ge=1, le=MAX_WIDTH)  # the model's readers check it is there
    bootstrap: int = Field(2000, ge=1, le=MAX_RESAMPLES)
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @property
    def stores_folder(self) -> Path:
        return Path(self.stores)


def checked_record(model: type[BaseModel], data: _Data, path: Path, fix: str) -> _Data:
    """`data` (a file's parsed JSON) if it fits `model`, else one sentence naming the file, the first field at fault
    and the fix."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"]))
        if error["type"] == "missing":
            why = f"`{where}` is missing"
        elif where:
            why = f"`{where}` is {_short(error['input'])}: {error['msg']}"
        else:
            why = f"the whole file: {error['msg']}"
        raise RunError(f"{path}: damaged or not this kind of file ({why}); {fix}") from None
    return data


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class PipelineRecord(PipelineSettings):
    """pipeline.json: the shared settings of the run's stores, and what prediction needs besides them (the run
    format, versions, the bag width, the mixer's architecture, the encode folder's mixer, the pretrained mixer's
    digest). Older runs lack some fields (None); fields this mixmag does not know are kept."""

    model_config = ConfigDict(frozen=True, extra="allow")

    run_format: int = 0
    mixmag_version: str | None = None
    torch_version: str | None = None
    bag_dim: int | None = None
    mixer: dict[str, Any] | None = None
    encoded_mixer: str | None = None
    mixer_digest: str | None = None

    @classmethod
    def of(cls, value: PipelineRecord | dict[str, Any]) -> PipelineRecord:
        """The record of pipeline.json as read (a dict); a value of the wrong type is one sentence."""
        if isinstance(value, PipelineRecord):
            return value
        checked_record(cls, value, Path(PIPELINE), RETRAIN)
        return cls.model_validate(value)


class TaskPipeline(_Record):
    """What pipeline.json records of a run's task besides the weights (`mixmag.train.tasks:Task.pipeline`): a
    multiclass run's classes, a regression run's target scale on its train split."""

    classes: list[str] = Field(default_factory=list)
    target_mean: float | None = None
    target_std: float | None = None

    @classmethod
    def of(cls, value: TaskPipeline | BaseModel | dict[str, Any] | None) -> TaskPipeline:
        """The task's part of a pipeline record or of pipeline.json as read; a wrong type is one sentence."""
        if isinstance(value, TaskPipeline):
            return value
        data = value.model_dump() if isinstance(value, BaseModel) else (value or {})
        checked_record(cls, data, Path(PIPELINE), RETRAIN)
        return cls.model_validate(data)


@dataclass(frozen=True)
class PredictionRow:
    """One specimen of predictions_<split>.csv: its label, score, slides and their scores (the file joins a
    specimen's slides and slide scores with SLIDE_SEPARATOR, here and nowhere else)."""

    specimen: str
    label: int
    score: float
    slides: tuple[str, ...]
    slide_scores: tuple[float, ...]

    def cells(self) -> list[str | int]:
        """The row as written: scores with six decimals."""
        return [
            self.specimen,
            self.label,
            f"{self.score:.6f}",
            SLIDE_SEPARATOR.join(self.slides),
            SLIDE_SEPARATOR.join(f"{v:.6f}" for v in self.slide_scores),
        ]

    @classmethod
    def from_cells(cls, row: dict[str, str]) -> PredictionRow:
        """A row as read (checked by `prediction_problem` first)."""
        return cls(
            specimen=row["specimen"],
            label=int(row["label"]),
            score=float(row["score"]),
            slides=tuple(row["slides"].split(SLIDE_SEPARATOR)),
            slide_scores=tuple(float(v) for v in row["slide_scores"].split(SLIDE_SEPARATOR)),
        )

    def slide_pairs(self) -> list[tuple[str, float]]:
        """(slide, its score) for each of the specimen's slides."""
        return list(zip(self.slides, self.slide_scores))


@dataclass(frozen=True)
class TaskRow:
    """One specimen of any task type's predictions table, typed: what a task's metrics, the report's figures and the
    paired comparisons read (fields a task type does not write are None; `probabilities`: multiclass p_<class>)."""

    specimen: str
    score: float
    slides: tuple[str, ...]
    slide_scores: tuple[float, ...]
    label: str | None = None  # binary: "0" or "1"; multiclass: the class name
    predicted: str | None = None
    time: float | None = None
    event: int | None = None
    target: float | None = None
    risk_group: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_cells(cls, row: Mapping[str, Any]) -> TaskRow:
        """A row as read (checked by `prediction_problem`) or as a task wrote it (cells of any type)."""

        def number(key: str) -> float | None:
            return None if row.get(key) in (None, "") else float(row[key])

        return cls(
            specimen=str(row["specimen"]),
            score=float(row["score"]),
            slides=tuple(str(row["slides"]).split(SLIDE_SEPARATOR)),
            slide_scores=tuple(float(v) for v in str(row["slide_scores"]).split(SLIDE_SEPARATOR)),
            label=None if row.get("label") is None else str(row["label"]),
            predicted=row.get("predicted"),
            time=number("time"),
            event=None if row.get("event") in (None, "") else int(row["event"]),
            target=number("target"),
            risk_group=row.get("risk_group"),
            probabilities={k[2:]: float(v) for k, v in row.items() if k.startswith("p_")},
        )

    @classmethod
    def of(cls, row: TaskRow | Mapping[str, Any]) -> TaskRow:
        return row if isinstance(row, TaskRow) else cls.from_cells(row)

    @property
    def binary_label(self) -> int:
        return int(self.label or 0)


def by_specimen(rows: list[TaskRow]) -> dict[str, TaskRow]:
    """A predictions table's rows by specimen (a paired comparison matches two runs' rows by it)."""
    return {r.specimen: r for r in rows}


class MixerMeta(_Record):
    """mixer.json beside a pretrained mixer's weights: its architecture, the pretraining config it was made with
    and the embedding space of the stores it was pretrained on (`stores`; absent in older files)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    mixer: dict[str, Any]
    pretraining: dict[str, Any] | None = None
    stores: dict[str, Any] | None = None
    mixmag_version: str | None = None

    @property
    def preset(self) -> str:
        """The preset it was pretrained with ("custom" when the file does not say)."""
        return str((self.pretraining or {}).get("preset", "custom"))

    @property
    def space(self) -> EmbeddingSpace:
        """The embedding space it was pretrained in; fields the file leaves null are not checked."""
        return EmbeddingSpace.model_validate({k: v for k, v in (self.stores or {}).items() if v is not None})


def read_mixer_meta(path: Path) -> MixerMeta:
    """mixer.json, read within its budget; ValueError (a ValidationError) when it is not a mixer description."""
    return MixerMeta.model_validate(read_json_limited(path, what=MIXER_META))


@dataclass(frozen=True)
class LossRow:
    """The losses of one logged pretraining step: the MEM loss and the predict-the-mean baseline's loss of that
    batch (None where the log has no such column, NaN where the cell is empty)."""

    step: int
    mem: float | None
    baseline_loss: float | None

    @classmethod
    def from_cells(cls, row: dict[str, str]) -> LossRow:
        """A row of a checked log (`read_pretraining_log`)."""
        return cls(int(row["step"]), _loss(row.get("mem")), _loss(row.get("baseline_loss")))


def read_losses(path: Path) -> list[LossRow]:
    """A pretraining log.csv's steps and losses, checked (`read_pretraining_log`) and typed."""
    return [LossRow.from_cells(r) for r in read_pretraining_log(path)]


def _loss(cell: str | None) -> float | None:
    return None if cell is None else float(cell or "nan")


def _number(text: str) -> float:
    """A finite number from a CSV cell, else ValueError."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not finite")
    return value


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
        rows = self.read_losses()
        return rows[-1].step if rows else 0

    def read_losses(self) -> list[LossRow]:
        """The logged steps and their losses, typed."""
        return read_losses(self.log) if self.log.is_file() else []

    def read_log(self) -> list[dict[str, str]]:
        """log.csv's rows, checked (`read_pretraining_log`); none when there is no log yet."""
        return read_pretraining_log(self.log) if self.log.is_file() else []

    def read_mixer_meta(self) -> MixerMeta | None:
        return read_mixer_meta(self.mixer_meta) if self.mixer_meta.is_file() else None

    def log_rows_up_to(self, step: int) -> list[dict[str, str]]:
        """log.csv's rows (all their columns, as written) up to `step`: what a resumed run keeps of it."""
        return [r for r, loss in zip(self.read_log(), self.read_losses()) if loss.step <= step]

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
        self.pipeline = self.folder / PIPELINE
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
        self,
        *,
        config: dict[str, Any],
        splits: dict[str, Any],
        pipeline: dict[str, Any],
        predictions: dict[str, list[PredictionRow | dict[str, Any]]],
        metrics: dict[str, Any],
        prediction_fields: tuple[str, ...] = PREDICTION_FIELDS,
    ) -> None:
        """Everything but the weights; metrics.json last, so that a complete-looking folder is complete. The
        predictions' columns are the task type's (`mixmag.train.tasks`; binary: `PREDICTION_FIELDS`); rows given as
        dicts are written cell for cell as they are."""
        write_json_atomic(self.config, config, indent=1)
        write_json_atomic(self.splits, splits, indent=1)
        write_json_atomic(self.pipeline, {"run_format": RUN_FORMAT_VERSION} | pipeline, indent=1)
        for split, rows in predictions.items():
            cells = [r.cells() if isinstance(r, PredictionRow) else [r[f] for f in prediction_fields] for r in rows]
            write_csv_atomic(self.predictions(split), prediction_fields, cells)
        write_json_atomic(self.metrics, metrics, indent=1)

    # -- reading -----------------------------------------------------------------------------------------
    def _need(self, path: Path) -> Path:
        if not path.is_file():
            raise RunError(f"{self.folder}: no {path.name}; is it a finished `mixmag train` run folder?")
        return path

    def _json(self, path: Path) -> dict[str, Any]:
        try:
            data: dict[str, Any] = read_json_limited(self._need(path), what=path.name)
            return data
        except (ValueError, UnsafePathError, FileTooLargeError) as exc:
            raise RunError(f"{path}: not readable JSON ({exc}); {RETRAIN}") from exc

    def read_config(self) -> dict[str, Any]:
        return checked_record(RunConfigRecord, self._json(self.config), self.config, RETRAIN)

    def read_metrics(self) -> dict[str, Any]:
        """metrics.json, checked against its task type's record (binary: `RunMetrics`)."""
        data = self._json(self.metrics)
        record = TaskRunMetrics if isinstance(data, dict) and data.get("task", "binary") != "binary" else RunMetrics
        return checked_record(record, data, self.metrics, RETRAIN)

    def read_config_record(self) -> RunConfigRecord:
        """config.json as a typed record of the fields reading a run back depends on."""
        return RunConfigRecord.model_validate(self.read_config())

    def read_metrics_record(self) -> RunMetrics | TaskRunMetrics:
        """metrics.json as a typed record of its task type (checked as `read_metrics` checks it)."""
        return metrics_record(self.read_metrics())

    def read_binary_metrics(self) -> RunMetrics:
        """metrics.json of a binary run, typed (a run of another task type is one sentence)."""
        record = self.read_metrics_record()
        if not isinstance(record, RunMetrics):
            raise RunError(f"{self.metrics}: a {record.task} run's metrics, not a binary run's")
        return record

    def read_splits(self) -> dict[str, Any]:
        return self._json(self.splits) if self.splits.is_file() else {}

    def read_pipeline(self) -> dict[str, Any] | None:
        """How the run's stores were made (None for runs written before pipeline.json existed); a run of a newer
        format than this mixmag reads is refused."""
        if not self.pipeline.is_file():
            return None
        pipeline = checked_record(PipelineRecord, self._json(self.pipeline), self.pipeline, RETRAIN)
        record = PipelineRecord.of(pipeline)
        if record.run_format > RUN_FORMAT_VERSION:
            raise RunMismatchError(
                f"{self.folder}: written by mixmag {record.mixmag_version} (run format "
                f"{record.run_format}), newer than this mixmag {__version__}; upgrade mixmag to use it"
            )
        return pipeline

    def read_pipeline_record(self) -> PipelineRecord | None:
        """pipeline.json as a typed record (None for runs written before it existed)."""
        pipeline = self.read_pipeline()
        return None if pipeline is None else PipelineRecord.of(pipeline)

    def read_predictions(self, split: str) -> list[dict[str, Any]]:
        """predictions_<split>.csv's rows (strings, as written), checked (`prediction_problem`): one sentence for a
        damaged file, another run's file or a split with one class."""
        path = self.predictions(split)
        if not path.is_file():
            raise RunError(f"{path}: no predictions; is {self.folder} a `mixmag train` run folder?")
        columns, rows = _csv_rows(path, "predictions table", RETRAIN)
        task = self.task()
        absent = [c for c in TASK_PREDICTION_FIELDS[task] if c not in columns]
        if absent:
            raise RunError(f"{path}: no column {', '.join(absent)}, so not a run's predictions; {RETRAIN}")
        seen: set[str] = set()
        for line, row in enumerate(rows, start=2):
            problem = prediction_problem(row, seen, task)
            if problem:
                raise RunError(f"{path} line {line}: {problem}; {RETRAIN}")
        if task == "binary" and len({r["label"] for r in rows}) < 2:
            raise RunError(f"{path}: the {split} split needs specimens of both labels for an AUROC; {RETRAIN}")
        return rows

    def task(self) -> str:
        """The run's task type (config.json's `task`; runs written before task types are binary)."""
        try:
            data = self._json(self.config) if self.config.is_file() else {}
        except RunError:  # a damaged config.json is reported by whoever needs more of it
            data = {}
        task = data.get("task", "binary") if isinstance(data, dict) else "binary"
        if task not in TASK_PREDICTION_FIELDS:
            raise RunError(f"{self.config}: unknown task {task!r}; {RETRAIN}")
        return str(task)

    def read_task_rows(self, split: str) -> list[TaskRow]:
        """predictions_<split>.csv of a run of any task type, checked (`read_predictions`) and typed."""
        return [TaskRow.from_cells(r) for r in self.read_predictions(split)]

    def read_prediction_rows(self, split: str) -> list[PredictionRow]:
        """A binary run's predictions_<split>.csv rows, checked and typed."""
        return [PredictionRow.from_cells(r) for r in self.read_predictions(split)]

    def read_scores(self, split: str) -> dict[str, tuple[int, float]]:
        """specimen -> (label, score) of a binary run's split, from its checked predictions (other task types:
        `read_predictions` and `mixmag.train.tasks:Task.from_rows`)."""
        if self.task() != "binary":
            raise RunError(f"{self.folder}: a {self.task()} run has no binary labels; read its predictions table")
        return {r.specimen: (r.label, r.score) for r in self.read_prediction_rows(split)}

    def read_weights(self) -> dict[str, torch.Tensor]:
        """best.pt, tensors only (a file holding anything else is refused in one sentence)."""
        return load_state_dict_file(
            self._need(self.weights), fix="retrain the run with `mixmag train`; never load it otherwise"
        )


class FoldSummary(_Record):
    """One fold's row of cv.json: its run folder, its split sizes (per class or event value) and its primary metric."""

    fold: int
    run: str
    best_epoch: int
    counts: dict[str, dict[Any, int]]  # split -> stratum -> specimens
    tune: float
    test: float
    test_ci95: list[float] = Field(min_length=2, max_length=2)

    def sizes(self) -> tuple[int, int, int]:
        """(train, tune, test) specimens."""
        train, tune, test = (sum(self.counts[s].values()) for s in SPLITS)
        return train, tune, test


class PooledMetric(_Record):
    """cv.json's pooled out-of-fold metric: the primary one (named by the summary) with its interval."""

    ci95: list[float] = Field(min_length=2, max_length=2)
    specimens: int

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))


class CrossValSummary(_Record):
    """cv.json: how the folds were made, each fold's row, the test metric's mean and sd over folds, and the pooled
    out-of-fold metric."""

    folds: int = Field(ge=1)
    task: str = "binary"
    primary: str
    grouped_by: str
    stratified_by: str
    tune_fraction: float
    seed: int
    per_fold: list[FoldSummary]
    mean: float
    sd: float
    pooled: PooledMetric

    @classmethod
    def of(cls, summary: CrossValSummary | dict[str, Any]) -> CrossValSummary:
        """The record of a summary as written (`mixmag.stages.crossval:summarise`) or read."""
        return summary if isinstance(summary, CrossValSummary) else cls.model_validate(summary)


class CrossValRun:
    """The files of a cross-validated training folder (`mixmag train` with `cv:`): one training run folder per fold,
    fold-<i>/ (each with its fold's cohort table, cohort.csv), and the summary, cv.json (written last: a folder with
    it is complete) and cv.md."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.summary = self.folder / "cv.json"
        self.summary_md = self.folder / "cv.md"

    def fold(self, index: int) -> TrainRun:
        return TrainRun(self.folder / f"fold-{index}")

    def fold_table(self, index: int) -> Path:
        return self.fold(index).folder / "cohort.csv"

    def is_cross_validated(self) -> bool:
        """The folder holds a cross-validation's summary or at least its first fold (not a single run)."""
        return self.summary.is_file() or (self.folder / "fold-0").is_dir()

    def lock(self) -> FolderLock:
        """Held while the folds are trained and summarised: a second cross-validation into it is refused."""
        return FolderLock(self.folder, "mixmag train (cross-validation)")

    def clear_summary(self) -> None:
        """Remove the summary before folds are (re)trained: a folder whose folds are being replaced has none, so
        nothing reads old and new folds as one cross-validation."""
        remove_own_file(self.summary)
        remove_own_file(self.summary_md)

    def write_summary(self, summary: dict[str, Any], markdown: str) -> None:
        write_atomic(self.summary_md, markdown)
        write_json_atomic(self.summary, summary, indent=1)

    def read_summary(self) -> dict[str, Any]:
        if not self.summary.is_file():
            raise RunError(f"{self.folder}: no cv.json; finish the cross-validation with `mixmag train` first")
        try:
            summary = read_json_limited(self.summary, what="cv.json")
        except (ValueError, UnsafePathError, FileTooLargeError) as exc:
            raise RunError(f"{self.summary}: not readable JSON ({exc}); {RETRAIN}") from exc
        if not isinstance(summary, dict) or not isinstance(summary.get("folds"), int) or summary["folds"] < 1:
            raise RunError(f"{self.summary}: damaged or not a cross-validation summary (no `folds`); {RETRAIN}")
        return summary

    def read_summary_record(self) -> CrossValSummary:
        """cv.json as a typed record."""
        return CrossValSummary.of(checked_record(CrossValSummary, self.read_summary(), self.summary, RETRAIN))

    def extra_folds(self, folds: int) -> list[Path]:
        """What is named like a fold folder (fold-<k>) but is not one of the `folds` this cross-validation made."""
        names = {self.fold(i).folder.name for i in range(folds)}
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return []
        return sorted(p for p in entries if _FOLD_NAME.fullmatch(p.name) and p.name not in names)

    def fold_runs(self) -> list[TrainRun]:
        """Every fold's run folder, each complete (the summary says how many there are); a fold folder beyond that
        count is refused, not left out silently (copied in, or left by an older mixmag's run with more folds)."""
        folds = self.read_summary()["folds"]
        extra = self.extra_folds(folds)
        if extra:
            raise RunError(
                f"{extra[0]}: a fold folder beyond the {folds} folds {self.summary.name} lists, so it would be left "
                f"out silently; move it out of {self.folder}, or {RETRAIN}"
            )
        runs = [self.fold(i) for i in range(folds)]
        tested: dict[str, str] = {}  # specimen -> the fold that tests it
        first: dict[str, Any] | None = None
        for run in runs:
            if run.folder.is_symlink():
                raise RunError(f"{run.folder}: a link, not a fold folder this cross-validation wrote; {RETRAIN}")
            if not run.is_complete():
                raise RunError(f"{run.folder}: unfinished fold (no {', '.join(run.missing())}); {RETRAIN}")
            first = _same_settings(run, first)
            test = run.read_splits().get("test")
            for spec in test if isinstance(test, list) else []:
                other = tested.setdefault(str(spec), run.folder.name)
                if other != run.folder.name:  # a fold copied over another, or a run from elsewhere
                    raise RunError(
                        f"{run.folder}: tests specimen {str(spec)[:200]!r}, which {other} tests too; the folds of one "
                        f"cross-validation test each specimen once: {RETRAIN}"
                    )
        return runs


_FOLD_NAME = re.compile(r"fold-\d+")
_PER_FOLD = ("cohort", "out", "cv")  # what a fold's config.json holds of its own


def _same_settings(run: TrainRun, first: dict[str, Any] | None) -> dict[str, Any]:
    """A fold's training settings (its config.json less its table and folder), refused when they differ from the
    first fold's: an ensemble of folds trained differently (another `bags`, another task) is not one run's."""
    mine = {k: v for k, v in run.read_config().items() if k not in _PER_FOLD}
    if first is None:
        return mine
    differ = sorted(k for k in mine.keys() | first.keys() if mine.get(k) != first.get(k))
    if differ:
        key = differ[0]
        raise RunError(
            f"{run.folder / 'config.json'}: `{key}` is {str(mine.get(key))[:100]!r} but fold-0's is "
            f"{str(first.get(key))[:100]!r}; the folds of one cross-validation are trained alike: {RETRAIN}"
        )
    return first


def prediction_problem(row: dict[str, str], seen: set[str], task: str = "binary") -> str | None:
    """What is wrong with one row of a predictions table (`seen`: the specimens of the rows before it), or None: a
    binary label is 0 or 1, a survival event too and its time positive, every number finite."""
    specimen = row["specimen"]
    if not specimen or specimen in seen:
        return f"specimen {specimen!r} is empty or listed twice"
    seen.add(specimen)
    if task == "binary" and row["label"] not in ("0", "1"):
        return f"label {row['label']!r} is not 0 or 1"
    if task == "survival" and row["event"] not in ("0", "1"):
        return f"event {row['event']!r} is not 0 or 1"
    slides, slide_scores = row["slides"].split(SLIDE_SEPARATOR), row["slide_scores"].split(SLIDE_SEPARATOR)
    if not all(slides) or len(slides) != len(slide_scores):
        return f"{len(slides)} slides but {len(slide_scores)} slide scores"
    numbers = [v for k, v in row.items() if k.startswith("p_") or k in ("time", "target")] if task != "binary" else []
    for value in (row["score"], *slide_scores, *numbers):
        try:
            _number(value)
        except (TypeError, ValueError):
            return f"score {value!r} is not a finite number"
    if task == "survival" and _number(row["time"]) <= 0:
        return f"time {row['time']!r} is not positive"
    return None


def read_pretraining_log(path: Path) -> list[dict[str, str]]:
    """A pretraining log.csv's rows, checked: a `step` column of whole numbers that only grow, and every other value a
    number (NaN allowed: a logged loss may be one); another kind of file, or a damaged one, is one sentence."""
    columns, rows = _csv_rows(path, "pretraining log", REPRETRAIN)
    if "step" not in columns:
        raise RunError(f"{path}: no `step` column, so not a mixmag pretraining log; {REPRETRAIN}")
    previous = 0
    for line, row in enumerate(rows, start=2):
        try:
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and value:
                    float(value)
        except ValueError as exc:
            raise RunError(f"{path} line {line}: {exc}; {REPRETRAIN}") from None
        if step <= previous:
            raise RunError(f"{path} line {line}: step {step} after step {previous}; {REPRETRAIN}")
        previous = step
    return rows


def _csv_rows(path: Path, what: str, fix: str) -> tuple[list[str], list[dict[str, str]]]:
    """A run's own CSV file (within the log budget): its header and rows, cells as written (before spreadsheet
    escaping, `mixmag.markup`); a row longer or shorter than the header is one sentence."""
    try:
        reader = csv.DictReader(io.StringIO(read_text_limited(path, "log", what=what), newline=""))
        columns = list(reader.fieldnames or [])
        rows = [{k: spreadsheet_text(v) if isinstance(v, str) else v for k, v in row.items()} for row in reader]
    except (csv.Error, UnsafePathError, FileTooLargeError) as exc:
        raise RunError(f"{path}: not a readable {what} ({exc}); {fix}") from None
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise RunError(f"{path} line {line}: not as many values as the header names; {fix}")
    return columns, rows
