"""`mixmag benchmark --design-space`: the paper's design space at the embedding level (issue 25 item 5).

The paper's grid: MEM at removal ratios r in {0.25, 0.5, 0.75}; CMEM at source contexts c in {3, 7, 11} (r = 0.5);
each pretrained mixer fine-tuned jointly with AB-MIL (frozen one epoch, then layer-wise lr decay) on its patch tokens
(Table 1) and its class tokens (Table 2); Random (the same architecture, no pretraining) over each magnification's
tokens and over all; AB-MIL at 5x, 10x, 20x and all. Cohorts (`synth.benchmark`) may hold several slides per specimen
(`slides_per_specimen`) so that training takes eq. 9's minimum over a specimen's slides. Outputs: Table 1/2-style
markdown, a Fig. 3-style PNG (task-averaged AUROC differences with paired bootstrap CIs, `studies.contrasts`), a CSV of
every design point, and beside the tables every setting where this run departs from the paper's recipe.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from rich.console import Console

from ..config import MAX_RESAMPLES, MAX_STEPS, load_config
from ..errors import ConfigError
from ..fileio import make_folder, write_atomic, write_csv_atomic, write_json_atomic
from ..markup import markdown_cell, plain_console
from ..models.mixer import mixer_config
from ..runs import PretrainRun
from ..store import read_store, store_path, write_store
from ..synth.benchmark import TASKS, BenchmarkSpec
from ..tables import read_table
from ..train.finetune import Seed, TrainSettings
from ..train.pretrain import PretrainSettings
from .benchmark import (
    BENCHMARK_PRETRAIN,
    BENCHMARK_TRAIN,
    NOTICE,
    BenchmarkConfig,
    check_run_settings,
    generate_cohorts,
    pretrain_mixer,
)
from .benchmark_stats import pretraining_losses
from .contrasts import Contrast, ContrastData
from .demo import Timer
from .experiments import GridConfig, Task, run_folder, run_grid
from .figures import save_png
from .replicated_studies import Quantity, ReplicatedStudy, StudyPlan

BASELINE = "abmil-20x"  # the paper's reference in Fig. 3
LEVELS = ("5x", "10x", "20x", "all")
Output = Literal["patch", "cls"]

DESIGN_DEFAULTS_COHORT = {
    "n_specimens": 400,
    "dim": 32,
    "cells": 12,  # 12 x 12 cells: room for the 11 x 11 CMEM contexts
    "signal_regions": 4,  # 4 of the 16 regions: the benchmark's 1 of 4
    "slides_per_specimen": 2,
    "signal": 0.18,
    "signal_spread": 1.0,
    "label_noise": 0.05,
    "split": [0.4, 0.1, 0.5],
}


class DesignSpaceConfig(BaseModel):
    """configs/design-space.yaml: the design points and the settings every run shares."""

    model_config = ConfigDict(extra="forbid")

    out: str = "design_space_out"
    tasks: list[str] = Field(default_factory=lambda: list(TASKS))
    cohort: dict = Field(default_factory=lambda: dict(DESIGN_DEFAULTS_COHORT), description="BenchmarkSpec fields")
    cohort_by_task: dict[str, dict] = Field(
        default_factory=lambda: {
            "coarse": {"signal": 0.45},
            "cross": {"signal": 0.6, "signal_spread": 0.0},
            "context": {"signal": 0.6, "signal_spread": 0.0},
        }
    )
    mask_ratios: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75], description="MEM's r values")
    contexts: list[int] = Field(default_factory=lambda: [3, 7, 11], description="CMEM's source context sizes c")
    context_mask_ratio: float = Field(0.5, gt=0, lt=1, description="CMEM's r (the paper's 0.5)")
    outputs: list[Output] = Field(default_factory=lambda: ["patch", "cls"], description="Table 1 (patch), 2 (cls)")
    levels: list[Literal["5x", "10x", "20x", "all"]] = Field(
        default_factory=lambda: list(LEVELS), description="magnifications of the AB-MIL and Random rows"
    )
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1], min_length=1)
    pretrain: dict = Field(
        default_factory=lambda: {k: v for k, v in BENCHMARK_PRETRAIN.items() if k != "mask_ratio"},
        description="PretrainSettings shared by every pretraining run (mask_ratio and context are the design's)",
    )
    train: dict = Field(default_factory=lambda: dict(BENCHMARK_TRAIN))
    train_by_method: dict[str, dict] = Field(default_factory=dict)
    loss_window: int = Field(200, ge=1, le=MAX_STEPS)
    n_boot: int = Field(1000, ge=100, le=MAX_RESAMPLES)

    @field_validator("pretrain", "train")
    @classmethod
    def _settings_in_bounds(cls, value: dict, info: ValidationInfo) -> dict:
        check_run_settings(value, info.field_name)
        if info.field_name == "pretrain" and {"mask_ratio", "context"} & set(value):
            raise ValueError("mask_ratio and context are the design's: set mask_ratios, contexts, context_mask_ratio")
        return value

    @field_validator("mask_ratios")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        if not all(0 < r < 1 for r in value):
            raise ValueError(f"every removal ratio r must be in (0, 1), got {value}")
        return value


def load_design_space_config(path: Path | None, out: Path | None = None) -> DesignSpaceConfig:
    config = load_config(DesignSpaceConfig, path)
    where = path or "the built-in design space"
    unknown = [t for t in config.tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"{where}: unknown task(s) {', '.join(unknown)}; tasks: {', '.join(TASKS)}")
    if "20x" not in config.levels:
        raise ConfigError(f"{where}: levels must include 20x: AB-MIL 20x is the reference of every difference")
    cells = BenchmarkSpec(task=config.tasks[0], **config.cohort).cells
    if config.contexts and max(config.contexts) > cells:
        raise ConfigError(
            f"{where}: CMEM context {max(config.contexts)} is larger than the slides ({cells} x {cells} cells); "
            f"set cohort.cells to at least {max(config.contexts)} (a multiple of 3) or drop that context"
        )
    if config.contexts and min(config.contexts) < 3:
        raise ConfigError(f"{where}: CMEM contexts must be at least the region size 3, got {min(config.contexts)}")
    return config if out is None else config.model_copy(update={"out": str(out)})


def mem_name(r: float) -> str:
    return f"MEM-r{r:g}"


def cmem_name(c: int) -> str:
    return f"CMEM-c{c}"


def random_method(level: str, output: str) -> str:
    return f"random-{output}" if level == "all" else f"random-{level}-{output}"


def _level_words(level: str) -> str:
    return level.replace("x", "×") if level != "all" else "all×"


def design_rows(config: DesignSpaceConfig) -> list[tuple[str, str, str, str | None]]:
    """(method, family, setting, output) of every design point, in table order (AB-MIL has no output)."""
    rows = [(f"abmil-{lv}", "AB-MIL", _level_words(lv), None) for lv in config.levels]
    for output in config.outputs:
        rows += [(random_method(lv, output), "Random", _level_words(lv), output) for lv in config.levels]
        rows += [(f"{mem_name(r)}-{output}", "MEM", f"{r:.2f}", output) for r in config.mask_ratios]
        rows += [(f"{cmem_name(c)}-{output}", "CMEM", f"{c}×{c}", output) for c in config.contexts]
    return rows


def _context_stores(out: Path, tables: dict[str, Path], c: int) -> Path:
    """Copies of every non-test slide's store with all its c x c windows (stride 1) as CMEM contexts: a store holds
    one context size, and the benchmark's stores hold none. Made once; the cohorts' regeneration removes them."""
    folder = make_folder(out / "data" / f"contexts-{c}")
    for table in tables.values():
        for row in read_table(table).rows:
            target = store_path(folder, row["slide"])
            if row["split"] == "test" or target.is_file():
                continue
            store = read_store(row["store"])
            n_rows, n_cols = (int(v) for v in store.attrs["grid_shape"])
            windows = [(r, col) for r in range(n_rows - c + 1) for col in range(n_cols - c + 1)]
            windows = store.windows | {"contexts": np.array(windows, np.int32).reshape(-1, 2)}
            from_store = replace(store, windows=windows, attrs=store.attrs | {"context_size": c})
            write_store(target, from_store)
    return folder


def _pretrain_all(out: Path, config: DesignSpaceConfig, tables: dict[str, Path], console: Console) -> dict:
    """{mixer name: (mixer.safetensors, its loss record)}: one MEM run per r, one CMEM run per c."""
    shared = {"log_every": 10, "checkpoint_every": 100, "exclude_test_of": [str(t) for t in tables.values()]}
    shared |= config.pretrain
    runs = {mem_name(r): shared | {"stores": str(out / "data" / "stores"), "mask_ratio": r} for r in config.mask_ratios}
    for c in config.contexts:
        stores = _context_stores(out, tables, c)
        runs[cmem_name(c)] = shared | {"stores": str(stores), "mask_ratio": config.context_mask_ratio, "context": c}
    mixers = {}
    for name, settings in runs.items():
        console.print(f"pretraining {name}", style="bold")
        folder = out / "pretrain" / name
        mixer = pretrain_mixer(settings | {"out": str(folder)}, console)
        mixers[name] = (mixer, pretraining_losses(PretrainRun(folder).log, config.loss_window))
    return mixers


def _grid(out: Path, config: DesignSpaceConfig, tables: dict[str, Path], mixers: dict, console: Console) -> GridConfig:
    grid = GridConfig(
        out=str(out / "results"),
        methods=[row[0] for row in design_rows(config)],
        seeds=config.seeds,
        pretrained={name: str(path) for name, (path, _) in mixers.items()},
        tasks=[Task(name=t, cohort=str(p), stores=str(out / "data" / "stores")) for t, p in tables.items()],
        train=config.train,
        train_by_method=config.train_by_method,
        baseline=BASELINE,
    )
    run_grid(
        grid, on_run=lambda t, m, s, auc, status: console.print(f"{t:>8} / {m:<18} seed {s}: {auc:.3f} ({status})")
    )
    return grid


def contrast_data(grid: GridConfig, methods: list[str], n_boot: int) -> ContrastData:
    runs = {
        task.name: {m: [run_folder(grid, task.name, m, s) for s in grid.seeds] for m in methods} for task in grid.tasks
    }
    return ContrastData(runs, n_boot=n_boot)


def summary_groups(config: DesignSpaceConfig) -> list[tuple[str, str, list[str], list[str]]]:
    """(comparison, output, plus, minus): the paper's Fig. 3 comparisons, each family its methods over r, c or
    magnification."""
    out = []
    for output in config.outputs:
        groups = {
            "MEM": [f"{mem_name(r)}-{output}" for r in config.mask_ratios],
            "CMEM": [f"{cmem_name(c)}-{output}" for c in config.contexts],
            "Random": [random_method(lv, output) for lv in config.levels],
            "AB-MIL 20×": [BASELINE],
        }
        for a, b in [
            ("MEM", "AB-MIL 20×"),
            ("CMEM", "AB-MIL 20×"),
            ("Random", "AB-MIL 20×"),
            ("MEM", "Random"),
            ("CMEM", "Random"),
            ("MEM", "CMEM"),
        ]:
            if groups[a] and groups[b]:
                out.append((f"{a} − {b}", output, groups[a], groups[b]))
    if set(config.outputs) == {"patch", "cls"}:
        for family, names in [
            ("MEM", [mem_name(r) for r in config.mask_ratios]),
            ("CMEM", [cmem_name(c) for c in config.contexts]),
        ]:
            if names:
                out.append(
                    (f"Patch − CLS ({family})", "both", [f"{n}-patch" for n in names], [f"{n}-cls" for n in names])
                )
    return out


def summary_contrasts(config: DesignSpaceConfig, data: ContrastData) -> list[tuple[str, str, Contrast]]:
    """(comparison, output, contrast): the paper's Fig. 3 comparisons, each family averaged over its settings."""
    return [
        (name, output, data.contrast(name if output == "both" else f"{name} ({output})", plus, minus))
        for name, output, plus, minus in summary_groups(config)
    ]


