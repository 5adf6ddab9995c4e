import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mixmag.metrics import auroc, bootstrap_auroc, delong_test, delong_variance, specimen_scores, structural_components


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=60) + labels * 0.7, 1)  # rounding makes many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_structural_components_and_variance_match_the_explicit_definition():
    rng = np.random.default_rng(7)
    labels = np.r_[np.ones(23, int), np.zeros(31, int)]
    scores = np.round(rng.normal(size=54) + labels, 1)
    pos, neg = scores[labels == 1], scores[labels == 0]
    psi = (pos[:, None] > neg[None, :]).astype(float) + 0.5 * (pos[:, None] == neg[None, :])
    v10_slow, v01_slow = psi.mean(axis=1), psi.mean(axis=0)
    v10, v01 = structural_components(labels, scores)
    np.testing.assert_allclose(v10, v10_slow)
    np.testing.assert_allclose(v01, v01_slow)
    slow_var = v10_slow.var(ddof=1) / pos.size + v01_slow.var(ddof=1) / neg.size
    assert delong_variance(labels, scores) == pytest.approx(slow_var, rel=1e-12)


def test_paired_delong_explicit_and_behaviour():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    good = labels + rng.normal(0, 0.8, 200)
    bad = labels + rng.normal(0, 3.0, 200)
    result = delong_test(labels, good, bad)
    assert result.auc_a > result.auc_b and result.p_value < 0.05
    # explicit covariance of the paired components
    (a10, a01), (b10, b01) = structural_components(labels, good), structural_components(labels, bad)
    var = (np.var(a10, ddof=1) + np.var(b10, ddof=1) - 2 * np.cov(a10, b10)[0, 1]) / a10.size + (
        np.var(a01, ddof=1) + np.var(b01, ddof=1) - 2 * np.cov(a01, b01)[0, 1]
    ) / a01.size
    assert result.std_error == pytest.approx(np.sqrt(var), rel=1e-12)
    same = delong_test(labels, good, good)
    assert same.difference == 0 and same.p_value == 1.0


def test_bootstrap_interval_covers_the_true_auroc_at_about_its_nominal_rate():
    rng = np.random.default_rng(0)
    shift = 1.0  # true AUROC of N(1, 1) vs N(0, 1): Phi(1 / sqrt(2))
    from scipy.stats import norm

    truth = norm.cdf(shift / np.sqrt(2))
    covered = 0
    trials = 120
    for k in range(trials):
        labels = np.r_[np.ones(40, int), np.zeros(60, int)]
        scores = rng.normal(size=100) + shift * labels
        ci = bootstrap_auroc(labels, scores, n_boot=300, seed=k)
        covered += ci.low <= truth <= ci.high
        assert ci.low <= ci.auroc <= ci.high
    assert 0.88 <= covered / trials <= 0.99


def test_bootstrap_is_seeded_and_errors_are_clear():
    labels, scores = np.r_[np.ones(10), np.zeros(10)], np.arange(20.0)
    assert bootstrap_auroc(labels, scores, seed=1) == bootstrap_auroc(labels, scores, seed=1)
    with pytest.raises(ValueError, match="both classes"):
        auroc(np.ones(5), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.1, np.nan])


def test_specimen_score_is_the_max_of_its_slides():
    scores = specimen_scores({"a1": 0.2, "a2": 0.9, "b1": 0.4}, {"a1": "A", "a2": "A", "b1": "B"})
    assert scores == {"A": 0.9, "B": 0.4}
