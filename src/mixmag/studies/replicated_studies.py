"""`mixmag benchmark --label-efficiency|--design-space --replicates R`: a whole study replicated R times.

Why: one run of a study holds its cohort, its pretraining runs and its mixers' random draws fixed, and its bootstrap
CIs cover only the test set's finiteness, so a difference it finds at one labelled size or one design point may be
that cohort's or that pretraining run's. Here replicate r is the whole study (run_label_efficiency or
run_design_space, unchanged) in `<out>/replicate-<r>/` with the cohort, pretraining and training seeds that
`replicates.replicate_config` derives from r, as for `mixmag benchmark --replicates`. The endpoint (the study, its
points, every comparison and the protocol) is written to `endpoint.json` before the first replicate runs; a changed
config is refused on rerun. The analysis is at the replicate level, per point: each comparison's value per replicate
(task-averaged test AUROC, read from the replicate's run folders), then over replicates its mean, t interval, t-test p
and exact sign-flip p. What each study compares, and how its figure is drawn, lives in the study's module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from ..errors import ConfigError
from ..fileio import FolderLock, make_folder, write_atomic, write_csv_atomic, write_json_atomic
from ..markup import markdown_cell, plain_console
from ..runs import TrainRun
from .benchmark import NOTICE
from .experiments import GridConfig, run_folder
from .replicates import (
    ENDPOINT_FILE,
    MAX_REPLICATES,
    MIN_REPLICATES,
    TEST,
    ReplicateComparison,
    check_registered,
    compare_replicates,
    comparison_record,
    register_endpoint,
    replicate_config,
    run_or_reuse_replicate,
)

Aurocs = dict[str, dict[str, list[float]]]  # {grid task: {method: [test AUROC per training seed]}}


@dataclass(frozen=True)
class Quantity:
    """A per-replicate value: over `tasks` (grid task names), the mean of `plus`'s methods' AUROC (each the mean over
    seeds) minus that of `minus`'s, averaged over the tasks; an empty `minus` makes it a level, not a difference."""

    point: str  # where in the study: "n = 50", "MEM r 0.25 (patch)", ...
    name: str  # what: "MEM-patch − abmil-20x", "MEM − Random", ...
    tasks: tuple[str, ...]
    plus: tuple[str, ...]
    minus: tuple[str, ...] = ()

    def value(self, aurocs: Aurocs) -> float:
        def level(task: str, group: tuple[str, ...]) -> float:
            return float(np.mean([np.mean(aurocs[task][m]) for m in group])) if group else 0.0

        return float(np.mean([level(t, self.plus) - level(t, self.minus) for t in self.tasks]))

    @property
    def label(self) -> str:
        return f"{self.point}: {self.name}"


@dataclass(frozen=True)
class StudyPlan:
    """What a replicated study reports: the levels (per replicate only) and the differences (analysed over them)."""

    levels: list[Quantity]
    differences: list[Quantity]

    def needs(self) -> set[tuple[str, str]]:
        return {(t, m) for q in self.levels + self.differences for t in q.tasks for m in q.plus + q.minus}


@dataclass(frozen=True)
class ReplicatedStudy:
    """A study that can be replicated: its name (the outputs' stem), how one run of it goes, what it compares, and
    how its figure is drawn from the replicate-level comparisons."""

    name: str  # "label_efficiency", "design_space"
    title: str  # "Label efficiency"
    run: Callable[[Any, Console], dict]  # the study's run function; its result holds "grid"
    plan: Callable[[Any], StudyPlan]
    plot: Callable[[Path, Any, StudyPlan, dict[Quantity, ReplicateComparison]], Path]


