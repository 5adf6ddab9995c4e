"""`mixmag benchmark`: benchmark v2 at the embedding level (`synth.benchmark`), end to end on CPU.

Stages, each timed: generate the four tasks' cohorts (stores in one folder), pretrain a mixer with MEM on every
slide that is no task's test slide (skipped, and said so, when every method is plain AB-MIL), run the experiment grid
(methods x tasks x seeds), compute the statistics (mean ± sd over seeds, bootstrap CI, paired DeLong p against
AB-MIL 20x), and check the magnification attribution on the tasks whose scale is known (fine -> 20x, coarse -> 5x).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from rich.console import Console
from rich.text import Text

from ..config import MAX_RESAMPLES, MAX_STEPS, load_config
from ..errors import ConfigError
from ..eval.attribution import (
    CAUSAL_MEASURES,
    INTEGRATED_GRADIENTS,
    LEARNT_AUROC,
    LevelImportance,
    cohort_summary,
    importance_ratio,
    measures_of,
    recovers,
)
from ..eval.level_inputs import run_level_importance
from ..fileio import make_folder, read_json_limited, remove_own_tree, write_atomic, write_csv_atomic, write_json_atomic
from ..markup import plain_console
from ..metrics import auroc
from ..runs import PretrainRun
from ..stages.crossval import METRIC_NAMES
from ..synth.benchmark import (
    OUTCOME_NAMES,
    TASK_SCALE,
    TASKS,
    BenchmarkSpec,
    outcome_spec,
    outcome_type,
    write_benchmark_cohort,
    write_outcome_cohort,
)
from ..train.finetune import Seed, TrainSettings
from ..train.mixer_file import pretrained_mixer_set
from ..train.pretrain import PretrainConfig, PretrainSettings, run_pretraining
from ..train.tasks import PRIMARY
from .benchmark_stats import (
    CellStatistic,
    PairedComparison,
    cell_statistics,
    compare_methods,
    false_discovery_rate,
    paired_power,
    pretraining_losses,
    read_test_predictions,
    specimens_for_power,
    statistics_table,
    with_false_discovery_rate,
)
from .demo import Timer
from .experiments import GridConfig, Task, run_folder, run_grid
from .methods import ABMIL_ON_TILES, tile_method
from .rival import rival_markdown, rival_setup, run_rival

NOTICE = (
    "These data are SYNTHETIC and built at the embedding level (no pixels, no encoder): the table measures what "
    "the slide-level models make of a known multi-scale signal, not the paper's results."
)


# The embedding-level studies' shared recipe (benchmark, label efficiency; the design space less its mask ratio).
BENCHMARK_PRETRAIN = {
    "preset": "tiny",
    "mask_ratio": 0.5,
    "batch_size": 32,
    "steps": 1000,
    "warmup_steps": 50,
    "base_lr": 8.0e-3,
    "precision": "fp32",
    "workers": 0,
    "per_slide": 4,
    "pool": 16,
    "tensorboard": False,
}
BENCHMARK_TRAIN = {"epochs": 12, "batch_size": 16, "lr": 5.0e-3, "bootstrap": 200}


class BenchmarkConfig(BaseModel):
    """configs/benchmark.yaml; every field has the default the README's run used."""

    model_config = ConfigDict(extra="forbid")

    out: str = "benchmark_out"
    tasks: list[str] = Field(default_factory=lambda: list(TASKS))
    outcome_tasks: list[str] = Field(
        default_factory=list,
        description="task types beyond binary with known answers (synth.benchmark.OutcomeSpec): survival-20x, "
        "survival-5x, multiclass (one class per scale), regression-20x, regression-5x",
    )
    outcome_cohort: dict = Field(
        default_factory=lambda: {"n_specimens": 300}, description="OutcomeSpec fields shared by the outcome tasks"
    )
    cohort: dict = Field(
        default_factory=lambda: {
            "n_specimens": 800,
            "dim": 32,
            "signal": 0.18,
            "signal_spread": 1.0,
            "label_noise": 0.05,
            "split": [0.4, 0.1, 0.5],
        },
        description="BenchmarkSpec fields shared by every task",
    )
    cohort_by_task: dict[str, dict] = Field(
        default_factory=lambda: {
            "coarse": {"signal": 0.45},
            "cross": {"signal": 0.6, "signal_spread": 0.0},
            "context": {"signal": 0.6, "signal_spread": 0.0},
        },
        description="BenchmarkSpec overrides per task (coarse: at 0.18-0.3 AB-MIL all x stays at chance, so no model "
        "reading every magnification learns it and its attribution cannot be checked; cross and context: at the weak "
        "signal AB-MIL is near chance)",
    )
    methods: list[str] = Field(
        default_factory=lambda: ["abmil-5x", "abmil-20x", "abmil-all", "Random-patch-frozen", "MEM-patch-frozen"]
    )
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2])
    pretrain: dict = Field(default_factory=lambda: dict(BENCHMARK_PRETRAIN))
    train: dict = Field(default_factory=lambda: dict(BENCHMARK_TRAIN))
    train_by_method: dict[str, dict] = Field(default_factory=dict)
    baseline: str = "abmil-20x"
    pairs: list[tuple[str, str]] = Field(
        default_factory=lambda: [("MEM-patch-frozen", "Random-patch-frozen")],
        description="(method, against): paired DeLong p per task beside the baseline's (pairs.csv)",
    )
    loss_window: int = Field(
        200, ge=1, le=MAX_STEPS, description="pretraining losses are averaged over the last this many steps"
    )
    attribution_methods: list[str] = Field(
        default_factory=lambda: ["abmil-all", "Random-patch-frozen", "MEM-patch-frozen"]
    )
    rival_tasks: list[str] = Field(
        default_factory=list,
        description="tasks also run on stores whose 5x and 10x tokens are pooled from the 20x tiles alone (the "
        "20x-only rival, `mixmag store pool`): results-rival/, and each rival method against itself on the real stores",
    )
    rival_methods: list[str] = Field(
        default_factory=lambda: ["abmil-5x", "abmil-20x", "abmil-all"],
        description="methods run on the pooled stores (AB-MIL: a mixer would need its own pretraining on them)",
    )
    attribution_slides: int = Field(40, ge=1, le=100_000)
    n_boot: int = Field(1000, ge=100, le=MAX_RESAMPLES)

    @field_validator("pretrain", "train")
    @classmethod
    def _settings_in_bounds(cls, value: dict, info: ValidationInfo) -> dict:
        return check_run_settings(value, info.field_name)


