"""Cross-validated training (`mixmag train` with a `cv:` section): k ordinary training runs, one per fold, and their
summary.

Each fold is a normal training run folder (`<out>/fold-<i>/`) trained on a derived copy of the cohort table whose
`split` column holds the fold's train / tune / test specimens (`mixmag.train.crossval`), so selection, prediction
and reports work on a fold exactly as on any run. A finished fold trained with the same settings on the same stores is
reused on a rerun. The summary (`cv.json`, `cv.md`) holds every fold's test metric, their mean and sample standard
deviation, and the pooled out-of-fold metric: every specimen's score from the one fold that tested it, with a bootstrap
95% CI over specimens.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..data.cohort import load_cohort
from ..fileio import output_folder, remove_own_tree
from ..runs import CrossValRun, CrossValSummary, FoldSummary, TrainRun
from ..store import shared_settings
from ..train.crossval import CohortUnits, Fold, make_folds, read_units, split_counts, write_fold_table
from ..train.finetune import TrainConfig, run_is_current, run_training
from ..train.tasks import task_for

METRIC_NAMES = {"auroc": "AUROC", "macro_auroc": "macro AUROC", "c_index": "C-index", "spearman": "Spearman rho"}
FoldDone = Callable[[int, dict, bool], None]  # (fold, its metrics, reused)


def fold_config(config: TrainConfig, folder: CrossValRun, index: int) -> TrainConfig:
    """An ordinary training config for one fold: its derived table, its run folder, no `cv:` section."""
    table, run = folder.fold_table(index), folder.fold(index).folder
    return TrainConfig.model_validate(config.model_dump() | {"cv": None, "cohort": str(table), "out": str(run)})


def fold_is_current(config: TrainConfig, fold: Fold) -> bool:
    """A finished fold is reused only when it was trained with these settings on these stores (`run_is_current`) and
    on this fold's specimens (another `cv.seed` or table writes another fold table at the same path)."""
    cohort = load_cohort(config.cohort, config.stores, task=config.task, classes=config.classes)
    if not run_is_current(config, shared_settings(list(cohort.stores.values()))):
        return False
    trained = TrainRun(config.out).read_splits()
    return all(set(trained.get(name, [])) == set(specs) for name, specs in fold.splits.items())


def run_cross_validation(
    config: TrainConfig,
    *,
    on_fold: FoldDone | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    device: torch.device | None = None,
) -> dict:
    """Train (or reuse) every fold of `config.cv` into `config.out`, then write and return the summary."""
    if config.cv is None:
        raise ValueError("run_cross_validation needs a config with a `cv:` section")
    folder = CrossValRun(config.out)
    units = read_units(config.cohort, config.task, config.cv)
    folds = make_folds(units, config.cv)
    with folder.lock():
        folder.clear_summary()
        for stale in folder.extra_folds(len(folds)):  # an earlier cross-validation's, with more folds
            remove_own_tree(stale, "fold folder")
        if "split" in units.table.columns and on_note is not None:
            on_note(f"{config.cohort}: its 'split' column is ignored; each of the {len(folds)} folds makes its own")
        for fold in folds:
            output_folder(folder.folder, folder.fold(fold.index).folder.name, "fold folder")
            write_fold_table(folder.fold_table(fold.index), units, fold)
            cfg = fold_config(config, folder, fold.index)
            reused = fold_is_current(cfg, fold)
            metrics = TrainRun(cfg.out).read_metrics() if reused else run_training(cfg, on_epoch, device)
            if on_fold is not None:
                on_fold(fold.index, metrics, reused)
        summary = summarise(folder, folds, units, config)
        folder.write_summary(summary, summary_markdown(summary))
    return summary


def summarise(folder: CrossValRun, folds: list[Fold], units: CohortUnits, config: TrainConfig) -> dict:
    """cv.json: the folds' test metrics, their mean and sd, and the pooled out-of-fold metric with its CI."""
    rows = []
    for fold in folds:
        run = folder.fold(fold.index)
        metrics = run.read_metrics_record()
        primary = metrics.primary
        rows.append(
            {
                "fold": fold.index,
                "run": run.folder.name,
                "best_epoch": metrics.best_epoch,
                "counts": split_counts(units, fold),
                "tune": metrics.tune.value(primary),
                "test": metrics.test.value(primary),
                "test_ci95": metrics.test.ci95,
            }
        )
    values = np.array([FoldSummary.model_validate(r).test for r in rows], dtype=np.float64)
    cv = config.cv
    if cv is None:
        raise ValueError("a cross-validation summary needs a config with a `cv:` section")
    return {
        "folds": len(folds),
        "task": config.task,
        "primary": primary,
        "grouped_by": units.grouped_by,
        "stratified_by": units.stratified_by,
        "tune_fraction": cv.tune_fraction,
        "seed": cv.seed,
        "per_fold": rows,
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)),
        "pooled": pooled_metric(folder, len(folds), config),
    }


def pooled_metric(folder: CrossValRun, folds: int, config: TrainConfig) -> dict:
    """The primary metric over every fold's test predictions pooled (each specimen from the one fold that tested it),
    with a bootstrap 95% CI over specimens, as the task computes a run's own (`mixmag.train.tasks:Task.pooled`)."""
    rows = [row for i in range(folds) for row in folder.fold(i).read_task_rows("test")]
    task = task_for(config.task, pipeline=folder.fold(0).read_pipeline())
    pooled = task.pooled(rows, n_boot=config.bootstrap, seed=config.seed)
    if task.name == "binary":
        pooled["positive"] = sum(r.binary_label for r in rows)
    return pooled


def summary_markdown(summary: CrossValSummary | dict) -> str:
    """cv.md: the summary as a table a person reads (and `mixmag evaluate` prints)."""
    cv = CrossValSummary.of(summary)
    metric = METRIC_NAMES.get(cv.primary, cv.primary)
    lines = [
        f"# Cross-validation: {cv.folds} folds",
        "",
        f"Grouped by {cv.grouped_by} (none is tested in two folds), stratified by {cv.stratified_by}; "
        f"each fold's tune split is {cv.tune_fraction:.0%} of its training part; seed {cv.seed}.",
        "",
        f"| fold | train | tune | test | tune {metric} | test {metric} (95% CI) | chosen epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in cv.per_fold:
        sizes = r.sizes()
        low, high = r.test_ci95
        lines.append(
            f"| {r.run} | {sizes[0]} | {sizes[1]} | {sizes[2]} | {r.tune:.3f} | {r.test:.3f} "
            f"({low:.3f}-{high:.3f}) | {r.best_epoch} |"
        )
    lines += ["", f"Test {metric} over folds: {cv.mean:.3f} ± {cv.sd:.3f} (mean ± sd)."]
    value, (low, high) = cv.pooled.value(cv.primary), cv.pooled.ci95
    lines.append(
        f"Pooled out-of-fold {metric}: {value:.3f} (95% CI {low:.3f}-{high:.3f}; {cv.pooled.specimens} specimens, "
        "bootstrap over specimens)."
    )
    return "\n".join(lines) + "\n"
