"""`mixmag experiment grid.yaml`: methods x tasks x seeds -> Table 1/2-style tables and a Fig. 3-style plot.

Methods: AB-MIL (or another aggregator) on one level or all levels ("abmil-5x" ... "abmil-all", "mean-20x"); a
randomly initialised mixer trained jointly with AB-MIL over all levels ("random-patch", "random-cls") or over one
level's tokens ("random-5x-patch" ... "random-20x-cls"); and every named pretrained mixer, either
fine-tuned jointly ("<name>-patch", "<name>-cls") or frozen through `mixmag encode`
("<name>-patch-frozen", "<name>-cls-frozen"); a mixer method ending in "+mean" pools with that aggregator. Names are
parsed once into a typed spec (`mixmag.studies.methods:MethodSpec`). Each run is an ordinary `mixmag train` run folder;
finished runs are reused, so an interrupted grid resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import MAX_RESAMPLES, load_config
from ..data.cohort import load_cohort
from ..errors import ConfigError, MixmagError
from ..fileio import write_atomic, write_csv_atomic
from ..ids import ID_RULE, SafeName, is_safe_id
from ..markup import markdown_cell, plot_text
from ..models.mixer import MIXER_PRESETS
from ..runs import CrossValSummary, TrainRun
from ..stages.crossval import run_cross_validation
from ..stages.encode import encode_stores
from ..store import PipelineSettings, shared_settings
from ..train.crossval import CrossValConfig
from ..train.finetune import Seed, TrainConfig, TrainSettings, run_is_current, run_training
from ..train.mixer_file import mixer_architecture
from ..train.pretrain import store_paths
from ..train.tasks import PRIMARY, TaskType
from .figures import save_png
from .methods import MethodSpec, parse_method


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: SafeName  # the folder of the task's runs
    cohort: str
    stores: str
    type: TaskType = Field("binary", description="the task type (its table's columns, loss and primary metric)")
    classes: list[str] | None = Field(None, description="multiclass: the class names; default the table's, sorted")


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: str
    tasks: list[Task] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    seeds: list[Seed] = Field([0], min_length=1)
    pretrained: dict[str, str] = Field(default_factory=dict, description="name -> mixer.safetensors (e.g. 'MEM r=0.5')")
    random_preset: str | None = Field(
        None,
        description="architecture of random-init mixers; default: that of the pretrained "
        "mixers (the paper's Random is the mixing module's architecture), else tiny",
    )
    train: TrainSettings = Field(
        default_factory=TrainSettings, description="overrides for every run (epochs, lr, batch_size, ...)"
    )
    train_by_method: dict[str, TrainSettings] = Field(
        default_factory=dict, description="extra overrides for methods starting with a prefix, e.g. abmil: {epochs: 40}"
    )
    baseline: str = "abmil-20x"
    cv: CrossValConfig | None = Field(
        None,
        description="cross-validate every cell (`mixmag train` with this `cv:`); its value is the pooled out-of-fold "
        "metric (the tables' `split` columns are ignored)",
    )
    n_boot: int = Field(
        0,
        ge=0,
        le=MAX_RESAMPLES,
        description="> 0: also statistics.md, each cell's test metric with a bootstrap 95% CI over specimens, a paired "
        "p against the baseline (DeLong for binary, a paired bootstrap otherwise) and Benjamini-Hochberg q values",
    )

    @field_validator("pretrained")
    @classmethod
    def _names_are_folder_names(cls, pretrained: dict[str, str]) -> dict[str, str]:
        """A mixer's name becomes a folder (`encoded/<name>`, `<task>/<name>-patch`) once its unsafe characters are
        replaced: what is left must still be a plain name ('..' would climb out of `out`)."""
        for name in pretrained:
            if not is_safe_id(_slug(name)):
                raise ValueError(f"mixer name {name!r} does not make a safe folder name; use {ID_RULE}")
        return pretrained


def load_grid(path: str | Path) -> GridConfig:
    grid = load_config(GridConfig, path)
    for method in grid.methods:  # fail early on an unknown method or settings that do not combine
        try:
            method_config(grid, grid.tasks[0], method, 0)
        except ValidationError as exc:
            problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise ConfigError(f"{path}: method {method}: {problems}") from None
    return grid


def method_spec(grid: GridConfig, task: Task, method: str) -> MethodSpec:
    """The typed spec of one of the grid's methods for one of its tasks (`mixmag.studies.methods:parse_method`)."""
    return parse_method(method, grid.pretrained, task.type)