def check_run_settings(value: dict, section: str | None) -> dict:
    """A study's `pretrain:` or `train:` section, kept a plain mapping (merged into each run's config) but checked now
    against PretrainSettings or TrainSettings, with their bounds; the errors name the keys."""
    model = PretrainSettings if section == "pretrain" else TrainSettings
    try:
        model.model_validate(value)
    except ValidationError as exc:
        raise ValueError("; ".join(f"`{'.'.join(map(str, e['loc']))}`: {e['msg']}" for e in exc.errors())) from None
    return value


def load_benchmark_config(path: Path | None, out: Path | None = None, sets: list[str] | None = None) -> BenchmarkConfig:
    config = check_benchmark_config(load_config(BenchmarkConfig, path, sets), path)
    return config if out is None else config.model_copy(update={"out": str(out)})


def check_benchmark_config(config: BenchmarkConfig, path: Path | None) -> BenchmarkConfig:
    """The checks across fields: known tasks, rival tasks among them, AB-MIL rival methods, known outcome tasks."""
    unknown = [t for t in config.tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"{path}: unknown task(s) {', '.join(unknown)}; tasks: {', '.join(TASKS)}")
    unknown = [t for t in config.rival_tasks if t not in config.tasks]
    if unknown:
        raise ConfigError(
            f"{path}: rival task(s) {', '.join(unknown)} are not among the tasks ({', '.join(config.tasks)})"
        )
    if config.rival_tasks and (config.baseline not in config.rival_methods or uses_a_mixer(config.rival_methods)):
        raise ConfigError(
            f"{path}: rival_methods must be AB-MIL methods ({', '.join(ABMIL_ON_TILES)}) and include the baseline "
            f"{config.baseline}"
        )
    unknown = [t for t in config.outcome_tasks if t not in OUTCOME_NAMES]
    if unknown:
        raise ConfigError(
            f"{path}: unknown outcome task(s) {', '.join(unknown)}; outcome tasks: {', '.join(OUTCOME_NAMES)}"
        )
    return config


