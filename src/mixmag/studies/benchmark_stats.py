"""Statistics of a benchmark grid over seeds: mean ± sd of test AUROC, a bootstrap CI over test specimens, and a
paired DeLong p against a baseline method; and the power of such a comparison.

Every method of a task is evaluated on the same test specimens, so the bootstrap resamples specimens once for
all seeds (stratified by class) and takes the mean over seeds of the AUROC on each resample; the DeLong test
compares the two methods' seed-averaged specimen scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats

from ..errors import MixmagError
from ..eval.runs import run_task
from ..markup import markdown_cell
from ..metrics import auroc, bootstrap_estimate, delong_test, paired_bootstrap
from ..runs import CrossValRun, TrainRun, by_specimen, read_losses
from ..train.tasks import Task


@dataclass(frozen=True)
class CellStatistic:
    task: str
    method: str
    seeds: list[float]  # test AUROC per seed
    mean: float
    sd: float
    low: float  # bootstrap 95% CI of the mean over seeds
    high: float
    n_test: int
    p_vs_baseline: float | None  # paired DeLong on seed-averaged scores; None for the baseline itself
    difference: float | None  # mean AUROC - baseline's
    q_vs_baseline: float | None = None  # p adjusted for the table's many comparisons (`with_false_discovery_rate`)


def tested_runs(run: Path) -> list[TrainRun]:
    """The run folder, or a cross-validated folder's folds: together they test every specimen once."""
    folder = CrossValRun(run)
    return folder.fold_runs() if folder.is_cross_validated() else [TrainRun(run)]


def read_test_predictions(run: Path) -> dict[str, tuple[int, float]]:
    """specimen -> (label, score) from a run folder's predictions_test.csv (a cross-validated folder: out of fold)."""
    return {s: v for fold in tested_runs(run) for s, v in fold.read_scores("test").items()}


def _aligned(runs: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels (n,), scores (seeds, n), specimens) over the specimens every run predicted."""
    preds = [read_test_predictions(r) for r in runs]
    common = sorted(set.intersection(*(set(p) for p in preds)))
    labels = np.array([preds[0][s][0] for s in common])
    return labels, np.array([[p[s][1] for s in common] for p in preds]), common


def _aligned_rows(runs: list[Path]) -> tuple[Task, tuple[np.ndarray, ...], np.ndarray, list[str]]:
    """A task type's runs over the specimens every run predicted: (task, truth columns, scores (seeds, n, ...),
    specimens)."""
    task = run_task(tested_runs(runs[0])[0].folder)
    tables = [by_specimen([row for fold in tested_runs(run) for row in fold.read_task_rows("test")]) for run in runs]
    common = sorted(set.intersection(*(set(t) for t in tables)))
    truth, _ = task.from_rows([tables[0][s] for s in common])
    return task, truth, np.stack([task.from_rows([t[s] for s in common])[1] for t in tables]), common


def _mean_over_seeds(task: Task):
    """The mean over seeds of the task's primary metric, as a metric of (truth columns..., scores (n, seeds, ...)):
    the bootstrap resamples specimens once for every seed."""

    def metric(*columns: np.ndarray) -> float:
        return float(np.mean([task.primary_metric(*columns[:-1], s) for s in np.moveaxis(columns[-1], 1, 0)]))

    return metric


@dataclass(frozen=True)
class _Scored:
    """One method's seeds over the specimens all of them predicted, and how its task type scores a cell: the metric
    of one seed's scores, a 95% CI of the mean over seeds (resampling specimens), a paired p of two methods'
    seed-averaged scores."""

    truth: tuple[np.ndarray, ...]
    scores: np.ndarray  # (seeds, n, ...)
    ids: list[str]
    metric: Callable[..., float]
    interval: Callable[[tuple[np.ndarray, ...], np.ndarray, int], tuple[float, float]]
    paired_p: Callable[[tuple[np.ndarray, ...], np.ndarray, np.ndarray, int], float]

    def per_seed(self) -> list[float]:
        return [self.metric(*self.truth, s) for s in self.scores]


def _scored_binary(runs: list[Path]) -> _Scored:
    """A binary task's cell: AUROC, a class-stratified bootstrap CI, a paired DeLong p."""
    labels, scores, ids = _aligned(runs)
    return _Scored(
        (labels,),
        scores,
        ids,
        auroc,
        lambda truth, s, n_boot: bootstrap_mean_auroc(truth[0], s, n_boot=n_boot),
        lambda truth, a, b, n_boot: delong_test(truth[0], a, b).p_value,
    )


def _scored_task(runs: list[Path]) -> _Scored:
    """A multiclass, survival or regression task's cell: its primary metric (C-index, macro AUROC, Spearman), a
    bootstrap CI over specimens, a paired bootstrap p of the metric (DeLong is for AUROC only)."""
    task, truth, scores, ids = _aligned_rows(runs)

    def interval(truth: tuple[np.ndarray, ...], s: np.ndarray, n_boot: int) -> tuple[float, float]:
        ci = bootstrap_estimate(_mean_over_seeds(task), (*truth, np.moveaxis(s, 0, 1)), n_boot=n_boot, seed=0)
        return ci.low, ci.high

    return _Scored(
        truth,
        scores,
        ids,
        task.primary_metric,
        interval,
        lambda truth, a, b, n_boot: paired_bootstrap(task.primary_metric, truth, a, b, n_boot=n_boot).p_value,
    )