def _point_label(family: str, setting: str, output: str | None) -> str:
    return f"{family} {setting}" + (f" {output}" if output else "")


def _replicate_quantities(config: DesignSpaceConfig) -> tuple[dict[str, Quantity], list[tuple[str, str, Quantity]]]:
    """({method: it minus AB-MIL 20x}, [(comparison, output, Fig. 3 family comparison)]) over the config's tasks."""
    tasks = tuple(config.tasks)
    points = {
        m: Quantity(_point_label(f, s, o), f"{m} − {BASELINE}", tasks, (m,), (BASELINE,))
        for m, f, s, o in design_rows(config)
        if m != BASELINE
    }
    summary = [
        (name, output, Quantity(f"families, {output}", name, tasks, tuple(plus), tuple(minus)))
        for name, output, plus, minus in summary_groups(config)
    ]
    return points, summary


def replicate_plan(config: DesignSpaceConfig) -> StudyPlan:
    """Every design point's task-averaged AUROC; each point minus AB-MIL 20x and the Fig. 3 family comparisons."""
    points, summary = _replicate_quantities(config)
    levels = [Quantity(_point_label(f, s, o), m, tuple(config.tasks), (m,)) for m, f, s, o in design_rows(config)]
    return StudyPlan(levels, [q for _, _, q in summary] + list(points.values()))