def generate_cohorts(out: Path, config: BenchmarkConfig, console: Console) -> dict[str, Path]:
    """The cohorts, reused when generated with the same specs; new specs make every later stage stale."""
    specs = {
        task: BenchmarkSpec(task=task, **(config.cohort | config.cohort_by_task.get(task, {}))) for task in config.tasks
    }
    outcomes = {name: outcome_spec(name, config.outcome_cohort) for name in config.outcome_tasks}
    record = out / "data" / "specs.json"
    wanted = {task: asdict(spec) for task, spec in (specs | outcomes).items()}
    tables = {task: out / "data" / f"{task}.csv" for task in specs | outcomes}
    if (
        record.is_file()
        and read_json_limited(record, what="benchmark record") == json.loads(json.dumps(wanted))
        and all(t.is_file() for t in tables.values())
    ):
        console.print(f"reusing the cohorts in {out / 'data'}")
        return tables
    for stale in ("data", "pretrain", "results"):
        remove_own_tree(out / stale)
    for spec in specs.values():
        write_benchmark_cohort(out / "data", spec)
    for outcome in outcomes.values():
        write_outcome_cohort(out / "data", outcome, out / "data" / "stores")
    write_json_atomic(record, wanted)
    return tables


def _pretrain(out: Path, config: BenchmarkConfig, tables: dict[str, Path], console: Console) -> Path:
    """MEM on every slide that is no task's test slide; reused when pretrained with the same settings."""
    return pretrain_mixer(
        {
            "stores": str(out / "data" / "stores"),
            "out": str(out / "pretrain"),
            "log_every": 10,
            "checkpoint_every": 100,
            "exclude_test_of": [str(t) for t in tables.values()],
        }
        | config.pretrain,
        console,
    )


def pretrain_mixer(settings: dict, console: Console) -> Path:
    """A pretraining run of these PretrainConfig fields (MEM, or CMEM with `context`) on CPU; its mixer.safetensors,
    reused when a finished run in the same folder was pretrained with the same settings."""
    pc = PretrainConfig(**settings)
    run = PretrainRun(pc.out)
    mixer = run.mixer_weights
    meta = run.read_mixer_meta() if mixer.is_file() else None
    if meta is not None and meta.pretraining == json.loads(json.dumps(pc.model_dump())):
        console.print(f"reusing {mixer}")
        return mixer
    remove_own_tree(pc.out, "pretraining folder")
    run_pretraining(pc, device=torch.device("cpu"))
    return mixer


def uses_a_mixer(methods: list[str]) -> bool:
    """Whether any method reads the pretrained mixer: every one but an aggregator on tiles does (the MEM rows its
    weights, the Random and random-* rows its architecture)."""
    return any(tile_method(m) is None for m in methods)


def _pretrain_if_used(
    out: Path, config: BenchmarkConfig, tables: dict[str, Path], timer: Timer, console: Console
) -> tuple[Path | None, dict]:
    """(the MEM mixer, its pretraining record); (None, why not) when no configured method uses a mixer."""
    if not uses_a_mixer(config.methods):
        why = f"no configured method uses a mixer ({', '.join(config.methods)}: AB-MIL alone)"
        console.rule(Text("2. pretrain a mixer with MEM", style="bold"))
        console.print(f"skipped: {why}", soft_wrap=True, markup=False)
        return None, {"skipped": True, "reason": why}
    mixer = timer.run("2. pretrain a mixer with MEM", console, lambda: _pretrain(out, config, tables, console))
    return mixer, _pretraining_record(out, config, console)


def _pretraining_record(out: Path, config: BenchmarkConfig, console: Console) -> dict:
    """The MEM loss against the predict-the-mean baseline at the end of pretraining (and at its first logged step):
    a mixer whose loss does not beat the baseline has learnt nothing a region mean does not give."""
    losses = pretraining_losses(PretrainRun(out / "pretrain").log, config.loss_window)
    console.print(
        f"MEM loss {losses['mem']:.3f} against the predict-the-mean baseline {losses['baseline']:.3f} (mean over the "
        f"last {config.loss_window} of {losses['steps']} steps; at the first logged step {losses['first_mem']:.3f} "
        f"against {losses['first_baseline']:.3f})"
    )
    return losses


