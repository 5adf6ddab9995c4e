"""Uno's C-index (IPCW concordance) for censoring-heavy data, pinned against scikit-survival's
concordance_index_ipcw on random data with ties in time and risk and heavy censoring, and in a survival run's metrics
beside Harrell's, each with a bootstrap interval."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from train_runs import train_config
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.metrics import bootstrap_estimate, censoring_survival, harrell_c, uno_c
from mixmag.runs import TrainRun
from mixmag.train.finetune import run_training

sksurv_metrics = pytest.importorskip("sksurv.metrics")
from sksurv.nonparametric import CensoringDistributionEstimator  # noqa: E402
from sksurv.util import Surv  # noqa: E402


def _data(seed: int, n: int = 90, events: float = 0.3):
    rng = np.random.default_rng(seed)
    time = rng.integers(1, 15, n).astype(float)  # few distinct times: ties, events and censorings at one time
    event = rng.random(n) < events  # censoring-heavy
    risk = np.round(rng.normal(size=n), 1)  # ties in risk
    time[(time == time.max()) & ~event] -= 0.5  # G(t) = 0 at an event at the last time: undefined (tested below)
    return time, event, risk


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tau", [None, 9.0])
def test_uno_c_equals_scikit_survival_with_ties_and_heavy_censoring(seed, tau):
    time, event, risk = _data(seed, events=0.2 + 0.1 * (seed % 3))
    y = Surv.from_arrays(event, time)
    theirs = sksurv_metrics.concordance_index_ipcw(y, y, risk, tau=tau)[0]
    assert uno_c(time, event, risk, tau) == pytest.approx(theirs, abs=1e-9)


def test_the_censoring_survival_equals_scikit_survival():
    time, event, _ = _data(11)
    at = np.unique(time)
    theirs = CensoringDistributionEstimator().fit(Surv.from_arrays(event, time)).predict_proba(at)
    np.testing.assert_allclose(censoring_survival(time, event, at), theirs, atol=1e-12)


def test_without_censoring_uno_is_harrell_and_it_differs_under_censoring():
    time, _, risk = _data(3)
    every = np.ones(time.size, dtype=bool)
    assert uno_c(time, every, risk) == pytest.approx(harrell_c(time, every, risk), abs=1e-12)
    time, event, risk = _data(3, events=0.25)
    assert abs(uno_c(time, event, risk) - harrell_c(time, event, risk)) > 1e-4


def test_undefined_cases_are_value_errors_as_the_bootstrap_expects():
    with pytest.raises(ValueError, match="no comparable pair"):
        uno_c([1.0, 2.0], [False, False], [0.1, 0.2])
    last = ([1.0, 2.0, 2.0], [True, True, False], [0.3, 0.2, 0.1])  # the last time: an event and a censoring
    with pytest.raises(ValueError, match="censoring survival is 0"):
        uno_c(*last)
    with pytest.raises(ValueError, match="censoring survival function is zero"):  # undefined for the library too
        sksurv_metrics.concordance_index_ipcw(*(Surv.from_arrays(last[1], last[0]),) * 2, np.array(last[2]))
    time, event, risk = _data(4)
    est = bootstrap_estimate(uno_c, (time, event, risk), n_boot=200, seed=0)
    assert est.low < est.value < est.high


def test_a_survival_run_reports_uno_beside_harrell_with_intervals(small_cohort, tmp_path):
    rows = list(csv.DictReader(open(small_cohort / "cohort.csv", newline="")))
    for row in rows:  # heavy censoring: an event for 2 in 5 specimens, earlier the stronger their signal
        k = int(row["specimen"][1:])
        row |= {"event": str(int(k % 5 in (0, 2))), "time": f"{10 - 4 * int(row['label']) + k % 7 + 0.1 * k:.1f}"}
    with open(tmp_path / "survival.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, [*rows[0]])
        writer.writeheader()
        writer.writerows(rows)
    config = train_config(small_cohort, tmp_path / "run", cohort=str(tmp_path / "survival.csv"), task="survival")
    metrics = run_training(config)
    test = metrics["test"]
    written = TrainRun(tmp_path / "run").read_predictions("test")
    time = np.array([float(r["time"]) for r in written])
    event = np.array([r["event"] == "1" for r in written])
    risk = np.array([float(r["score"]) for r in written])
    assert test["uno_c_index"] == pytest.approx(uno_c(time, event, risk), abs=1e-12)
    assert test["c_index"] == pytest.approx(harrell_c(time, event, risk), abs=1e-12)
    assert test["uno_ci95"][0] <= test["uno_c_index"] <= test["uno_ci95"][1]
    said = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run")])
    assert said.exit_code == 0 and f"test: Uno's C-index {test['uno_c_index']:.3f}" in said.output