class StudyEndpoint(BaseModel):
    """What a replicated study is run to estimate, fixed before any replicate runs (`endpoint.json`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: str
    points: list[str] = Field(description="the study's points (labelled sizes, design points), in report order")
    comparisons: list[str] = Field(description="'<point>: <plus> − <minus>', each analysed over replicates")
    replicates: int = Field(ge=MIN_REPLICATES, le=MAX_REPLICATES)
    metric: str = "test AUROC (seeds averaged within a replicate, then methods of a group, then tasks)"
    estimand: str = (
        "per comparison, the mean over replicates of its per-replicate difference in task-averaged test AUROC; each "
        "replicate is a fresh cohort, fresh pretraining runs and fresh slide-level training seeds"
    )
    test: str = TEST
    alpha: float = 0.05
    protocol: dict = Field(description="the study config each replicate runs (less out and the derived seeds)")


def make_study_endpoint(study: ReplicatedStudy, config, replicates: int) -> StudyEndpoint:
    if not MIN_REPLICATES <= replicates <= MAX_REPLICATES:
        raise ConfigError(
            f"--replicates {replicates}: give {MIN_REPLICATES} to {MAX_REPLICATES} (the design asks for at least 5)"
        )
    plan = study.plan(config)
    return StudyEndpoint(
        study=study.name,
        points=list(dict.fromkeys(q.point for q in plan.levels + plan.differences)),
        comparisons=[q.label for q in plan.differences],
        replicates=replicates,
        protocol=config.model_dump(mode="json", exclude={"out"}),
    )


def grid_aurocs(grid: GridConfig) -> Aurocs:
    """Every run's test AUROC as its run folder's metrics.json holds it (the study's own runs, read back)."""

    def test_value(run: Path) -> float:
        metrics = TrainRun(run).read_metrics_record()
        return float(metrics.test.value(metrics.primary))

    return {
        task.name: {m: [test_value(run_folder(grid, task.name, m, s)) for s in grid.seeds] for m in grid.methods}
        for task in grid.tasks
    }


def _covers(aurocs, plan: StudyPlan, seeds: int) -> bool:
    return isinstance(aurocs, dict) and all(
        isinstance(aurocs.get(t), dict) and isinstance(aurocs[t].get(m), list) and len(aurocs[t][m]) == seeds
        for t, m in plan.needs()
    )


def _run_replicate(study: ReplicatedStudy, config, r: int, replicates: int, console: Console) -> dict:
    """One replicate's record (seeds, AUROCs per run, CPU seconds), reused when a finished record matches."""
    rc = replicate_config(config, r)

    def run() -> dict:
        result = study.run(rc, console)
        return {"aurocs": grid_aurocs(result["grid"]), "timings": result["timings"]}

    return run_or_reuse_replicate(
        rc,
        r,
        f"{study.title}: replicate {r + 1} of {replicates}",
        lambda record: _covers(record.get("aurocs"), study.plan(rc), len(rc.seeds)),
        run,
        console,
    )


def analyse_study(
    records: list[dict], plan: StudyPlan, alpha: float = 0.05
) -> tuple[dict[Quantity, list[float]], dict[Quantity, ReplicateComparison]]:
    """Each level's value per replicate, and each difference over replicates (mean, t interval, t p, sign-flip p)."""
    levels = {q: [q.value(rec["aurocs"]) for rec in records] for q in plan.levels}
    comparisons = {}
    for q in plan.differences:
        plus = Quantity(q.point, q.name, q.tasks, q.plus)
        minus = Quantity(q.point, q.name, q.tasks, q.minus)
        comparisons[q] = compare_replicates(
            " + ".join(q.plus),
            " + ".join(q.minus),
            [plus.value(rec["aurocs"]) for rec in records],
            [minus.value(rec["aurocs"]) for rec in records],
            alpha,
        )
    return levels, comparisons


def study_markdown(
    study: ReplicatedStudy, records: list[dict], levels, comparisons, endpoint: StudyEndpoint, figure: str
) -> str:
    level = 100 * (1 - endpoint.alpha)
    lines = [
        NOTICE,
        "",
        f"{study.title}, replicated: {len(records)} replicates, each the whole study with a fresh cohort, fresh "
        f"pretraining runs and fresh training seeds; figure: {figure}. Pre-registered endpoint ({ENDPOINT_FILE}): "
        f"the {len(comparisons)} comparisons below, {endpoint.metric}.",
        f"Estimand: {endpoint.estimand}.",
        f"Test: {endpoint.test}.",
        "",
        f"| point | difference | AUROC difference x 100 (mean over replicates) | {level:.0f}% t interval | "
        "sd over replicates | t-test p | sign-flip p | replicates above 0 |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for q, c in comparisons.items():
        flip = "n/a (R > 10)" if c.sign_flip_p is None else f"{c.sign_flip_p:.3g}"
        lines.append(
            f"| {markdown_cell(q.point)} | {markdown_cell(q.name)} | {100 * c.mean:+.2f} | "
            f"{100 * c.low:+.2f} to {100 * c.high:+.2f} | {100 * c.sd:.2f} | {c.t_p:.3g} | {flip} | "
            f"{sum(d > 0 for d in c.differences)} of {len(c.differences)} |"
        )
    lines += ["", "Replicates:", "", "| replicate | cohort seed | pretraining seed | training seeds | CPU s |"]
    lines.append("|---:|---:|---:|---|---:|")
    for rec in records:
        seeds = ", ".join(str(s) for s in rec["seeds"])
        lines.append(
            f"| {rec['replicate']} | {rec['cohort_seed']} | {rec['pretrain_seed']} | {seeds} | "
            f"{rec.get('cpu_seconds', float('nan')):.0f} |"
        )
    reps = [str(rec["replicate"]) for rec in records]
    lines += ["", "Task-averaged test AUROC x 100 per replicate:", ""]
    lines.append("| point | method | " + " | ".join(f"replicate {r}" for r in reps) + " | mean |")
    lines.append("|---|---|" + "---:|" * (len(reps) + 1))
    for q, values in levels.items():
        cells = " | ".join(f"{100 * v:.2f}" for v in values)
        lines.append(f"| {markdown_cell(q.point)} | {markdown_cell(q.name)} | {cells} | {100 * np.mean(values):.2f} |")
    return "\n".join(lines) + "\n"


def _write_outputs(out: Path, study: ReplicatedStudy, config, records, levels, comparisons, endpoint) -> str:
    stem = f"{study.name}_replicates"
    seeds = [[rec["replicate"], rec["cohort_seed"], rec["pretrain_seed"], ";".join(map(str, rec["seeds"]))]
             for rec in records]  # fmt: skip
    rows = [seeds[k] + ["level", q.point, q.name, f"{v:.6f}"] for q, values in levels.items() for k, v in
            enumerate(values)]  # fmt: skip
    rows += [seeds[k] + ["difference", q.point, q.name, f"{d:.6f}"] for q, c in comparisons.items() for k, d in
             enumerate(c.differences)]  # fmt: skip
    write_csv_atomic(
        out / f"{stem}.csv",
        ["replicate", "cohort_seed", "pretrain_seed", "seeds", "kind", "point", "name", "auroc_or_difference"],
        rows,
    )
    write_json_atomic(
        out / f"{stem}.json",
        {
            "endpoint": ENDPOINT_FILE,
            "study": study.name,
            "replicates": [
                {k: rec[k] for k in ("replicate", "cohort_seed", "pretrain_seed", "seeds", "cpu_seconds")}
                for rec in records
            ],
            "levels": [{"point": q.point, "name": q.name, "values": v} for q, v in levels.items()],
            "comparisons": [
                {
                    "point": q.point,
                    "name": q.name,
                    "plus": list(q.plus),
                    "minus": list(q.minus),
                    "tasks": list(q.tasks),
                    **comparison_record(c),
                }
                for q, c in comparisons.items()
            ],
        },
    )
    figure = study.plot(out / f"{stem}.png", config, study.plan(config), comparisons)
    text = study_markdown(study, records, levels, comparisons, endpoint, figure.name)
    write_atomic(out / f"{stem}.md", text)
    return text


def run_replicated_study(study: ReplicatedStudy, config, replicates: int, console: Console | None = None) -> dict:
    """Register the endpoint, run (or reuse) every replicate of the study, then analyse at the replicate level."""
    console = console or plain_console()
    out = Path(config.out)
    endpoint = make_study_endpoint(study, config, replicates)
    make_folder(out)
    with FolderLock(out, f"running {study.title.lower()} replicates"):
        register_endpoint(out, endpoint)  # before any replicate runs
        records = [_run_replicate(study, config, r, replicates, console) for r in range(replicates)]
        check_registered(out, endpoint)
        levels, comparisons = analyse_study(records, study.plan(config), endpoint.alpha)
        text = _write_outputs(out, study, config, records, levels, comparisons, endpoint)
    console.rule(f"{study.title} replicates")
    console.print(text, highlight=False, soft_wrap=True, markup=False)
    return {"records": records, "levels": levels, "comparisons": comparisons, "endpoint": endpoint}
