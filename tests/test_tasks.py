"""Task types (issue 24): the Cox loss against a slow reference, each type's specimen rule, label validation naming
the rows, and synthetic tasks whose answer is known (the biomarker's scale) learnt by AB-MIL at that scale only."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.data.cohort import Specimen, load_cohort
from mixmag.errors import CohortError
from mixmag.eval.runs import compare_task_runs, evaluate_run
from mixmag.report.html import build_report
from mixmag.runs import TrainRun
from mixmag.studies.benchmark import BenchmarkConfig, run_benchmark
from mixmag.studies.benchmark_stats import cell_statistics, with_false_discovery_rate
from mixmag.studies.experiments import GridConfig, Task, method_config
from mixmag.synth.benchmark import OutcomeSpec, write_outcome_cohort
from mixmag.train.classifier import SlideClassifier
from mixmag.train.finetune import TrainConfig, run_training
from mixmag.train.tasks import MulticlassTask, RegressionTask, SurvivalTask, cox_partial_likelihood, task_for


def slow_cox(risk, time, event) -> float:
    """The negative Cox partial log-likelihood with Breslow ties, by its definition: a loop over events and their
    risk sets, averaged over the events."""
    total, events = 0.0, 0
    for i in range(len(risk)):
        if event[i]:
            denominator = sum(math.exp(risk[j]) for j in range(len(risk)) if time[j] >= time[i])
            total += risk[i] - math.log(denominator)
            events += 1
    return -total / max(events, 1)


@pytest.mark.parametrize("seed", range(4))
def test_cox_loss_equals_the_slow_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 40
    risk = rng.normal(size=n)
    time = rng.integers(1, 8, n).astype(float)  # many tied times
    event = (rng.random(n) < 0.6).astype(float)
    ours = cox_partial_likelihood(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert float(ours) == pytest.approx(slow_cox(risk, time, event), abs=1e-6)


def test_cox_loss_without_events_is_zero_and_rewards_ranking_early_events_high():
    time, event = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 0.0])
    assert float(cox_partial_likelihood(torch.zeros(3), time, torch.zeros(3))) == 0.0
    right = cox_partial_likelihood(torch.tensor([2.0, 1.0, 0.0]), time, event)
    wrong = cox_partial_likelihood(torch.tensor([0.0, 1.0, 2.0]), time, event)
    assert right < wrong


def _two_slide_batch():
    """Specimen A (2 slides) and B (1 slide): slide logits and their owners."""
    specimens = [Specimen("A", 1, "train", ("a1", "a2"), time=1.0, target=2.0), Specimen("B", 0, "train", ("b1",), 3.0)]
    owner = torch.tensor([0, 0, 1])
    return specimens, owner


def test_survival_specimen_risk_is_the_mean_of_its_slides():
    specimens, owner = _two_slide_batch()
    logits = torch.tensor([0.4, 1.6, -0.3], requires_grad=True)
    loss = SurvivalTask().loss(logits, owner, specimens, smoothing=0.1)
    mean_risk = torch.tensor([1.0, -0.3])
    expected = cox_partial_likelihood(mean_risk, torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.0]))
    assert float(loss.detach()) == pytest.approx(float(expected), abs=1e-7)
    loss.backward()
    assert logits.grad[0] == pytest.approx(float(logits.grad[1]))  # both slides share the specimen's gradient


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_multiclass_and_regression_keep_eq9_the_easiest_slide_alone_learns(task):
    specimens, owner = _two_slide_batch()
    if task == "multiclass":
        kind = MulticlassTask()
        kind.classes = ("x", "y")
        logits = torch.tensor([[0.0, 3.0], [2.0, -1.0], [0.5, 0.0]], requires_grad=True)  # a1 is right about A (y)
    else:
        kind = RegressionTask(pipeline={"target_mean": 0.0, "target_std": 1.0})
        logits = torch.tensor([1.9, -4.0, 0.2], requires_grad=True)  # a1 is closest to A's target 2.0
    kind.loss(logits, owner, specimens, smoothing=0.0).backward()
    assert torch.count_nonzero(logits.grad[1]) == 0  # the other slide of A receives nothing
    assert torch.count_nonzero(logits.grad[0]) > 0


# -- label validation: one sentence naming the table, the row and the fix -------------------------------------------


def _table(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


SURVIVAL = ["specimen", "slide", "time", "event", "split"]


def _survival_rows():
    return [[f"P{k}", f"S{k}", str(1 + k), str(k % 2), ("train", "tune", "test")[k % 3]] for k in range(12)]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (2, "-3", "row 3: time '-3' is not a positive number"),
        (2, "", "row 3: empty 'time'"),
        (2, "nan", "row 3: time 'nan' is not a positive number"),
        (3, "2", "row 3: event '2' is not 0 \\(censored\\) or 1 \\(event\\)"),
    ],
)
def test_survival_labels_are_checked_naming_the_row(tmp_path, column, value, message):
    rows = _survival_rows()
    rows[1][column] = value
    table = _table(tmp_path / "surv.csv", SURVIVAL, rows)
    with pytest.raises(CohortError, match=message) as info:
        load_cohort(table, task="survival", require_stores=False)
    assert "surv.csv" in str(info.value)


def test_a_survival_split_without_events_and_too_few_events_for_folds(tmp_path):
    rows = _survival_rows()
    for row in rows:
        row[3] = "0" if row[4] == "test" else row[3]
    with pytest.raises(CohortError, match="the test split has no event"):
        load_cohort(_table(tmp_path / "s.csv", SURVIVAL, rows), task="survival", require_stores=False)
    cohort = load_cohort(_table(tmp_path / "ok.csv", SURVIVAL, _survival_rows()), task="survival", require_stores=False)
    cohort.check_folds(5)
    with pytest.raises(CohortError, match="6 specimen\\(s\\), fewer than the 8 folds"):
        cohort.check_folds(8)


def test_regression_targets_and_multiclass_classes_are_checked(tmp_path):
    rows = [[f"P{k}", f"S{k}", str(k * 0.5), ("train", "tune", "test")[k % 3]] for k in range(9)]
    rows[4][2] = "NaN"
    with pytest.raises(CohortError, match="row 6: target 'NaN' is not a finite number"):
        load_cohort(_table(tmp_path / "r.csv", ["specimen", "slide", "target", "split"], rows), task="regression")
    names = ["a", "b", "c"]
    rows = [[f"P{k}", f"S{k}", names[k % 3], ("train", "tune", "test")[(k // 3) % 3]] for k in range(18)]
    table = _table(tmp_path / "m.csv", ["specimen", "slide", "label", "split"], rows)
    cohort = load_cohort(table, task="multiclass", require_stores=False)
    assert cohort.classes == ("a", "b", "c") and [s.label for s in cohort.specimens.values()][:3] == [0, 1, 2]
    with pytest.raises(CohortError, match="row 2: class 'a' is not among the config's classes \\(b, c\\)"):
        load_cohort(table, task="multiclass", classes=["b", "c"], require_stores=False)
    with pytest.raises(CohortError, match="class 'a': 6 specimen\\(s\\), fewer than the 10 folds"):
        cohort.check_folds(10)
    rows = [r for r in rows if not (r[2] == "c" and r[3] == "tune")]
    with pytest.raises(CohortError, match="the tune split has no specimen of class 'c'"):
        load_cohort(_table(tmp_path / "m2.csv", ["specimen", "slide", "label", "split"], rows), task="multiclass")


# -- synthetic tasks with known answers ------------------------------------------------------------------------------


def _train(table: Path, out: Path, bags: str, task: str, **settings) -> dict:
    config = TrainConfig(
        cohort=str(table),
        stores=str(table.parent / "stores"),
        out=str(out),
        bags=bags,
        task=task,
        epochs=12,
        batch_size=32,
        lr=1e-2,
        bootstrap=100,
        **settings,
    )
    return run_training(config)


def test_survival_biomarker_at_20x_is_found_at_20x_and_not_at_5x(tmp_path):
    table = write_outcome_cohort(tmp_path, OutcomeSpec("survival", scale="20x", n_specimens=200))
    at_20x = _train(table, tmp_path / "run20", "20x", "survival")
    at_5x = _train(table, tmp_path / "run5", "5x", "survival")
    assert at_20x["primary"] == "c_index"
    assert at_20x["test"]["c_index"] > 0.65 and at_20x["test"]["ci95"][0] > 0.55
    assert at_5x["test"]["c_index"] < 0.62 and at_5x["test"]["ci95"][0] < 0.5
    assert at_20x["test"]["logrank_p"] < 0.01  # the risk groups split at the tune median differ
    run = TrainRun(tmp_path / "run20")
    assert run.read_metrics()["test"]["events"] == at_20x["test"]["events"] > 0
    rows = run.read_predictions("test")  # read back and scored again: the run's own C-index (as crossval pools them)
    task = task_for("survival", pipeline=run.read_pipeline())
    assert task.pooled(rows, n_boot=100, seed=0)["c_index"] == pytest.approx(at_20x["test"]["c_index"], abs=1e-12)
    assert {r["risk_group"] for r in rows} == {"high", "low"}
    assert evaluate_run(tmp_path / "run20")["test"]["c_index"] == pytest.approx(at_20x["test"]["c_index"], abs=1e-12)
    paired = compare_task_runs(tmp_path / "run20", tmp_path / "run5", n_boot=200)  # `mixmag compare`
    assert paired.metric == "c_index" and paired.paired.difference > 0
    assert paired.paired.difference == pytest.approx(at_20x["test"]["c_index"] - at_5x["test"]["c_index"], abs=1e-12)
    runs = {"abmil-20x": [tmp_path / "run20"], "abmil-5x": [tmp_path / "run5"]}  # the benchmark's cells, one seed
    cells = with_false_discovery_rate(cell_statistics("survival", runs, "abmil-5x", n_boot=200))
    cell = next(c for c in cells if c.method == "abmil-20x")
    assert cell.mean == pytest.approx(at_20x["test"]["c_index"]) and cell.low <= cell.mean <= cell.high
    assert cell.difference == pytest.approx(paired.paired.difference) and cell.q_vs_baseline == cell.p_vs_baseline
    grid = GridConfig(
        out=str(tmp_path / "grid"),
        tasks=[Task(name="surv", cohort=str(table), stores=str(tmp_path / "stores"), type="survival")],
        methods=["abmil-20x"],
    )
    assert method_config(grid, grid.tasks[0], "abmil-20x", 0).task == "survival"  # `mixmag experiment` task types
    page = build_report(tmp_path / "run20").read_text()  # Kaplan-Meier curves per split, the risk groups listed
    assert "alt='survival tune'" in page and "alt='survival test'" in page and "<th>risk_group</th>" in page


def test_multiclass_one_class_per_scale_and_the_reloaded_model_gives_the_same_probabilities(tmp_path):
    table = write_outcome_cohort(tmp_path, OutcomeSpec("multiclass", n_specimens=150))
    only_20x = _train(table, tmp_path / "run20", "20x", "multiclass")
    every_level = _train(table, tmp_path / "runall", "all", "multiclass")
    per_class = only_20x["test"]["per_class_auroc"]
    assert per_class["20x"] > 0.9 and per_class["5x"] < 0.8 and per_class["10x"] < 0.8  # 20x tiles tell 20x only
    assert every_level["test"]["macro_auroc"] > 0.95 > only_20x["test"]["macro_auroc"]
    assert np.asarray(every_level["test"]["confusion"]).sum() == every_level["test"]["specimens"]
    classifier = SlideClassifier.load(tmp_path / "runall")
    classifier.use_stores(load_cohort(table, task="multiclass").stores)
    with open(tmp_path / "runall" / "predictions_test.csv") as fh:
        row = next(csv.DictReader(fh))
    probs = classifier.outputs([row["slides"]])[row["slides"]]
    assert [float(row[f"p_{c}"]) for c in ("10x", "20x", "5x")] == pytest.approx(probs, abs=1e-6)
    run = TrainRun(tmp_path / "runall")
    pooled = classifier.task.pooled(run.read_predictions("test"), n_boot=100, seed=0)
    assert pooled["macro_auroc"] == pytest.approx(every_level["test"]["macro_auroc"], abs=1e-12)
    new = tmp_path / "new.csv"  # `mixmag predict` on new stores: class probabilities and the predicted class
    with open(tmp_path / "runall" / "predictions_test.csv") as fh:
        expected = {r["slides"]: r["predicted"] for r in list(csv.DictReader(fh))[:4]}  # the run's own test calls
    new.write_text("slide\n" + "".join(f"{slide}\n" for slide in expected))
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--run",
            str(tmp_path / "runall"),
            "--cohort",
            str(new),
            "--stores",
            str(tmp_path / "stores"),
            "--out",
            str(tmp_path / "pred.csv"),
            "--no-heatmaps",
        ],
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "pred.csv") as fh:
        predicted = list(csv.DictReader(fh))
    assert {r["slide"]: r["predicted"] for r in predicted} == expected
    assert all(abs(sum(float(r[f"p_{c}"]) for c in ("10x", "20x", "5x")) - 1) < 1e-5 for r in predicted)


def test_regression_target_proportional_to_strength_is_predicted_in_its_units(tmp_path):
    table = write_outcome_cohort(tmp_path, OutcomeSpec("regression", scale="20x", n_specimens=150))
    metrics = _train(table, tmp_path / "run", "20x", "regression")
    assert metrics["test"]["spearman"] > 0.8 and metrics["test"]["mae"] < 2.5  # targets span 0..10
    classifier = SlideClassifier.load(tmp_path / "run")  # the target's scale travels in pipeline.json
    classifier.use_stores(load_cohort(table, task="regression").stores)
    with open(tmp_path / "run" / "predictions_test.csv") as fh:
        row = next(csv.DictReader(fh))
    assert classifier.score([row["slides"]])[row["slides"]] == pytest.approx(float(row["score"]), abs=1e-5)
    page = build_report(tmp_path / "run").read_text()  # predicted against true, the metrics with their intervals
    assert "alt='regression test'" in page and "<th>spearman</th>" in page and "pearson_ci95" in page


def test_the_benchmark_runs_survival_and_multiclass_tasks_with_cis_and_q_values(tmp_path):
    config = BenchmarkConfig(
        out=str(tmp_path / "b"),
        tasks=[],
        outcome_tasks=["survival-20x", "multiclass"],
        outcome_cohort={"n_specimens": 150},
        methods=["abmil-20x", "abmil-all"],
        seeds=[0],
        train={"epochs": 12, "batch_size": 32, "lr": 0.01, "bootstrap": 100},
        pairs=[("abmil-all", "abmil-20x")],
        n_boot=100,
    )
    result = run_benchmark(config)
    cells = {(c.task, c.method): c for c in result["cells"]}
    assert cells["survival-20x", "abmil-20x"].mean > 0.65  # a C-index: the 20x biomarker is found at 20x
    multiclass = cells["multiclass", "abmil-all"]
    assert multiclass.mean > 0.95 > cells["multiclass", "abmil-20x"].mean  # every scale's class needs every level
    assert multiclass.q_vs_baseline is not None and multiclass.p_vs_baseline < 0.05
    text = (tmp_path / "b" / "benchmark.md").read_text()
    assert "survival-20x: C-index" in text and "| multiclass | abmil-all | abmil-20x |" in text
