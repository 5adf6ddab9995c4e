"""Task-averaged AUROC contrasts between groups of methods, with a paired bootstrap CI (the paper's Fig. 3).

A contrast is "group A minus group B": per task, the mean test AUROC of A's methods (each method's AUROC the mean over
its seeds) minus B's, then the mean over tasks; an empty B gives A's task-averaged AUROC itself. The CI resamples
each task's test specimens (stratified by class) once for every method and seed, so the methods stay paired: the
interval reflects the test set's finiteness, not the variance between training runs or cohorts (that is what
`mixmag benchmark --replicates` measures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from ..errors import MixmagError
from ..metrics import auroc
from .benchmark_stats import read_test_predictions


@dataclass(frozen=True)
class Contrast:
    label: str
    plus: tuple[str, ...]  # group A
    minus: tuple[str, ...]  # group B (empty: A's level itself)
    value: float
    low: float  # 95% percentile bootstrap interval
    high: float


def _scores(runs: list[Path]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(specimens, labels (n,), scores (seeds, n)) of a method's runs, over the specimens every run predicted."""
    preds = [read_test_predictions(r) for r in runs]
    common = sorted(set.intersection(*(set(p) for p in preds)))
    labels = np.array([preds[0][s][0] for s in common])
    return common, labels, np.array([[p[s][1] for s in common] for p in preds], dtype=np.float64)


def resampled_auroc(labels: np.ndarray, scores: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(B,) the mean over seeds of AUROC on each resample; `index` (B, n) holds the positives' draws first, then
    the negatives' (as `stratified_index` makes them), so the class counts are those of `labels`."""
    n_pos = int(np.sum(labels == 1))
    n_neg = labels.size - n_pos
    out = np.zeros(index.shape[0])
    for seed_scores in scores:
        ranks = rankdata(seed_scores[index], axis=1)  # ties share their mean rank, as in the Mann-Whitney U
        out += (ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out / len(scores)


def stratified_index(labels: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) resampling indices: the positives drawn with replacement from the positives, then the negatives."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if not pos.size or not neg.size:
        raise MixmagError("a test split with one class has no AUROC; give the tasks test specimens of both classes")
    return np.concatenate([rng.choice(pos, (n_boot, pos.size)), rng.choice(neg, (n_boot, neg.size))], axis=1)


class ContrastData:
    """Every method's point AUROC and resampled AUROCs per task, drawn once, so contrasts share the resamples."""

    def __init__(self, runs: dict[str, dict[str, list[Path]]], n_boot: int = 1000, seed: int = 0) -> None:
        """runs: {task: {method: [run folder per seed]}}."""
        rng = np.random.default_rng(seed)
        self.point: dict[str, dict[str, float]] = {}
        self.boot: dict[str, dict[str, np.ndarray]] = {}
        for task, methods in runs.items():
            aligned = {m: _scores(r) for m, r in methods.items()}
            ids = {tuple(a[0]) for a in aligned.values()}
            if len(ids) > 1:
                raise MixmagError(
                    f"{task}: the methods were tested on different specimens; a paired contrast needs one"
                )
            labels = next(iter(aligned.values()))[1]
            index = stratified_index(labels, n_boot, rng)
            self.point[task] = {m: float(np.mean([auroc(labels, s) for s in a[2]])) for m, a in aligned.items()}
            self.boot[task] = {m: resampled_auroc(labels, a[2], index) for m, a in aligned.items()}

    def contrast(self, label: str, plus: list[str], minus: list[str] = ()) -> Contrast:
        """Task-averaged mean AUROC of `plus` minus that of `minus` (or `plus`'s level when `minus` is empty)."""

        def level(values: dict[str, float | np.ndarray], group) -> float | np.ndarray:
            return sum(values[m] for m in group) / len(group) if group else 0.0

        point = np.mean([level(p, plus) - level(p, minus) for p in self.point.values()])
        boot = np.mean([level(b, plus) - level(b, minus) for b in self.boot.values()], axis=0)
        low, high = np.quantile(boot, [0.025, 0.975])
        return Contrast(label, tuple(plus), tuple(minus), float(point), float(low), float(high))