def plot_replicated(path: Path, config: DesignSpaceConfig, plan: StudyPlan, comparisons: dict) -> Path:
    """Fig. 3 style over replicates: bars the mean difference, whiskers its t interval over replicates."""
    points, summary = _replicate_quantities(config)

    def contrast(q: Quantity) -> Contrast:
        c = comparisons[q]
        return Contrast(q.label, q.plus, q.minus, c.mean, c.low, c.high)

    return plot_design_space(
        path,
        config,
        [(name, output, contrast(q)) for name, output, q in summary],
        {m: contrast(q) for m, q in points.items()},
        whiskers="95% t interval over replicates (each a fresh cohort, pretraining and training seeds)",
    )


def plot_design_space(
    path: Path,
    config: DesignSpaceConfig,
    summary,
    points: dict[str, Contrast],
    whiskers: str = "95% paired bootstrap CI",
) -> Path:
    """Fig. 3 style: (a) the family comparisons, patch and CLS side by side; (b) every design point against AB-MIL
    20x. Bars: task-averaged AUROC difference x 100; whiskers: each contrast's interval (by default its 95% paired
    bootstrap CI over test specimens; `whiskers` says which)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"patch": "#4c78a8", "cls": "#f58518", "both": "#54a24b", None: "#9d9d9d"}
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1.6]})
    labels = list(dict.fromkeys(name for name, _, _ in summary))
    width = 0.38
    for name, output, c in summary:
        x = labels.index(name) + {"patch": -width / 2, "cls": width / 2, "both": 0.0}[output]
        err = [[100 * (c.value - c.low)], [100 * (c.high - c.value)]]
        ax_a.bar(x, 100 * c.value, width, color=colours[output], yerr=err, capsize=3, edgecolor="black", lw=0.4)
    for output in dict.fromkeys(o for _, o, _ in summary):
        ax_a.bar(0, 0, 0, color=colours[output], label={"patch": "Patch", "cls": "CLS", "both": "Patch − CLS"}[output])
    ax_a.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax_a.set_title("(a) families, averaged over r, c, magnification and tasks", fontsize=9)
    ax_a.legend(fontsize=7)
    rows = [row for row in design_rows(config) if row[0] in points]
    for k, (method, _, _, output) in enumerate(rows):
        c = points[method]
        err = [[100 * (c.value - c.low)], [100 * (c.high - c.value)]]
        ax_b.bar(k, 100 * c.value, 0.7, color=colours[output], yerr=err, capsize=2, edgecolor="black", lw=0.4)
    ax_b.set_xticks(
        range(len(rows)),
        [_point_label(f, s, o) for _, f, s, o in rows],
        rotation=60,
        ha="right",
        fontsize=7,
    )
    ax_b.set_title(f"(b) every design point − {BASELINE}, averaged over tasks", fontsize=9)
    for ax in (ax_a, ax_b):
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("test AUROC difference (x 100)")
    fig.suptitle(f"Synthetic embedding-level benchmark (not the paper's data); whiskers: {whiskers}", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def _ranks(values: dict[str, float]) -> tuple[str | None, str | None]:
    order = sorted(values, key=lambda m: -values[m])
    return (order[0] if order else None), (order[1] if len(order) > 1 else None)


def design_table(config: DesignSpaceConfig, data: ContrastData, points: dict[str, Contrast], output: str) -> str:
    """Table 1 (patch, with the AB-MIL rows) or Table 2 (cls): test AUROC x 100 per task and averaged; best bold,
    second underlined; and each row's task-averaged difference to AB-MIL 20x with its CI."""
    rows = [r for r in design_rows(config) if r[3] == output or (r[3] is None and output == "patch")]
    tasks = list(data.point)
    columns = {t: {m: data.point[t][m] for m, *_ in rows} for t in tasks}
    columns["average"] = {m: float(np.mean([data.point[t][m] for t in tasks])) for m, *_ in rows}
    ranks = {col: _ranks(values) for col, values in columns.items()}
    lines = [
        "| | | " + " | ".join(markdown_cell(c) for c in columns) + f" | Δ vs {BASELINE} (95% CI) |",
        "|---|---|" + "---:|" * (len(columns) + 1),
    ]
    for method, family, setting, _ in rows:
        cells = []
        for col, values in columns.items():
            text = f"{100 * values[method]:.1f}"
            cells.append(
                f"**{text}**" if method == ranks[col][0] else f"<u>{text}</u>" if method == ranks[col][1] else text
            )
        c = points.get(method)
        delta = "—" if c is None else f"{100 * c.value:+.1f} ({100 * c.low:+.1f} to {100 * c.high:+.1f})"
        lines.append(f"| {family} | {setting} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines) + "\n"


def departures(pretrain: dict, train: dict, cohort: dict, tasks: list[str], seeds: list[int], pool: int) -> list:
    """(setting, the paper's recipe, this run's, departs) for every setting: departs is "yes", "no" or "the paper
    does not say" (this run's value is then mixmag's choice)."""
    ps, ts = PretrainSettings(**pretrain), TrainSettings(**train)
    spec = BenchmarkSpec(task=tasks[0], **cohort)
    mc = mixer_config(ps.preset, **ps.mixer.given())
    unstated = "the paper does not say"

    def row(setting: str, paper: str, here: str, same: bool | None) -> tuple[str, str, str, str]:
        return setting, paper, here, unstated if same is None else "no" if same else "yes"

    paper_arch = (1536, 12, 12, 2.0, "swiglu", 4)
    arch = (mc.dim, mc.depth, mc.heads, mc.mlp_ratio, mc.mlp, mc.n_cls)
    return [
        row("data", "8 biomarker tasks on real slides, Virchow2 tile embeddings (D = 1280)",
            f"{len(tasks)} synthetic embedding-level task(s) ({', '.join(tasks)}), D = {spec.dim}, no pixels", False),
        row("labelled specimens per task", "about 500 to 4,500 for training",
            f"{spec.n_specimens} in all, split train/tune/test {'/'.join(f'{v:g}' for v in spec.split)}",
            500 <= spec.n_specimens * spec.split[0]),
        row("slides per specimen", "one or more; eq. 9 (minimum loss over a specimen's slides)",
            f"{spec.slides_per_specimen}" + ("; eq. 9 runs" if spec.slides_per_specimen > 1 else "; eq. 9 never runs"),
            spec.slides_per_specimen > 1),
        row("pretraining data", "1M slides, >200 tissue types", f"the {pool} non-test slides of these cohorts", False),
        row("mixer encoder", "dim 1536, 12 layers, 12 heads, MLP ratio 2 swiglu, 4 class tokens",
            f"dim {mc.dim}, {mc.depth} layers, {mc.heads} heads, MLP ratio {mc.mlp_ratio:g} {mc.mlp}, "
            f"{mc.n_cls} class tokens", arch == paper_arch),
        row("mixer decoder", "dim 1536, 2 layers", f"dim {mc.decoder_dim}, {mc.decoder_depth} layer(s)",
            (mc.decoder_dim, mc.decoder_depth) == (1536, 2)),
        row("CMEM projector", "hidden 4096, output 256", f"hidden {mc.projector_hidden}, output {mc.projector_out}",
            (mc.projector_hidden, mc.projector_out) == (4096, 256)),
        row("pretraining batch", "4096", f"{ps.batch_size}", ps.batch_size == 4096),
        row("pretraining samples", "200M", f"{ps.steps * ps.batch_size:,} ({ps.steps} steps)",
            abs(ps.steps * ps.batch_size - 2e8) < 1e6),
        row("base lr (x batch / 256)", "1.5e-4", f"{ps.base_lr:g}", ps.base_lr == 1.5e-4),
        row("warm-up", "linear, length not stated", f"{ps.warmup_steps} steps", None),
        row("final lr of the cosine", "not stated", f"{ps.min_lr_ratio:g} x peak", None),
        row("gradient clipping", "not stated", f"{ps.grad_clip}", None),
        row("precision", "fp16", ps.precision, ps.precision == "fp16"),
        row("CMEM source contexts", "c x c regions subsampled from larger quantized contexts",
            "every c x c window (stride 1) of each non-test slide", None),
        row("slide-level lr", "1e-5", f"{ts.lr:g}", ts.lr == 1e-5),
        row("slide-level batch", "32", f"{ts.batch_size}", ts.batch_size == 32),
        row("slide-level epochs", "not stated", f"{ts.epochs}", None),
        row("aggregator hidden dim", "16", f"{ts.hidden}", ts.hidden == 16),
        row("weight decay", "0.05", f"{ts.weight_decay:g}", ts.weight_decay == 0.05),
        row("label smoothing", "yes, value not stated", f"{ts.label_smoothing:g}",
            None if ts.label_smoothing else False),
        row("mixer frozen, then layer-wise lr decay", "1 epoch, 0.75",
            f"{ts.freeze_epochs} epoch(s), {ts.layer_decay:g}", (ts.freeze_epochs, ts.layer_decay) == (1, 0.75)),
        row("training runs per cell", "not stated", f"{len(seeds)} seed(s): {', '.join(map(str, seeds))}", None),
    ]  # fmt: skip


def departures_markdown(rows: list) -> str:
    lines = ["| setting | the paper | this run | departs |", "|---|---|---|---|"]
    for setting, paper, here, departs in rows:
        lines.append(f"| {setting} | {markdown_cell(paper)} | {markdown_cell(here)} | {departs} |")
    return "\n".join(lines) + "\n"


def pool_size(tables: dict[str, Path]) -> int:
    """Non-test slides of these cohort tables: what pretraining reads."""
    return sum(row["split"] != "test" for table in tables.values() for row in read_table(table).rows)


def _write_outputs(out: Path, config: DesignSpaceConfig, data, points, summary, mixers, pool: int) -> str:
    rows = design_rows(config)
    write_csv_atomic(
        out / "design_space.csv",
        ["method", "family", "setting", "output", *[f"auroc_{t}" for t in data.point], "auroc_average",
         f"difference_vs_{BASELINE}", "ci_low", "ci_high"],
        [
            [m, f, s, o or "", *[f"{data.point[t][m]:.4f}" for t in data.point],
             f"{np.mean([data.point[t][m] for t in data.point]):.4f}",
             *([""] * 3 if m not in points else [f"{v:.4f}" for v in (points[m].value, points[m].low, points[m].high)])]
            for m, f, s, o in rows
        ],
    )  # fmt: skip
    write_json_atomic(out / "pretraining.json", {name: losses for name, (_, losses) in mixers.items()})
    figure = plot_design_space(out / "design_space.png", config, summary, points)
    kinds = {"patch": "Table 1-style: patch tokens (contextualized)", "cls": "Table 2-style: CLS tokens (compressed)"}
    tables = "".join(
        f"\n{kinds[o]}, test AUROC x 100 (mean over seeds), best bold, second underlined:\n\n"
        f"{design_table(config, data, points, o)}"
        for o in config.outputs
    )
    summary_lines = ["| comparison | output | AUROC difference x 100 | 95% CI |", "|---|---|---:|---|"] + [
        f"| {name} | {output} | {100 * c.value:+.1f} | {100 * c.low:+.1f} to {100 * c.high:+.1f} |"
        for name, output, c in summary
    ]
    losses = "\n".join(
        f"- {name}: loss {rec['mem']:.3f} against the predict-the-mean baseline {rec['baseline']:.3f} "
        f"(last {rec['averaged_over_steps']} of {rec['steps']} steps)"
        for name, (_, rec) in mixers.items()
    )
    text = (
        f"{NOTICE}\n\nThe paper's design space at small scale ({len(config.tasks)} tasks, seeds "
        f"{', '.join(map(str, config.seeds))}); figure: {figure.name}.\n{tables}\n"
        f"Fig. 3-style comparisons (task-averaged; CI: paired bootstrap over test specimens, {config.n_boot} "
        f"resamples; it does not cover the variance between pretraining runs or cohorts):\n\n"
        + "\n".join(summary_lines)
        + f"\n\nPretraining (MEM loss on the hidden tokens; CMEM: its MEM part):\n\n{losses}\n\n"
        f"Departures from the paper's recipe:\n\n"
        + departures_markdown(
            departures(config.pretrain, config.train, config.cohort, config.tasks, config.seeds, pool)
        )
    )
    write_atomic(out / "design_space.md", text)
    return text


def run_design_space(config: DesignSpaceConfig, console: Console | None = None) -> dict:
    """Generate the cohorts, pretrain every MEM and CMEM point, run the grid, write the tables and the figure."""
    console = console or plain_console()
    out = make_folder(Path(config.out))
    timer = Timer()
    console.print(NOTICE, style="bold yellow", soft_wrap=True)
    bench = BenchmarkConfig(
        out=str(out), tasks=config.tasks, cohort=config.cohort, cohort_by_task=config.cohort_by_task, methods=[BASELINE]
    )
    tables = timer.run("1. generate the cohorts", console, lambda: generate_cohorts(out, bench, console))
    mixers = timer.run(
        "2. pretrain MEM (each r) and CMEM (each c)", console, lambda: _pretrain_all(out, config, tables, console)
    )
    grid = timer.run(
        "3. train every design point x task x seed", console, lambda: _grid(out, config, tables, mixers, console)
    )

    def statistics():
        data = contrast_data(grid, grid.methods, config.n_boot)
        points = {m: data.contrast(m, [m], [BASELINE]) for m in grid.methods if m != BASELINE}
        return data, points, summary_contrasts(config, data)

    data, points, summary = timer.run("4. statistics (paired bootstrap)", console, statistics)
    text = _write_outputs(out, config, data, points, summary, mixers, pool_size(tables))
    write_json_atomic(out / "timings.json", timer.stages)
    console.print(text, highlight=False, soft_wrap=True, markup=False)
    return {
        "tables": tables,
        "mixers": mixers,
        "points": points,
        "summary": summary,
        "timings": timer.stages,
        "grid": grid,
    }


DESIGN_SPACE = ReplicatedStudy(
    "design_space", "Design space", lambda c, console: run_design_space(c, console), replicate_plan, plot_replicated
)