def _grid(
    out: Path, config: BenchmarkConfig, tables: dict[str, Path], mixer: Path | None, console: Console
) -> GridConfig:
    # Random: the MEM mixer's twin, different in initialisation only
    pretrained = {} if mixer is None else pretrained_mixer_set(mixer, config.methods, out / "random-mixer")
    grid = GridConfig(
        out=str(out / "results"),
        methods=config.methods,
        seeds=config.seeds,
        pretrained=pretrained,
        tasks=[
            Task(name=t, cohort=str(p), stores=str(out / "data" / "stores"), type=outcome_type(t))
            for t, p in tables.items()
        ],
        train=config.train,
        train_by_method=config.train_by_method,
        baseline=config.baseline,
    )
    run_grid(
        grid,
        on_run=lambda t, m, s, auc, status: console.print(
            f"{t:>8} / {m:<12} seed {s}: test {METRIC_NAMES[PRIMARY[outcome_type(t)]]} {auc:.3f} ({status})"
        ),
    )
    return grid


def _rival(out: Path, config: BenchmarkConfig, tables: dict[str, Path], console: Console) -> dict:
    """The rival tasks on pooled stores (made once next to the real ones), their statistics, and each rival method
    against itself on the real stores (same test specimens: paired)."""
    setup = rival_setup(config, tables, out / "data" / "stores", out, config.baseline)
    return run_rival(
        setup, on_run=lambda t, m, s, auc, status: console.print(f"{t:>8} / {m} (20x-pooled) seed {s}: {auc:.3f}")
    )


def rival_note(rival: dict, config: BenchmarkConfig) -> str:
    saved = "5 of every 21 tiles (the 5x and 10x ones) need no encoder pass"
    return rival_markdown(rival, saved, config.seeds, config.rival_methods, config.n_boot, config.baseline)


def _statistics(grid: GridConfig, config: BenchmarkConfig) -> list[CellStatistic]:
    cells = []
    for task in config.tasks + config.outcome_tasks:
        runs = {m: [run_folder(grid, task, m, s) for s in config.seeds] for m in config.methods}
        cells += cell_statistics(task, runs, config.baseline, n_boot=config.n_boot)
    return with_false_discovery_rate(cells)


def _pairs(grid: GridConfig, config: BenchmarkConfig) -> list[PairedComparison]:
    out = []
    for task in config.tasks + config.outcome_tasks:
        for a, b in config.pairs:
            if a in config.methods and b in config.methods:
                runs = [[run_folder(grid, task, m, s) for s in config.seeds] for m in (a, b)]
                out.append(compare_methods(task, runs[0], runs[1], a, b))
    q = false_discovery_rate([pair.p for pair in out])
    return [replace(pair, q=q_value) for pair, q_value in zip(out, q, strict=True)]


def pairs_markdown(pairs: list[PairedComparison]) -> str:
    if not pairs:
        return ""
    lines = [
        "| task | method | against | AUROC difference x 100 | paired DeLong p | q (Benjamini-Hochberg) |",
        "|---|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {p.task} | {p.method} | {p.against} | {100 * p.difference:+.1f} | {p.p:.2g} | {p.q:.2g} |" for p in pairs
    ]
    return "\n".join(lines) + "\n"


def outcome_note(outcome_tasks: list[str]) -> str:
    """What the table's outcome-task columns hold instead of AUROC and DeLong ("" without outcome tasks)."""
    if not outcome_tasks:
        return ""
    metrics = ", ".join(f"{t}: {METRIC_NAMES[PRIMARY[outcome_type(t)]]}" for t in outcome_tasks)
    return (
        f"Outcome tasks hold their task type's primary metric x 100 in place of AUROC ({metrics}); their p values, in "
        "this table and the pairs below, are a paired bootstrap of the metric on seed-averaged scores, not DeLong.\n\n"
    )


def pretraining_note(losses: dict) -> str:
    if losses.get("skipped"):
        return f"MEM pretraining: skipped ({losses['reason']})."
    verdict = "beats" if losses["mem"] < losses["baseline"] else "does NOT beat"
    return (
        f"MEM pretraining: loss {losses['mem']:.3f} {verdict} the predict-the-mean baseline {losses['baseline']:.3f} "
        f"(negative weighted cosine on the hidden tokens; mean over {losses['logged_batches']} logged batches in the "
        f"last {losses['averaged_over_steps']} of {losses['steps']} steps; first logged step {losses['first_mem']:.3f} "
        f"against {losses['first_baseline']:.3f})."
    )


