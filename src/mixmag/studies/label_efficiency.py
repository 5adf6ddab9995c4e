"""`mixmag benchmark --label-efficiency`: where self-supervision is meant to pay (issue 25 item 2).

Per task, one labelled cohort (`synth.benchmark`) whose test and tune specimens are fixed, and whose training
specimens are nested subsets of the sizes asked (e.g. 50 / 100 / 200 / 400, stratified by label): every size is
tested on the same specimens, so sizes and methods are paired. Beside it an unlabelled pool of `unlabelled_specimens`
more specimens per task (slides `<task>-U<k>-S<j>`, no table). One MEM pretraining run reads the pool and every
labelled non-test slide (never a test slide), and serves every size; then AB-MIL, the random mixer and the MEM mixer
(fine-tuned jointly) are trained at each size. Outputs: a table of task-averaged test AUROC per method and size, the
MEM rows' differences with paired bootstrap CIs, a plot of AUROC against labelled size, and the pool's record.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from rich.console import Console

from ..config import MAX_RESAMPLES, MAX_STEPS, load_config
from ..errors import ConfigError
from ..fileio import (
    make_folder,
    read_json_limited,
    remove_own_tree,
    write_atomic,
    write_csv_atomic,
    write_json_atomic,
)
from ..markup import markdown_cell, plain_console, plot_text
from ..runs import PretrainRun
from ..synth.benchmark import TASKS, BenchmarkSpec, write_benchmark_cohort, write_unlabelled_slides
from ..tables import read_table
from ..train.finetune import Seed
from ..train.pretrain import PretrainConfig, pretraining_catalog
from .benchmark import BENCHMARK_PRETRAIN, BENCHMARK_TRAIN, NOTICE, check_run_settings, pretrain_mixer, uses_a_mixer
from .benchmark_stats import pretraining_losses
from .contrasts import Contrast, ContrastData
from .demo import Timer
from .design_space import departures, departures_markdown
from .experiments import GridConfig, Task, run_folder, run_grid
from .figures import errorbar_contrasts, save_png
from .replicated_studies import Quantity, ReplicatedStudy, StudyPlan

BASELINE = "abmil-20x"


class LabelEfficiencyConfig(BaseModel):
    """configs/label-efficiency.yaml."""

    model_config = ConfigDict(extra="forbid")

    out: str = "label_efficiency_out"
    tasks: list[str] = Field(default_factory=lambda: list(TASKS))
    label_sizes: list[int] = Field(
        default_factory=lambda: [50, 100, 200, 400], description="labelled training specimens per task"
    )
    tune_specimens: int = Field(100, ge=4, le=100_000)
    test_specimens: int = Field(400, ge=4, le=100_000)
    unlabelled_specimens: int = Field(
        1600, ge=0, le=100_000, description="unlabelled specimens per task in the pretraining pool"
    )
    cohort: dict = Field(
        default_factory=lambda: {"dim": 32, "signal": 0.18, "signal_spread": 1.0, "label_noise": 0.05},
        description="BenchmarkSpec fields (n_specimens and split follow from the sizes)",
    )
    cohort_by_task: dict[str, dict] = Field(
        default_factory=lambda: {
            "coarse": {"signal": 0.45},
            "cross": {"signal": 0.6, "signal_spread": 0.0},
            "context": {"signal": 0.6, "signal_spread": 0.0},
        }
    )
    methods: list[str] = Field(default_factory=lambda: ["abmil-20x", "abmil-all", "random-patch", "MEM-patch"])
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1], min_length=1)
    pretrain: dict = Field(default_factory=lambda: dict(BENCHMARK_PRETRAIN))
    train: dict = Field(default_factory=lambda: dict(BENCHMARK_TRAIN))
    train_by_method: dict[str, dict] = Field(default_factory=dict)
    loss_window: int = Field(200, ge=1, le=MAX_STEPS)
    n_boot: int = Field(1000, ge=100, le=MAX_RESAMPLES)

    @field_validator("pretrain", "train")
    @classmethod
    def _settings_in_bounds(cls, value: dict, info: ValidationInfo) -> dict:
        return check_run_settings(value, info.field_name)

    @field_validator("label_sizes")
    @classmethod
    def _sizes(cls, value: list[int]) -> list[int]:
        if not value or any(n < 4 or n > 100_000 for n in value) or len(set(value)) != len(value):
            raise ValueError(f"label_sizes must be distinct sizes of 4 to 100,000 specimens, got {value}")
        return sorted(value)


def load_label_efficiency_config(path: Path | None, out: Path | None = None) -> LabelEfficiencyConfig:
    config = load_config(LabelEfficiencyConfig, path)
    where = path or "the built-in label-efficiency sweep"
    unknown = [t for t in config.tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"{where}: unknown task(s) {', '.join(unknown)}; tasks: {', '.join(TASKS)}")
    if BASELINE not in config.methods:
        raise ConfigError(f"{where}: methods must include {BASELINE}, the reference of every difference")
    return config if out is None else config.model_copy(update={"out": str(out)})


def size_task(task: str, size: int) -> str:
    return f"{task}-n{size}"


def _specs(config: LabelEfficiencyConfig) -> dict[str, BenchmarkSpec]:
    n = max(config.label_sizes) + config.tune_specimens + config.test_specimens
    return {
        t: BenchmarkSpec(task=t, **(config.cohort | config.cohort_by_task.get(t, {}) | {"n_specimens": n}))
        for t in config.tasks
    }


def _take(ids: list[str], labels: dict[str, int], n: int, rng: np.random.Generator) -> list[str]:
    """n of these specimens, stratified by label (each class's share kept, rounded), in a fixed random order."""
    by_class = {c: rng.permutation([i for i in ids if labels[i] == c]).tolist() for c in (0, 1)}
    n_pos = min(len(by_class[1]), max(1, round(n * len(by_class[1]) / len(ids))))
    n_pos = max(n_pos, n - len(by_class[0]))
    return by_class[1][:n_pos] + by_class[0][: n - n_pos]


def size_tables(source: Path, folder: Path, config: LabelEfficiencyConfig, seed: int) -> dict[int, Path]:
    """From one generated cohort, its test and tune specimens (stratified, fixed) and the rest as the training pool;
    per size a table whose train split is the first `size` of the pool in a fixed stratified order (nested: a
    smaller size's specimens are in every larger one). The generated table's own split is not used."""
    table = read_table(source)
    labels = {row["specimen"]: int(row["label"]) for row in table.rows}
    ids = sorted(labels)
    rng = np.random.default_rng([seed, 31])
    test = _take(ids, labels, config.test_specimens, rng)
    rest = [i for i in ids if i not in set(test)]
    tune = _take(rest, labels, config.tune_specimens, rng)
    pool = [i for i in rest if i not in set(tune)]
    order = [pool[k] for k in _nested_order(pool, labels, rng)]
    split = {i: "test" for i in test} | {i: "tune" for i in tune}
    out = {}
    for size in config.label_sizes:
        chosen = {i: "train" for i in order[:size]}
        rows = [
            [row[c] for c in table.columns[:3]] + [(split | chosen)[row["specimen"]], row["store"]]
            for row in table.rows
            if row["specimen"] in split or row["specimen"] in chosen
        ]
        out[size] = write_csv_atomic(folder / f"{source.stem}-n{size}.csv", table.columns, rows)
    return out


def _nested_order(pool: list[str], labels: dict[str, int], rng: np.random.Generator) -> list[int]:
    """An order of the training pool whose every prefix is as close to the pool's class balance as it can be."""
    share = np.mean([labels[i] for i in pool])
    by_class = {c: rng.permutation([k for k, i in enumerate(pool) if labels[i] == c]).tolist() for c in (0, 1)}
    order, taken = [], {0: 0, 1: 0}
    for k in range(len(pool)):
        behind = taken[1] < round((k + 1) * share) and taken[1] < len(by_class[1])
        want = 1 if behind or taken[0] >= len(by_class[0]) else 0
        order.append(by_class[want][taken[want]])
        taken[want] += 1
    return order


def _generate(out: Path, config: LabelEfficiencyConfig, console: Console) -> dict[str, dict[int, Path]]:
    """{task: {size: table}}; reused when made from the same specs, sizes and pool (else every later stage is stale)."""
    specs = _specs(config)
    data = out / "data"
    wanted = {
        "specs": {t: asdict(spec) for t, spec in specs.items()},
        "label_sizes": config.label_sizes,
        "tune": config.tune_specimens,
        "test": config.test_specimens,
        "unlabelled": config.unlabelled_specimens,
    }
    tables = {t: {n: data / f"{t}-n{n}.csv" for n in config.label_sizes} for t in config.tasks}
    record = data / "specs.json"
    if (
        record.is_file()
        and read_json_limited(record, what="label-efficiency record") == _json(wanted)
        and all(p.is_file() for sizes in tables.values() for p in sizes.values())
    ):
        console.print(f"reusing the cohorts in {data}")
        return tables
    for stale in ("data", "pretrain", "results"):
        remove_own_tree(out / stale)
    for task, spec in specs.items():
        source = write_benchmark_cohort(data / "generated", spec, data / "stores")
        tables[task] = size_tables(source, data, config, spec.seed)
        write_unlabelled_slides(data / "stores", spec, config.unlabelled_specimens)
    write_json_atomic(record, wanted)
    return tables


def _json(value):
    return json.loads(json.dumps(value))


def pretrain_settings(out: Path, config: LabelEfficiencyConfig, tables: dict[str, dict[int, Path]]) -> dict:
    """The pretraining run's PretrainConfig fields: the stores folder (the unlabelled pool and the labelled cohorts),
    less every test slide of every size's table."""
    held = [str(p) for sizes in tables.values() for p in sizes.values()]
    return {
        "stores": str(out / "data" / "stores"),
        "out": str(out / "pretrain"),
        "log_every": 10,
        "checkpoint_every": 100,
        "exclude_test_of": held,
    } | config.pretrain


def pool_record(settings: dict, tables: dict[str, dict[int, Path]], config: LabelEfficiencyConfig) -> dict:
    """What pretraining reads: its slides by kind, and the test slides among them (none, or it refuses)."""
    pool = {e.slide_id for e in pretraining_catalog(PretrainConfig(**settings)).entries}
    test = {
        r["slide"]
        for sizes in tables.values()
        for p in sizes.values()
        for r in read_table(p).rows
        if r["split"] == "test"
    }
    if pool & test:
        raise ConfigError(f"the pretraining pool holds test slides ({', '.join(sorted(pool & test)[:3])}); refusing")
    unlabelled = {s for s in pool if s.split("-")[-2].startswith("U")}
    largest = max(config.label_sizes)
    return {
        "pool_slides": len(pool),
        "unlabelled_slides": len(unlabelled),
        "labelled_non_test_slides": len(pool - unlabelled),
        "test_slides_excluded": len(test),
        "test_slides_in_pool": 0,
        "unlabelled_specimens_per_task": config.unlabelled_specimens,
        "largest_labelled_split": largest,
        "unlabelled_per_labelled": round(config.unlabelled_specimens / largest, 2),
    }


def _grid(out: Path, config: LabelEfficiencyConfig, tables, mixer: Path | None, console: Console) -> GridConfig:
    grid = GridConfig(
        out=str(out / "results"),
        methods=config.methods,
        seeds=config.seeds,
        pretrained={} if mixer is None else {"MEM": str(mixer)},
        tasks=[
            Task(name=size_task(t, n), cohort=str(p), stores=str(out / "data" / "stores"))
            for t, sizes in tables.items()
            for n, p in sizes.items()
        ],
        train=config.train,
        train_by_method=config.train_by_method,
        baseline=BASELINE,
    )
    run_grid(
        grid, on_run=lambda t, m, s, auc, status: console.print(f"{t:>12} / {m:<12} seed {s}: {auc:.3f} ({status})")
    )
    return grid


def _pairs(methods: list[str]) -> list[tuple[str, str]]:
    """(method, against): every method against AB-MIL 20x, and each MEM row against its random twin."""
    pairs = [(m, BASELINE) for m in methods if m != BASELINE]
    pairs += [(m, "random-" + m.removeprefix("MEM-")) for m in methods if m.startswith("MEM-")]
    return [(a, b) for a, b in pairs if b in methods]


def statistics(grid: GridConfig, config: LabelEfficiencyConfig) -> dict[int, dict]:
    """Per size: each method's task-averaged AUROC and each pair's difference, with paired bootstrap CIs (the same
    resamples at every size: the test specimens are the same)."""
    out = {}
    for n in config.label_sizes:
        runs = {
            size_task(t, n): {
                m: [run_folder(grid, size_task(t, n), m, s) for s in config.seeds] for m in config.methods
            }
            for t in config.tasks
        }
        data = ContrastData(runs, n_boot=config.n_boot)
        out[n] = {
            "data": data,
            "levels": {m: data.contrast(m, [m]) for m in config.methods},
            "pairs": {(a, b): data.contrast(f"{a} − {b}", [a], [b]) for a, b in _pairs(config.methods)},
        }
    return out


def _ci(c: Contrast, signed: bool = False) -> str:
    f = "+.1f" if signed else ".1f"
    return f"{100 * c.value:{f}} ({100 * c.low:{f}} to {100 * c.high:{f}})"


def plot_label_efficiency(path: Path, config: LabelEfficiencyConfig, stats: dict[int, dict]) -> Path:
    """Task-averaged test AUROC against the labelled size, one line per method, 95% paired bootstrap CIs."""
    series = {m: [stats[n]["levels"][m] for n in config.label_sizes] for m in config.methods}
    return plot_against_size(
        path,
        config.label_sizes,
        series,
        "test AUROC x 100 (mean over tasks)",
        "Label efficiency (synthetic, embedding level)",
    )


def plot_against_size(
    path: Path, sizes: list[int], series: dict[str, list[Contrast]], ylabel: str, title: str, zero: bool = False
) -> Path:
    """One line per series against the labelled size (log axis), whiskers to each value's interval; `zero` draws
    the line of no difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for k, (name, values) in enumerate(series.items()):
        x = np.array(sizes) * (1 + 0.02 * (k - len(series) / 2))  # side by side on the log axis
        errorbar_contrasts(ax, x, values, marker="os^Dv"[k % 5], capsize=2, label=plot_text(name))
    if zero:
        ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.minorticks_off()  # the sizes are the ticks
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("labelled training specimens per task")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def _replicate_differences(config: LabelEfficiencyConfig) -> dict[tuple[int, str], Quantity]:
    """{(size, name): difference}: at each labelled size, each MEM row minus each method that is no MEM row."""
    mem = [m for m in config.methods if m.startswith("MEM-")]
    if not mem:
        raise ConfigError("a replicated label-efficiency study compares the MEM rows: add MEM-patch to `methods`")
    others = [m for m in config.methods if m not in mem]
    return {
        (n, f"{a} − {b}"): Quantity(f"n = {n}", f"{a} − {b}", tuple(size_task(t, n) for t in config.tasks), (a,), (b,))
        for n in config.label_sizes
        for a in mem
        for b in others
    }


def replicate_plan(config: LabelEfficiencyConfig) -> StudyPlan:
    """Per labelled size: each method's task-averaged AUROC, and each MEM row minus every other method."""
    levels = [
        Quantity(f"n = {n}", m, tuple(size_task(t, n) for t in config.tasks), (m,))
        for n in config.label_sizes
        for m in config.methods
    ]
    return StudyPlan(levels, list(_replicate_differences(config).values()))


def plot_replicated(path: Path, config: LabelEfficiencyConfig, plan: StudyPlan, comparisons: dict) -> Path:
    """Each difference against the labelled size, whiskers: its t interval over replicates."""
    series: dict[str, list[Contrast]] = {}
    for (_, name), q in _replicate_differences(config).items():  # size-major: each series in size order
        c = comparisons[q]
        series.setdefault(name, []).append(Contrast(q.label, q.plus, q.minus, c.mean, c.low, c.high))
    return plot_against_size(
        path,
        config.label_sizes,
        series,
        "test AUROC difference x 100 (mean over tasks)",
        "Label efficiency over replicates (synthetic); whiskers: 95% t interval over replicates",
        zero=True,
    )


def _write_outputs(out: Path, config: LabelEfficiencyConfig, stats, pool: dict, losses: dict | None) -> str:
    sizes = config.label_sizes
    rows = [
        [task, n, m, f"{stats[n]['data'].point[size_task(task, n)][m]:.4f}"]
        for n in sizes
        for task in config.tasks
        for m in config.methods
    ]
    write_csv_atomic(out / "label_efficiency.csv", ["task", "labelled_specimens", "method", "test_auroc"], rows)
    figure = plot_label_efficiency(out / "label_efficiency.png", config, stats)
    head = "| method | " + " | ".join(f"n = {n}" for n in sizes) + " |"
    level_lines = [head, "|---|" + "---:|" * len(sizes)] + [
        f"| {markdown_cell(m)} | " + " | ".join(_ci(stats[n]["levels"][m]) for n in sizes) + " |"
        for m in config.methods
    ]
    pair_lines = [head.replace("method", "difference"), "|---|" + "---:|" * len(sizes)] + [
        f"| {markdown_cell(a)} − {markdown_cell(b)} | "
        + " | ".join(_ci(stats[n]["pairs"][(a, b)], signed=True) for n in sizes)
        + " |"
        for a, b in _pairs(config.methods)
    ]
    per_task = ["| task | method | " + " | ".join(f"n = {n}" for n in sizes) + " |", "|---|---|" + "---:|" * len(sizes)]
    per_task += [
        f"| {t} | {markdown_cell(m)} | "
        + " | ".join(f"{100 * stats[n]['data'].point[size_task(t, n)][m]:.1f}" for n in sizes)
        + " |"
        for t in config.tasks
        for m in config.methods
    ]
    rows = _departures(config, pool)
    mem = (
        "MEM pretraining: skipped (no method uses a mixer)."
        if losses is None
        else f"MEM pretraining: loss {losses['mem']:.3f} against the predict-the-mean baseline "
        f"{losses['baseline']:.3f} "
        f"(last {losses['averaged_over_steps']} of {losses['steps']} steps)."
    )
    text = (
        f"{NOTICE}\n\nLabel efficiency: labelled training specimens per task {', '.join(map(str, sizes))} (nested, "
        f"stratified); the same {config.tune_specimens} tune and {config.test_specimens} test specimens at every size; "
        f"tasks {', '.join(config.tasks)}; seeds {', '.join(map(str, config.seeds))}; figure: {figure.name}.\n\n"
        f"Pretraining pool: {pool['pool_slides']} slides = {pool['unlabelled_slides']} unlabelled "
        f"({config.unlabelled_specimens} specimens per task, {pool['unlabelled_per_labelled']} x the largest labelled "
        f"split) + {pool['labelled_non_test_slides']} labelled non-test slides; {pool['test_slides_excluded']} test "
        f"slides excluded, none in the pool. {mem}\n\n"
        "Test AUROC x 100, mean over tasks and seeds (95% paired bootstrap CI over test specimens):\n\n"
        + "\n".join(level_lines)
        + "\n\nDifferences x 100 (same CIs):\n\n"
        + "\n".join(pair_lines)
        + "\n\nPer task (test AUROC x 100, mean over seeds):\n\n"
        + "\n".join(per_task)
        + "\n\nDepartures from the paper's recipe:\n\n"
        + departures_markdown(rows)
    )
    write_atomic(out / "label_efficiency.md", text)
    return text


def _departures(config: LabelEfficiencyConfig, pool: dict) -> list:
    spec = next(iter(_specs(config).values()))
    cohort = {k: v for k, v in asdict(spec).items() if k != "task"}
    rows = departures(config.pretrain, config.train, cohort, config.tasks, config.seeds, pool["pool_slides"])
    sizes = ", ".join(map(str, config.label_sizes))
    labelled = (
        "labelled specimens per task",
        "about 500 to 4,500 for training",
        f"{sizes} for training, {config.tune_specimens} tune, {config.test_specimens} test",
        "yes",
    )
    pretraining = (
        "pretraining data",
        "1M slides, >200 tissue types",
        f"{pool['pool_slides']} slides: the unlabelled pool and the labelled non-test slides",
        "yes",
    )
    return [labelled if r[0] == labelled[0] else pretraining if r[0] == pretraining[0] else r for r in rows]


def run_label_efficiency(config: LabelEfficiencyConfig, console: Console | None = None) -> dict:
    """Generate, pretrain once on the pool, train every method at every size, write the tables and the plot."""
    console = console or plain_console()
    out = make_folder(Path(config.out))
    timer = Timer()
    console.print(NOTICE, style="bold yellow", soft_wrap=True)
    unknown = [m for m in config.methods if not (m.startswith(("abmil-", "random-", "MEM-")))]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}: use abmil-<level>, random-<...> or MEM-<output>")
    tables = timer.run(
        "1. generate the cohorts and the unlabelled pool", console, lambda: _generate(out, config, console)
    )
    settings = pretrain_settings(out, config, tables)
    pool = pool_record(settings, tables, config)
    write_json_atomic(out / "pool.json", pool)
    mixer, losses = None, None
    if uses_a_mixer(config.methods):
        mixer = timer.run("2. pretrain MEM on the pool", console, lambda: pretrain_mixer(settings, console))
        losses = pretraining_losses(PretrainRun(settings["out"]).log, config.loss_window)
    grid = timer.run(
        "3. train every method x size x task x seed", console, lambda: _grid(out, config, tables, mixer, console)
    )
    stats = timer.run("4. statistics (paired bootstrap)", console, lambda: statistics(grid, config))
    text = _write_outputs(out, config, stats, pool, losses)
    write_json_atomic(out / "timings.json", timer.stages)
    console.print(text, highlight=False, soft_wrap=True, markup=False)
    return {"tables": tables, "pool": pool, "stats": stats, "timings": timer.stages, "grid": grid}


LABEL_EFFICIENCY = ReplicatedStudy(
    "label_efficiency",
    "Label efficiency",
    lambda c, console: run_label_efficiency(c, console),
    replicate_plan,
    plot_replicated,
)
