"""Specimen-level AUROC with a bootstrap confidence interval, and the paired DeLong test.

AUROC is the Mann-Whitney statistic (ties count one half). DeLong's variance uses the structural
components V10 / V01 computed from midranks in O(n log n) (Sun & Xu's fast form); a test checks it
against the explicit O(n^2) definition.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    fn = {"max": np.max, "mean": np.mean}[reduce]
    return {spec: float(fn(v)) for spec, v in grouped.items()}