def _cells(task: str, scored: dict[str, _Scored], baseline: str, n_boot: int) -> list[CellStatistic]:
    """One CellStatistic per method: its metric per seed, mean, sd, CI, and the paired p and difference against the
    baseline (when the baseline is among the methods)."""
    base = scored.get(baseline)
    base_mean = float(np.mean(base.per_seed())) if base is not None else 0.0
    out = []
    for method, cell in scored.items():
        per_seed = cell.per_seed()
        low, high = cell.interval(cell.truth, cell.scores, n_boot)
        p = diff = None
        if base is not None and method != baseline:
            if cell.ids != base.ids:
                raise MixmagError(
                    f"{task}: {method} and {baseline} were tested on different specimens; a paired test needs the same"
                )
            p = cell.paired_p(cell.truth, cell.scores.mean(0), base.scores.mean(0), n_boot)
            diff = float(np.mean(per_seed)) - base_mean
        out.append(
            CellStatistic(
                task,
                method,
                [float(v) for v in per_seed],
                float(np.mean(per_seed)),
                float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                low,
                high,
                len(cell.ids),
                p,
                diff,
            )
        )
    return out


def task_cell_statistics(
    task_name: str, runs_by_method: dict[str, list[Path]], baseline: str, *, n_boot: int = 1000
) -> list[CellStatistic]:
    """`cell_statistics` for a multiclass, survival or regression task: its primary metric (C-index, macro AUROC,
    Spearman) per seed, a bootstrap CI over specimens of the mean over seeds, and a paired bootstrap p of the
    seed-averaged scores' metric against the baseline's (DeLong is for AUROC only)."""
    return _cells(task_name, {m: _scored_task(runs) for m, runs in runs_by_method.items()}, baseline, n_boot)