def method_config(grid: GridConfig, task: Task, method: str, seed: int) -> TrainConfig:
    """The training config of one cell of the grid and one seed, from the method's spec."""
    spec = method_spec(grid, task, method)
    out = run_folder(grid, task.name, method, seed)
    common = dict(cohort=task.cohort, stores=task.stores, out=str(out), seed=seed) | grid.train.given()
    if task.type != "binary":
        common |= {"task": task.type, "classes": task.classes}
    if grid.cv is not None:
        common |= {"cv": grid.cv}
    for prefix, overrides in grid.train_by_method.items():
        if method.startswith(prefix):
            common |= overrides.given()
    if spec.aggregator != "abmil":
        common |= {"aggregator": spec.aggregator}
    if spec.init is None:
        return TrainConfig(**common, bags=spec.bags)
    if spec.frozen:
        encoded = Path(grid.out) / "encoded" / _slug(str(spec.mixer)) / task.name
        return TrainConfig(**common, bags=spec.bags, encoded=str(encoded))
    if spec.init == "pretrained":
        mixer = {"init": "pretrained", "weights": grid.pretrained[str(spec.mixer)], "output": spec.output}
        return TrainConfig(**common, bags="regions", mixer=mixer)
    mixer = random_mixer(grid, spec.mixer) | {"output": spec.output}
    if spec.level is not None:  # a mixer over one magnification's tokens
        common |= {"region_level": spec.level}
    return TrainConfig(**common, bags="regions", mixer=mixer)


def random_mixer(grid: GridConfig, name: str | None) -> dict:
    """The mixer setting of a random baseline: the architecture of pretrained mixer `name`, or (name None) the one
    architecture all pretrained mixers share. A random_preset that differs from it is refused: comparing MEM with
    a random mixer must change the initialisation only."""
    archs = {n: mixer_architecture(w) for n, w in grid.pretrained.items() if name is None or n == name}
    if not archs:
        return {"init": "random", "preset": grid.random_preset or "tiny"}
    if len({json.dumps(a, sort_keys=True) for _, a in archs.values()}) > 1:
        raise ConfigError(
            f"the pretrained mixers {', '.join(archs)} differ in architecture, so 'random-patch|cls' is ambiguous; "
            f"use one random row per mixer: {', '.join(f'random-{n}-patch' for n in archs)}"
        )
    preset, arch = next(iter(archs.values()))
    if grid.random_preset is not None and grid.random_preset != preset:
        raise ConfigError(
            f"random_preset {grid.random_preset!r} is not the architecture of the pretrained mixer(s) "
            f"{', '.join(archs)} (preset {preset!r}); remove random_preset so that Random and MEM differ "
            "in initialisation only"
        )
    return {"init": "random", "preset": preset if preset in MIXER_PRESETS else "paper", "overrides": arch}


def run_folder(grid: GridConfig, task: str, method: str, seed: int) -> Path:
    """The training run folder of one cell of the grid and one seed."""
    return Path(grid.out) / task / _slug(method) / f"seed{seed}"


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _cohort_store_settings(cfg: TrainConfig) -> PipelineSettings | None:
    """The cohort's stores' shared provenance, or None when they cannot be read (training will say why). The table is
    read as its task type's: read as binary, a survival or multiclass table was refused and its runs never reused."""
    try:
        cohort = load_cohort(cfg.cohort, cfg.stores, task=cfg.task, classes=cfg.classes)
        return shared_settings(list(cohort.stores.values()))
    except (MixmagError, OSError):
        return None


def run_grid(grid: GridConfig, on_run=None) -> dict:
    """Run (or reuse) every method x task x seed; returns {task: {method: [test primary metric per seed]}} (AUROC
    for binary tasks, C-index, macro AUROC or Spearman for the others)."""
    results: dict[str, dict[str, list[float]]] = {}
    for task in grid.tasks:
        settings: dict[tuple[str, str], dict | None] = {}  # read once per cohort and stores folder
        encoded: set[str] = set()
        for method in grid.methods:
            for seed in grid.seeds:
                cfg = method_config(grid, task, method, seed)
                if cfg.encoded and cfg.encoded not in encoded:  # rewrites only what a new mixer or store made stale
                    encoded.add(cfg.encoded)
                    mixer = str(method_spec(grid, task, method).mixer)
                    encode_stores(store_paths(task.stores), Path(grid.pretrained[mixer]), Path(cfg.encoded))
                if cfg.cv is not None:
                    value, status = _cross_validate(cfg)
                else:
                    where = (cfg.cohort, cfg.stores)
                    if where not in settings:
                        settings[where] = _cohort_store_settings(cfg)
                    status = "reused" if run_is_current(cfg, settings[where]) else "trained"
                    if status == "trained":
                        run_training(cfg)
                    metrics = TrainRun(cfg.out).read_metrics_record()  # as written: reused or trained alike
                    value = metrics.test.value(metrics.primary)  # the task type's primary metric
                results.setdefault(task.name, {}).setdefault(method, []).append(value)
                if on_run:
                    on_run(task.name, method, seed, value, status)
    write_tables(grid, results)
    plot_differences(grid, results)
    return results


