"""Specimen-level metrics: AUROC with a bootstrap interval and the paired DeLong test (binary), and the metrics of the
other task types (multiclass, survival, regression) with bootstrap intervals and paired bootstrap differences.

AUROC is the Mann-Whitney statistic (ties count one half). DeLong's variance uses the structural
components V10 / V01 computed from midranks in O(n log n) (Sun & Xu's fast form); a test checks it
against the explicit O(n^2) definition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not set(np.unique(labels)) <= {0, 1}:
        raise ValueError("labels must be 0 or 1")
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError("AUROC needs both classes among the labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or Inf")
    return labels, scores


def auroc(labels, scores) -> float:
    labels, scores = _check(labels, scores)
    ranks = stats.rankdata(scores)  # midranks: ties count one half
    n_pos = labels.sum()
    n_neg = labels.size - n_pos
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def structural_components(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """V10 (one per positive) and V01 (one per negative): the placement values of DeLong et al."""
    labels, scores = _check(labels, scores)
    pos, neg = scores[labels == 1], scores[labels == 0]
    m, n = pos.size, neg.size
    all_ranks = stats.rankdata(np.concatenate([pos, neg]))
    pos_ranks, neg_ranks = stats.rankdata(pos), stats.rankdata(neg)
    v10 = (all_ranks[:m] - pos_ranks) / n
    v01 = 1.0 - (all_ranks[m:] - neg_ranks) / m
    return v10, v01


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    difference: float
    std_error: float
    z: float
    p_value: float


def delong_test(labels, scores_a, scores_b) -> DeLongResult:
    """Paired DeLong test of AUROC(a) == AUROC(b) on the same specimens (two-sided)."""
    labels = np.asarray(labels).astype(int)
    v10_a, v01_a = structural_components(labels, scores_a)
    v10_b, v01_b = structural_components(labels, scores_b)
    auc_a, auc_b = v10_a.mean(), v10_b.mean()
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    cov = s10 / v10_a.size + s01 / v01_a.size
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = auc_a - auc_b
    if var <= 0:
        z, p = (0.0, 1.0) if diff == 0 else (float("inf") * np.sign(diff), 0.0)
    else:
        z = diff / np.sqrt(var)
        p = 2 * stats.norm.sf(abs(z))
    return DeLongResult(float(auc_a), float(auc_b), float(diff), float(np.sqrt(max(var, 0.0))), float(z), float(p))


def delong_variance(labels, scores) -> float:
    v10, v01 = structural_components(labels, scores)
    return float(np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size)


@dataclass(frozen=True)
class AurocCI:
    auroc: float
    low: float
    high: float
    n_boot: int
    n_pos: int
    n_neg: int


def bootstrap_auroc(labels, scores, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> AurocCI:
    """Percentile bootstrap over specimens (resamples with both classes; stratified by class so every
    resample has the observed class counts)."""
    labels, scores = _check(labels, scores)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        values[b] = auroc(labels[idx], scores[idx])
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return AurocCI(auroc(labels, scores), float(low), float(high), n_boot, int(pos.size), int(neg.size))


def specimen_scores(
    slide_scores: dict[str, float], specimen_of: dict[str, str], reduce: str = "max"
) -> dict[str, float]:
    """Specimen score from its slides' scores (max by default: one positive slide makes a positive specimen)."""
    grouped: dict[str, list[float]] = {}
    for slide, score in slide_scores.items():
        grouped.setdefault(specimen_of[slide], []).append(score)
    reducers: dict[str, Callable[..., Any]] = {"max": np.max, "mean": np.mean}
    fn = reducers[reduce]
    return {spec: float(fn(v)) for spec, v in grouped.items()}


# -- task types beyond binary: one resampling rule, then each type's metrics (docs/method.md, "Task types") ---------


def _resampled(statistic, n: int, n_boot: int, seed: int) -> list[float]:
    """`statistic(idx)` on `n_boot` bootstrap resamples of n rows; resamples where it is undefined (ValueError) are
    drawn again, up to 50 n_boot draws."""
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(50 * n_boot):
        if len(values) == n_boot:
            break
        try:
            values.append(float(statistic(rng.integers(0, n, n))))
        except ValueError:
            continue
    return values