def bootstrap_mean_auroc(
    labels: np.ndarray, scores: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile CI of the mean over seeds of AUROC, resampling specimens (stratified by class)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        values[b] = np.mean([auroc(labels[idx], s[idx]) for s in scores])
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def cell_statistics(
    task: str, runs_by_method: dict[str, list[Path]], baseline: str, *, n_boot: int = 1000
) -> list[CellStatistic]:
    """One CellStatistic per method of a task; `runs_by_method[m]` are its run folders, one per seed (a task type
    other than binary: `task_cell_statistics`)."""
    first = next(iter(runs_by_method.values()))[0]
    if tested_runs(first)[0].task() != "binary":
        return task_cell_statistics(task, runs_by_method, baseline, n_boot=n_boot)
    return _cells(task, {m: _scored_binary(runs) for m, runs in runs_by_method.items()}, baseline, n_boot)


def false_discovery_rate(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p values (q) of a family of tests (scipy.stats.false_discovery_control). A test
    without a p (NaN: DeLong on two score sets with no variance, as tiny cohorts give) gets no q and is not counted in
    the family; scipy refuses NaN outright, which stopped a whole study at its statistics."""
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = stats.false_discovery_control(p[finite], method="bh")
    return [float(v) for v in q]


def with_false_discovery_rate(cells: list[CellStatistic]) -> list[CellStatistic]:
    """The cells with q values over every comparison against the baseline they hold: a table of 4 tasks x 4 methods
    makes 16 tests, and a p of 0.01 among them is weaker evidence than a p of 0.01 alone."""
    q = iter(false_discovery_rate([c.p_vs_baseline for c in cells if c.p_vs_baseline is not None]))
    return [c if c.p_vs_baseline is None else replace(c, q_vs_baseline=next(q)) for c in cells]


@dataclass(frozen=True)
class PairedComparison:
    """Method a against method b on one task: difference of mean AUROC over seeds and a paired DeLong p on
    seed-averaged scores (the same test as against the baseline, for any two methods)."""

    task: str
    method: str
    against: str
    difference: float
    p: float
    q: float | None = None  # adjusted over the pairs compared (`false_discovery_rate`)


def compare_methods(task: str, runs_a: list[Path], runs_b: list[Path], method: str, against: str) -> PairedComparison:
    """Binary: DeLong on seed-averaged scores; other task types: a paired bootstrap of their primary metric."""
    if tested_runs(runs_a[0])[0].task() != "binary":
        kind, truth, scores_a, ids = _aligned_rows(runs_a)
        _, _, scores_b, ids_b = _aligned_rows(runs_b)
        if ids != ids_b:
            raise MixmagError(
                f"{task}: {method} and {against} were tested on different specimens; a paired test needs the same"
            )
        paired = paired_bootstrap(kind.primary_metric, truth, scores_a.mean(0), scores_b.mean(0))
        mean = _mean_over_seeds(kind)
        diff = mean(*truth, np.moveaxis(scores_a, 0, 1)) - mean(*truth, np.moveaxis(scores_b, 0, 1))
        return PairedComparison(task, method, against, float(diff), paired.p_value)
    labels, scores_a, _ = _aligned(runs_a)
    labels_b, scores_b, _ = _aligned(runs_b)
    if labels.size != labels_b.size or not np.array_equal(labels, labels_b):
        raise MixmagError(
            f"{task}: {method} and {against} were tested on different specimens; a paired test needs the same"
        )
    diff = float(np.mean([auroc(labels, s) for s in scores_a]) - np.mean([auroc(labels, s) for s in scores_b]))
    return PairedComparison(
        task, method, against, diff, delong_test(labels, scores_a.mean(0), scores_b.mean(0)).p_value
    )


def pretraining_losses(log: Path, last_steps: int) -> dict:
    """Mean MEM loss and mean predict-the-mean baseline loss over the logged steps of the last `last_steps` steps of a
    pretraining log (one batch's baseline is noisy, so both are averaged over the same batches)."""
    rows = read_losses(log)
    if any(r.mem is None or r.baseline_loss is None for r in rows):
        raise MixmagError(
            f"{log}: not a readable pretraining log (no mem and baseline_loss columns); delete its folder to pretrain "
            "again"
        )
    steps = np.array([r.step for r in rows])
    mem = np.array([r.mem for r in rows], np.float64)
    baseline = np.array([r.baseline_loss for r in rows], np.float64)
    if not len(rows) or not (np.isfinite(mem).all() and np.isfinite(baseline).all()):
        raise MixmagError(f"{log}: no finite losses logged; delete its folder to pretrain again")
    tail = steps > steps[-1] - last_steps
    return {
        "steps": int(steps[-1]),
        "averaged_over_steps": last_steps,
        "logged_batches": int(tail.sum()),
        "mem": float(mem[tail].mean()),
        "baseline": float(baseline[tail].mean()),
        "first_mem": float(mem[0]),
        "first_baseline": float(baseline[0]),
    }


def hanley_mcneil_variance(auc: float, n_pos: int, n_neg: int) -> float:
    """Variance of an AUROC estimate (Hanley & McNeil 1982, exponential approximation)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)


def paired_power(
    auc: float, difference: float, n_pos: int, n_neg: int, correlation: float, alpha: float = 0.05
) -> float:
    """Power of a two-sided paired test (DeLong-like, normal approximation) to detect `difference` between two
    AUROCs near `auc` measured on the same specimens whose estimates correlate by `correlation`."""
    var = 2 * hanley_mcneil_variance(auc, n_pos, n_neg) * (1 - correlation)
    z = difference / math.sqrt(var)
    crit = stats.norm.ppf(1 - alpha / 2)
    return float(stats.norm.sf(crit - z) + stats.norm.cdf(-crit - z))


def specimens_for_power(
    auc: float, difference: float, correlation: float, power: float = 0.8, alpha: float = 0.05
) -> int:
    """Smallest balanced test set (total specimens) with at least `power`."""
    n = 10
    while paired_power(auc, difference, n // 2, n // 2, correlation, alpha) < power:
        n += 10
    return n


def statistics_table(
    cells: list[CellStatistic], tasks: list[str], methods: list[str], seeds: list[int], n_boot: int, baseline: str
) -> str:
    """Markdown: one row per method, one column per task, each cell mean ± sd [bootstrap CI low, high, p]."""
    by = {(c.task, c.method): c for c in cells}

    def cell(c: CellStatistic) -> str:
        p = "" if c.p_vs_baseline is None else f", p={c.p_vs_baseline:.2g}"
        p += "" if c.q_vs_baseline is None else f", q={c.q_vs_baseline:.2g}"
        return f"{100 * c.mean:.1f} ± {100 * c.sd:.1f} [{100 * c.low:.1f}, {100 * c.high:.1f}{p}]"

    rows = [f"| {markdown_cell(m)} | " + " | ".join(cell(by[(t, m)]) for t in tasks) + " |" for m in methods]
    n_test = ", ".join(str(n) for n in sorted({c.n_test for c in cells}))
    note = (
        f"Test AUROC x 100: mean ± sd over seeds {', '.join(map(str, seeds))} [bootstrap 95% CI of the mean over "
        f"{n_boot} resamples of the {n_test} test specimens; p: paired DeLong against {baseline} on "
        "seed-averaged scores"
        + (
            f"; q: p adjusted for the table's {sum(c.q_vs_baseline is not None for c in cells)} comparisons "
            "(Benjamini-Hochberg false discovery rate)]."
            if any(c.q_vs_baseline is not None for c in cells)
            else "]."
        )
    )
    head = "| method | " + " | ".join(map(markdown_cell, tasks)) + " |"
    return "\n".join([head, "|---|" + "---:|" * len(tasks), *rows, "", note]) + "\n"
