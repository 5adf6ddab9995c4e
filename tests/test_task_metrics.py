"""Metrics of the task types beyond binary, pinned against the well-kept libraries (lifelines, scikit-learn) on random
data with ties and censoring."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

from mixmag.metrics import (
    balanced_accuracy,
    bootstrap_estimate,
    confusion,
    harrell_c,
    kaplan_meier,
    logrank,
    macro_auroc,
    mean_absolute_error,
    paired_bootstrap,
    spearman,
)

lifelines = pytest.importorskip("lifelines")
from lifelines.statistics import logrank_test  # noqa: E402
from lifelines.utils import concordance_index  # noqa: E402


def _survival_data(seed: int, n: int = 80):
    rng = np.random.default_rng(seed)
    time = rng.integers(1, 15, n).astype(float)  # few distinct times: many ties
    event = rng.random(n) < 0.45  # censoring-heavy
    risk = np.round(rng.normal(size=n), 1)  # ties in risk too
    return time, event, risk


@pytest.mark.parametrize("seed", range(5))
def test_harrell_c_equals_lifelines_with_ties_and_censoring(seed):
    time, event, risk = _survival_data(seed)
    # lifelines scores predicted survival times (higher = later), so a risk enters negated
    assert harrell_c(time, event, risk) == pytest.approx(concordance_index(time, -risk, event), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_logrank_equals_lifelines_with_ties_and_censoring(seed):
    time, event, risk = _survival_data(seed)
    group = risk > np.median(risk)
    ours = logrank(time, event, group)
    theirs = logrank_test(time[group], time[~group], event[group], event[~group])
    assert ours.statistic == pytest.approx(theirs.test_statistic, abs=1e-9)
    assert ours.p_value == pytest.approx(theirs.p_value, abs=1e-9)


def test_kaplan_meier_equals_lifelines():
    time, event, _ = _survival_data(7)
    times, survival = kaplan_meier(time, event)
    fitted = lifelines.KaplanMeierFitter().fit(time, event)
    theirs = fitted.survival_function_at_times(times).to_numpy()
    np.testing.assert_allclose(survival, theirs, atol=1e-9)


def test_c_index_without_a_comparable_pair_is_undefined():
    with pytest.raises(ValueError, match="comparable"):
        harrell_c([1.0, 2.0], [0, 0], [0.1, 0.2])


def test_multiclass_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    probs[:, 0] = np.round(probs[:, 0], 1)  # ties
    probs /= probs.sum(1, keepdims=True)
    predicted = probs.argmax(1)
    assert macro_auroc(labels, probs) == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"), abs=1e-12)
    assert balanced_accuracy(labels, predicted, 3) == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert confusion(labels, predicted, 3) == confusion_matrix(labels, predicted, labels=[0, 1, 2]).tolist()


def test_bootstrap_interval_holds_the_value_and_paired_differences_see_a_better_method():
    rng = np.random.default_rng(1)
    target = rng.normal(size=120)
    good, poor = target + 0.3 * rng.normal(size=120), target + 2.0 * rng.normal(size=120)
    estimate = bootstrap_estimate(spearman, (target, good), n_boot=300, seed=0)
    assert estimate.low <= estimate.value <= estimate.high
    better = paired_bootstrap(spearman, (target,), good, poor, n_boot=300, seed=0)
    assert better.difference > 0 and better.low > 0 and better.p_value < 0.01
    same = paired_bootstrap(mean_absolute_error, (target,), good, good, n_boot=300, seed=0)
    assert same.difference == 0 and same.p_value == 1.0