@dataclass(frozen=True)
class Estimate:
    """A metric's value on the specimens with its percentile bootstrap interval."""

    value: float
    low: float
    high: float


def bootstrap_estimate(metric, columns: tuple[np.ndarray, ...], *, n_boot: int, seed: int, level: float = 0.95):
    """`metric(*columns)` and its percentile bootstrap interval over specimens (rows resampled with replacement); a
    resample on which the metric is undefined (ValueError: one class, no events, constant values) is drawn again."""
    value = float(metric(*columns))
    values = _resampled(lambda idx: metric(*(c[idx] for c in columns)), len(columns[0]), n_boot, seed)
    if not values:
        return Estimate(value, value, value)
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return Estimate(value, float(low), float(high))


@dataclass(frozen=True)
class PairedDifference:
    """metric(a) - metric(b) on the same specimens, its bootstrap interval and two-sided bootstrap p value."""

    difference: float
    low: float
    high: float
    p_value: float


def paired_bootstrap(metric, truth: tuple[np.ndarray, ...], scores_a, scores_b, *, n_boot: int = 2000, seed: int = 0):
    """Paired bootstrap of a metric's difference between two methods scored on the same specimens: both are evaluated
    on each resample, so their correlation is kept (DeLong stays the test for binary AUROC)."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    observed = float(metric(*truth, a) - metric(*truth, b))

    def difference(idx: np.ndarray) -> float:
        kept = [t[idx] for t in truth]
        return metric(*kept, a[idx]) - metric(*kept, b[idx])

    d = np.asarray(_resampled(difference, len(a), n_boot, seed))
    if d.size == 0:
        raise ValueError("the metric is undefined on every resample")
    p = min(1.0, 2 * min(((d <= 0).sum() + 1) / (d.size + 1), ((d >= 0).sum() + 1) / (d.size + 1)))
    low, high = np.quantile(d, [0.025, 0.975])
    return PairedDifference(observed, float(low), float(high), float(p))


# multiclass --------------------------------------------------------------------------------------------------------


def macro_auroc(labels, probabilities) -> float:
    """Mean over classes of the one-vs-rest AUROC (labels: class indices; probabilities: (n, classes))."""
    return float(np.mean(per_class_auroc(labels, probabilities)))


def per_class_auroc(labels, probabilities) -> list[float]:
    """One-vs-rest AUROC of each class; ValueError when a class is absent from the labels."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return [auroc(labels == k, probabilities[:, k]) for k in range(probabilities.shape[1])]


def balanced_accuracy(labels, predicted, n_classes: int) -> float:
    """Mean over the classes present of the share of their specimens predicted right."""
    labels, predicted = np.asarray(labels).astype(int), np.asarray(predicted).astype(int)
    recalls = [np.mean(predicted[labels == k] == k) for k in range(n_classes) if (labels == k).any()]
    return float(np.mean(recalls))


def confusion(labels, predicted, n_classes: int) -> list[list[int]]:
    """counts[true][predicted]."""
    counts = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(counts, (np.asarray(labels).astype(int), np.asarray(predicted).astype(int)), 1)
    return counts.tolist()


# survival ----------------------------------------------------------------------------------------------------------


def _survival(time, event) -> tuple[np.ndarray, np.ndarray]:
    time = np.asarray(time, dtype=np.float64).ravel()
    event = np.asarray(event).astype(bool).ravel()
    if time.shape != event.shape:
        raise ValueError(f"{time.size} times but {event.size} events")
    return time, event


def harrell_c(time, event, risk) -> float:
    """Harrell's concordance of a risk score (higher risk = earlier event): over the pairs whose shorter time is an
    event (a censoring at the same time as an event counts as later; two events at one time are not comparable), the
    share where the shorter time has the higher risk, ties in risk one half. ValueError without a comparable pair."""
    time, event = _survival(time, event)
    risk = np.asarray(risk, dtype=np.float64).ravel()
    later = (time[None, :] > time[:, None]) | ((time[None, :] == time[:, None]) & ~event[None, :])
    comparable = event[:, None] & later
    pairs = comparable.sum()
    if pairs == 0:
        raise ValueError("no comparable pair (no event before another specimen's time)")
    higher = (risk[:, None] > risk[None, :]) & comparable
    tied = (risk[:, None] == risk[None, :]) & comparable
    return float((higher.sum() + 0.5 * tied.sum()) / pairs)


