"""Reading run folders back: metrics from saved predictions, and paired comparisons (DeLong for binary AUROC, a
paired bootstrap of the primary metric's difference for the other task types)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MixmagError
from ..metrics import DeLongResult, PairedDifference, bootstrap_auroc, delong_test, paired_bootstrap
from ..runs import TrainRun, by_specimen
from ..train.tasks import Task, task_for


def read_predictions(run: str | Path, split: str) -> dict[str, tuple[int, float]]:
    return TrainRun(run).read_scores(split)


def run_task(run: str | Path) -> Task:
    """The task type a run was trained for, with what its outputs need (classes, the target's scale)."""
    folder = TrainRun(run)
    name = folder.task()
    return task_for(name, pipeline=None if name == "binary" else folder.read_pipeline() or {})


def evaluate_run(run: str | Path, n_boot: int | None = None) -> dict:
    folder = TrainRun(run)
    config = folder.read_config_record()
    out: dict = {"best_epoch": folder.read_metrics_record().best_epoch}
    n_boot, seed = n_boot or config.bootstrap, config.seed
    task = run_task(run)
    if task.name != "binary":
        out |= {"task": task.name, "primary": task.primary}
        for split in ("tune", "test"):
            out[split] = task.pooled(folder.read_task_rows(split), n_boot=n_boot, seed=seed)
        return out
    for split in ("tune", "test"):
        preds = read_predictions(run, split)
        labels = [v[0] for v in preds.values()]
        ci = bootstrap_auroc(labels, [v[1] for v in preds.values()], n_boot=n_boot, seed=seed)
        out[split] = {"auroc": ci.auroc, "ci95": [ci.low, ci.high], "specimens": len(labels), "positive": sum(labels)}
    return out


def compare_runs(run_a: str | Path, run_b: str | Path, split: str = "test") -> DeLongResult:
    a, b = read_predictions(run_a, split), read_predictions(run_b, split)
    if set(a) != set(b):
        raise MixmagError(
            f"{run_a} and {run_b} were evaluated on different {split} specimens; a paired test needs the same ones"
        )
    specimens = sorted(a)
    if any(a[s][0] != b[s][0] for s in specimens):
        raise MixmagError(f"{run_a} and {run_b} disagree on labels; were they trained on the same cohort table?")
    return delong_test([a[s][0] for s in specimens], [a[s][1] for s in specimens], [b[s][1] for s in specimens])


@dataclass(frozen=True)
class TaskComparison:
    """Two runs of one task type on the same specimens: each one's primary metric and their paired difference."""

    metric: str
    value_a: float
    value_b: float
    paired: PairedDifference


def compare_task_runs(
    run_a: str | Path, run_b: str | Path, split: str = "test", *, n_boot: int = 2000, seed: int = 0
) -> TaskComparison:
    """The paired bootstrap of the primary metric's difference (C-index, macro AUROC, Spearman) between two runs."""
    task, other = run_task(run_a), run_task(run_b)
    if task.name != other.name:
        raise MixmagError(f"{run_a} is a {task.name} run and {run_b} a {other.name} one; compare runs of one task type")
    rows_a = by_specimen(TrainRun(run_a).read_task_rows(split))
    rows_b = by_specimen(TrainRun(run_b).read_task_rows(split))
    if set(rows_a) != set(rows_b):
        raise MixmagError(
            f"{run_a} and {run_b} were evaluated on different {split} specimens; a paired test needs the same ones"
        )
    specimens = sorted(rows_a)
    truth, scores_a = task.from_rows([rows_a[s] for s in specimens])
    truth_b, scores_b = other.from_rows([rows_b[s] for s in specimens])
    if any(not np.array_equal(x, y) for x, y in zip(truth, truth_b, strict=True)):
        raise MixmagError(f"{run_a} and {run_b} disagree on targets; were they trained on the same cohort table?")
    paired = paired_bootstrap(task.primary_metric, truth, scores_a, scores_b, n_boot=n_boot, seed=seed)
    value_a, value_b = task.primary_metric(*truth, scores_a), task.primary_metric(*truth, scores_b)
    return TaskComparison(task.primary, float(value_a), float(value_b), paired)