def _attribution(grid: GridConfig, config: BenchmarkConfig) -> list[dict]:
    """Per method and known-scale task: each measure's top level, whether it is clear, and placed/other ratio."""
    rows = []
    for task, placed in TASK_SCALE.items():
        if task not in config.tasks:
            continue
        other = "5x" if placed == "20x" else "20x"
        for method in [m for m in config.attribution_methods if m in config.methods]:
            run = run_folder(grid, task, method, config.seeds[0])
            preds = read_test_predictions(run)
            slides = [
                f"{spec}-S0" for spec, (label, _) in sorted(preds.items(), key=lambda kv: -kv[1][1]) if label == 1
            ]
            importances, _ = run_level_importance(run, slides, max_slides=config.attribution_slides)
            test_auroc = auroc([v[0] for v in preds.values()], [v[1] for v in preds.values()])
            for measure in measures_of(importances):
                s = cohort_summary(importances, measure, n_boot=config.n_boot)
                r = importance_ratio(importances, measure, placed, other, n_boot=config.n_boot)
                rows.append(
                    {
                        "task": task,
                        "placed": placed,
                        "method": method,
                        "seed": config.seeds[0],
                        "test_auroc": round(test_auroc, 3),
                        "measure": measure,
                        "causal": measure in CAUSAL_MEASURES,
                        "top": s.top,
                        "clear": s.clear,
                        "shares": {n: round(float(v), 3) for n, v in zip(s.level_names, s.mean)},
                        "ratio": round(r.ratio, 3),
                        "ratio_low": round(r.low, 3),
                        "ratio_high": round(r.high, 3),
                        "placed_top_fraction": round(r.top_fraction, 3),
                        "slides": r.slides,
                        "recovers": recovers(s, r, placed),
                    }
                    | (ig_baseline_check(importances) if measure == INTEGRATED_GRADIENTS else {})
                )
    return rows


def ig_baseline_check(importances: list[LevelImportance]) -> dict:
    """Integrated gradients split f(x) - f(baseline) between the levels (their sum, up to the completeness gap).
    Where the all-levels-mean-replaced baseline scores above the slide itself, that difference is negative and
    the positive shares say nothing about where the signal is: report how often that happens."""
    totals = np.array([float(np.sum(i.values[INTEGRATED_GRADIENTS])) for i in importances])
    return {
        "ig_total_mean": round(float(totals.mean()), 3),
        "baseline_above_fraction": round(float(np.mean(totals <= 0)), 3),
        "completeness_gap_max": round(max(float(i.completeness_gap) for i in importances), 4),
    }


def _recovery_word(row: dict) -> str:
    if row["test_auroc"] < LEARNT_AUROC:
        return "n/a (the model did not learn the task)"
    if row.get("baseline_above_fraction", 0) > 0.5:
        return (
            f"n/a (its all-mean baseline scores above {100 * row['baseline_above_fraction']:.0f}% of these slides: "
            f"mean f(x) - f(baseline) {row['ig_total_mean']:.2f})"
        )
    return "yes" if row["recovers"] else "no"