def _cross_validate(cfg: TrainConfig) -> tuple[float, str]:
    """Train (or reuse) a cell's folds; its value is the pooled out-of-fold metric, 'reused' when every fold was."""
    reused: list[bool] = []
    summary = CrossValSummary.of(run_cross_validation(cfg, on_fold=lambda i, metrics, again: reused.append(again)))
    return summary.pooled.value(summary.primary), "reused" if all(reused) else "trained"


def _metric_words(grid: GridConfig) -> str:
    """What the tables hold: AUROC, or each task type's primary metric when the grid has other task types."""
    types = sorted({t.type for t in grid.tasks})
    if types == ["binary"]:
        return "AUROC"
    return "primary metric (" + ", ".join(f"{t}: {PRIMARY[t]}" for t in types) + ")"


def write_tables(grid: GridConfig, results: dict) -> tuple[Path, Path]:
    """Markdown (best in bold, second best underlined, average column) and CSV of mean test AUROC."""
    out = Path(grid.out)
    tasks = [t.name for t in grid.tasks]
    means = {m: [float(np.mean(results[t][m])) for t in tasks] for m in grid.methods}
    avg = {m: float(np.mean(v)) for m, v in means.items()}
    columns = tasks + ["average"]
    table = {m: means[m] + [avg[m]] for m in grid.methods}
    ranks = {}
    for j in range(len(columns)):
        order = sorted(grid.methods, key=lambda m: -table[m][j])
        ranks[j] = (order[0], order[1] if len(order) > 1 else None)
    lines = ["| method | " + " | ".join(map(markdown_cell, columns)) + " |", "|---|" + "---:|" * len(columns)]
    for m in grid.methods:
        cells = []
        for j, v in enumerate(table[m]):
            text = f"{100 * v:.1f}"
            if m == ranks[j][0]:
                text = f"**{text}**"
            elif m == ranks[j][1]:
                text = f"<u>{text}</u>"
            cells.append(text)
        lines.append(f"| {markdown_cell(m)} | " + " | ".join(cells) + " |")
    seeds = ", ".join(map(str, grid.seeds))
    lines.append("")
    pooled = f"pooled out-of-fold over {grid.cv.folds} folds, " if grid.cv is not None else ""
    lines.append(
        f"Test {_metric_words(grid)} x 100, {pooled}mean over seeds {seeds}; best in bold, second best underlined."
    )
    md = write_atomic(out / "results.md", "\n".join(lines) + "\n")
    rows = [[m] + [f"{v:.4f}" for v in table[m]] for m in grid.methods]
    csv_path = write_csv_atomic(out / "results.csv", ["method"] + columns, rows)
    write_atomic(out / "results.json", json.dumps(results, indent=1))  # NaN stays possible: a one-class split
    return md, csv_path


def plot_differences(grid: GridConfig, results: dict) -> Path | None:
    """Fig. 3 style: per method, the AUROC difference to the baseline, one point per task, bar = mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if grid.baseline not in grid.methods:
        return None
    tasks = [t.name for t in grid.tasks]
    others = [m for m in grid.methods if m != grid.baseline]
    if not others:
        return None
    diffs = {m: [100 * (np.mean(results[t][m]) - np.mean(results[t][grid.baseline])) for t in tasks] for m in others}
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * len(others), 3.6))
    x = np.arange(len(others))
    ax.bar(x, [np.mean(diffs[m]) for m in others], color="#8fb3d9", edgecolor="#2b5d8c", label="mean over tasks")
    offsets = np.linspace(-0.15, 0.15, len(tasks))
    markers = "os^DvP*X"
    colours = plt.get_cmap("tab10")
    for j, task in enumerate(tasks):  # one marker and colour per task, named in the legend
        ax.scatter(
            x + offsets[j],
            [diffs[m][j] for m in others],
            color=colours(j % 10),
            marker=markers[j % len(markers)],
            edgecolor="black",
            linewidth=0.4,
            s=22,
            zorder=3,
            label=plot_text(task),
        )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [plot_text(m) for m in others], rotation=35, ha="right")
    ax.set_ylabel(f"test AUROC - {plot_text(grid.baseline)} (x 100)")
    ax.set_title("Difference to the baseline (points: tasks; bars: mean)")
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.tight_layout()
    path = Path(grid.out) / "differences.png"
    return save_png(fig, path)