def censoring_survival(time, event, at) -> np.ndarray:
    """G(t): the Kaplan-Meier estimate of staying uncensored up to and including t (censoring the "event"; an event
    and a censoring at one time: the event comes first, so it leaves the censoring's risk set), at the times `at`."""
    time, event = _survival(time, event)
    at = np.asarray(at, dtype=np.float64).ravel()
    times = np.unique(time)
    factors = np.array(
        [1 - (~event & (time == t)).sum() / max(((time >= t) & ~(event & (time == t))).sum(), 1) for t in times]
    )
    curve = np.cumprod(factors)
    where = np.searchsorted(times, at, side="right") - 1  # the last time at or before each point
    return np.where(where >= 0, curve[np.clip(where, 0, None)], 1.0)


def uno_c(time, event, risk, tau: float | None = None) -> float:
    """Uno's concordance (Uno et al. 2011): Harrell's comparable pairs, each weighted by 1 / G(T_i)^2, G the
    Kaplan-Meier censoring survival of the same specimens, so that pairs lost to heavy censoring count as often as
    they would have been seen; with `tau`, only pairs whose earlier event is before tau. Less biased than Harrell's
    under censoring that depends on time. ValueError without a comparable pair, or when G is 0 at an event."""
    time, event = _survival(time, event)
    risk = np.asarray(risk, dtype=np.float64).ravel()
    g = censoring_survival(time, event, time)
    counted = event & (time < tau) if tau is not None else event  # events after tau weigh 0 (still "later" ones)
    if (g[counted] <= 0).any():
        raise ValueError("the censoring survival is 0 at an event time (every specimen still at risk is censored)")
    weight = np.where(counted, 1.0 / np.where(counted, g, 1.0) ** 2, 0.0)
    later = (time[None, :] > time[:, None]) | ((time[None, :] == time[:, None]) & ~event[None, :])
    comparable = counted[:, None] & later
    if not comparable.any():
        raise ValueError("no comparable pair (no event before another specimen's time)")
    score = (risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :])
    return float((weight[:, None] * comparable * score).sum() / (weight[:, None] * comparable).sum())


@dataclass(frozen=True)
class LogRank:
    statistic: float
    p_value: float


def logrank(time, event, group) -> LogRank:
    """Two-group log-rank test (Mantel-Haenszel variance, ties handled at each event time); group: bool per specimen."""
    time, event = _survival(time, event)
    group = np.asarray(group).astype(bool).ravel()
    observed = expected = variance = 0.0
    for t in np.unique(time[event]):
        at_risk = time >= t
        n, n1 = at_risk.sum(), (at_risk & group).sum()
        dead = event & (time == t)
        d, d1 = dead.sum(), (dead & group).sum()
        observed += d1
        expected += d * n1 / n
        if n > 1:
            variance += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    if variance <= 0:
        raise ValueError("the log-rank test needs events in a population where both groups are at risk")
    statistic = (observed - expected) ** 2 / variance
    return LogRank(float(statistic), float(stats.chi2.sf(statistic, 1)))


def kaplan_meier(time, event) -> tuple[np.ndarray, np.ndarray]:
    """The product-limit survival curve: (times, survival just after each), starting at (0, 1)."""
    time, event = _survival(time, event)
    times = np.unique(time[event])
    survival = np.cumprod([1 - (event & (time == t)).sum() / (time >= t).sum() for t in times])
    return np.concatenate([[0.0], times]), np.concatenate([[1.0], survival])


# regression --------------------------------------------------------------------------------------------------------


def pearson(target, predicted) -> float:
    target, predicted = np.asarray(target, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if np.ptp(target) == 0 or np.ptp(predicted) == 0:
        raise ValueError("a correlation needs values that vary")
    return float(stats.pearsonr(target, predicted)[0])


def spearman(target, predicted) -> float:
    target, predicted = np.asarray(target, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if np.ptp(target) == 0 or np.ptp(predicted) == 0:
        raise ValueError("a correlation needs values that vary")
    return float(stats.spearmanr(target, predicted)[0])


def mean_absolute_error(target, predicted) -> float:
    return float(np.mean(np.abs(np.asarray(target, dtype=np.float64) - np.asarray(predicted, dtype=np.float64))))