def attribution_markdown(rows: list[dict]) -> str:
    lines = [
        "| task (placed at) | method (test AUROC) | measure | shares | top | placed/other ratio (95% CI) | recovers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["shares"].items())
        lines.append(
            f"| {r['task']} ({r['placed']}) | {r['method']} ({r['test_auroc']:.3f}) | {r['measure']} | {shares} | "
            f"{r['top']}{'' if r['clear'] else ' (not clear)'} | {r['ratio']:.2f} "
            f"({r['ratio_low']:.2f}–{r['ratio_high']:.2f}) | "
            f"{_recovery_word(r)} |"
        )
    return "\n".join(lines) + "\n"


def power_note(cells: list[CellStatistic]) -> str:
    n = min(c.n_test for c in cells)
    lines = [
        "Power (Hanley-McNeil variance, paired normal test, alpha 0.05) to detect a 0.05 AUROC difference near 0.8 "
        "with "
        f"{n} test specimens per task:"
    ]
    for rho in (0.3, 0.5, 0.7):
        lines.append(
            f"  correlation {rho}: power {paired_power(0.8, 0.05, n // 2, n - n // 2, rho):.2f}; "
            f"80% power needs {specimens_for_power(0.8, 0.05, rho)} test specimens"
        )
    return "\n".join(lines)


def _write_outputs(out: Path, result: dict, config: BenchmarkConfig) -> None:
    cells, attribution = result["cells"], result["attribution"]
    write_csv_atomic(
        out / "benchmark.csv",
        [
            "task",
            "method",
            "auroc_mean",
            "auroc_sd",
            "ci_low",
            "ci_high",
            "n_test",
            "seeds",
            "aurocs",
            f"delong_p_vs_{config.baseline}",
            f"difference_vs_{config.baseline}",
            f"fdr_q_vs_{config.baseline}",
        ],
        [
            [
                c.task,
                c.method,
                f"{c.mean:.4f}",
                f"{c.sd:.4f}",
                f"{c.low:.4f}",
                f"{c.high:.4f}",
                c.n_test,
                len(c.seeds),
                ";".join(f"{a:.4f}" for a in c.seeds),
                "" if c.p_vs_baseline is None else f"{c.p_vs_baseline:.4g}",
                "" if c.difference is None else f"{c.difference:.4f}",
                "" if c.q_vs_baseline is None else f"{c.q_vs_baseline:.4g}",
            ]
            for c in cells
        ],
    )
    write_csv_atomic(
        out / "pairs.csv",
        ["task", "method", "against", "difference", "delong_p", "fdr_q"],
        [[p.task, p.method, p.against, f"{p.difference:.4f}", f"{p.p:.4g}", f"{p.q:.4g}"] for p in result["pairs"]],
    )
    tasks = config.tasks + config.outcome_tasks
    table = statistics_table(cells, tasks, config.methods, config.seeds, config.n_boot, config.baseline)
    write_atomic(
        out / "benchmark.md",
        f"{NOTICE}\n\n{table}\n{outcome_note(config.outcome_tasks)}{pairs_markdown(result['pairs'])}\n"
        f"{rival_note(result.get('rival', {}), config)}"
        f"{pretraining_note(result['pretraining'])}\n\n{power_note(cells)}\n\n"
        f"Which magnification mattered (seed {config.seeds[0]}, positive test slides):\n\n"
        f"{attribution_markdown(attribution)}",
    )
    write_json_atomic(out / "attribution.json", attribution)
    write_json_atomic(out / "pretraining.json", result["pretraining"])


def run_benchmark(config: BenchmarkConfig, console: Console | None = None) -> dict:
    console = console or plain_console()
    out = Path(config.out)
    make_folder(out)
    timer = Timer()
    console.print(NOTICE, style="bold yellow", soft_wrap=True)
    tables = timer.run(
        "1. generate the benchmark cohorts (embedding level)", console, lambda: generate_cohorts(out, config, console)
    )
    mixer, pretraining = _pretrain_if_used(out, config, tables, timer, console)
    result = {"pretraining": pretraining}
    grid = timer.run(
        "3. train and evaluate every method x task x seed", console, lambda: _grid(out, config, tables, mixer, console)
    )
    result["cells"] = timer.run("4. statistics (bootstrap, DeLong)", console, lambda: _statistics(grid, config))
    result["pairs"] = _pairs(grid, config)
    if config.rival_tasks:
        result["rival"] = timer.run(
            "3b. the 20x-only rival on pooled stores", console, lambda: _rival(out, config, tables, console)
        )
    result["attribution"] = timer.run(
        "5. magnification attribution on fine and coarse", console, lambda: _attribution(grid, config)
    )
    _write_outputs(out, result, config)
    write_json_atomic(out / "timings.json", timer.stages)
    console.rule(Text("benchmark", style="bold"))
    console.print((out / "benchmark.md").read_text(), highlight=False, soft_wrap=True, markup=False)
    console.print(
        "stage timings: " + ", ".join(f"{k.split('. ', 1)[-1]} {v:.0f} s" for k, v in timer.stages.items()),
        soft_wrap=True,
        markup=False,
    )
    return result | {"timings": timer.stages}
