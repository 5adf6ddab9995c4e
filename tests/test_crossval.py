"""Cross-validation: folds that keep specimens and patients apart, fold runs and their summary, the fold ensemble."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from train_runs import train_config
from typer.testing import CliRunner

import mixmag
from mixmag.cli import app
from mixmag.errors import CohortError, ConfigError, RunError
from mixmag.fileio import RunLockedError
from mixmag.metrics import bootstrap_auroc, harrell_c, macro_auroc
from mixmag.runs import CrossValRun
from mixmag.stages import predict as prediction
from mixmag.stages.crossval import run_cross_validation
from mixmag.train.classifier import SlideClassifier
from mixmag.train.crossval import CrossValConfig, fold_table, make_folds, read_units
from mixmag.train.finetune import run_training

FOLDS = 3
runner = CliRunner()


def with_patients(small_cohort: Path, folder: Path) -> Path:
    """A copy of the small cohort's table with a patient column: patient k holds specimens 2k and 2k+1."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(small_cohort / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["patient"] = f"pt{int(row['specimen'][1:]) // 2}"
        row["store"] = str(small_cohort / "stores" / f"{row['slide']}.h5")
    write_rows(folder / "cohort.csv", rows)
    return folder / "cohort.csv"


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, [*rows[0]])
        writer.writeheader()
        writer.writerows(rows)


def table_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("group_by", ["patient", "specimen"])
def test_folds_keep_specimens_and_patients_apart(small_cohort, tmp_path, group_by):
    table = with_patients(small_cohort, tmp_path)
    cv = CrossValConfig(folds=FOLDS, group_by=group_by, seed=1)
    units = read_units(table, "binary", cv)
    folds = make_folds(units, cv)
    patient = {r["specimen"]: r["patient"] for r in table_rows(table)}
    label = {r["specimen"]: r["label"] for r in table_rows(table)}
    tested = [s for f in folds for s in f.splits["test"]]
    assert sorted(tested) == sorted(units.specimens)  # each specimen in exactly one test fold
    if group_by == "patient":
        owners = [{patient[s] for s in f.splits["test"]} for f in folds]
        assert all(a.isdisjoint(b) for i, a in enumerate(owners) for b in owners[i + 1 :])
    for fold in folds:
        train, tune, test = (set(fold.splits[k]) for k in ("train", "tune", "test"))
        assert train | tune | test == set(units.specimens) and not (train & tune or train & test or tune & test)
        if group_by == "patient":  # the tune split is carved by patient too
            assert not {patient[s] for s in tune} & {patient[s] for s in train}
        positives = sum(label[s] == "1" for s in test)
        assert abs(positives - len(test) / 2) <= 1  # 12 of 24 specimens are positive: stratified
        assert {label[s] for s in tune} == {"0", "1"}


def test_folds_are_seeded(small_cohort, tmp_path):
    table = with_patients(small_cohort, tmp_path)
    cv = CrossValConfig(folds=FOLDS)
    units = read_units(table, "binary", cv)
    folds = make_folds(units, cv)
    assert [f.splits for f in make_folds(units, cv)] == [f.splits for f in folds]  # seeded
    other = make_folds(units, CrossValConfig(folds=FOLDS, seed=5))
    assert [f.splits for f in other] != [f.splits for f in folds]


def test_a_class_with_fewer_specimens_than_folds_is_one_sentence(small_cohort, tmp_path):
    rows = table_rows(small_cohort / "cohort.csv")
    positives = sorted({r["specimen"] for r in rows if r["label"] == "1"})[:2]
    kept = [r for r in rows if r["label"] == "0" or r["specimen"] in positives]
    path = tmp_path / "few.csv"
    write_rows(path, kept)
    cv = CrossValConfig(folds=FOLDS)
    with pytest.raises(CohortError, match=r"label '1' has 2 specimen\(s\), fewer than the 3 folds; set cv.folds to 2"):
        make_folds(read_units(path, "binary", cv), cv)
    with pytest.raises(CohortError, match="needs a 'patient' column"):
        read_units(path, "binary", CrossValConfig(group_by="patient"))


def test_bad_patient_columns_are_one_sentence(small_cohort, tmp_path):
    table = with_patients(small_cohort, tmp_path)
    other = "0" if table_rows(table)[1]["label"] == "1" else "1"
    for change, message in [({"patient": ""}, "row 2: empty 'patient'"), ({"label": other}, "two values of 'label'")]:
        rows = table_rows(table)
        rows[0] |= {"specimen": rows[1]["specimen"]} | change
        path = tmp_path / "bad.csv"
        write_rows(path, rows)
        with pytest.raises(CohortError, match=message):
            read_units(path, "binary", CrossValConfig())


def test_fold_tables_add_a_split_and_absolute_stores(small_cohort, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "split"} for r in table_rows(small_cohort / "cohort.csv")]
    path = tmp_path / "cohort.csv"
    stores = os.path.relpath(small_cohort / "stores", tmp_path)  # relative to the table's folder
    write_rows(path, [r | {"store": f"{stores}/{r['slide']}.h5"} for r in rows])
    cv = CrossValConfig(folds=FOLDS)
    units = read_units(path, "binary", cv)
    columns, cells = fold_table(units, make_folds(units, cv)[0])
    assert columns[-1] == "split" and {c[-1] for c in cells} == {"train", "tune", "test"}
    assert all(Path(c[columns.index("store")]).is_file() for c in cells)


@pytest.fixture(scope="module")
def cross_validated(small_cohort, tmp_path_factory) -> tuple[Path, Path, list]:
    """A 3-fold cross-validation of the small cohort grouped by patient (trained once for the tests below)."""
    folder = tmp_path_factory.mktemp("cv")
    table = with_patients(small_cohort, folder / "table")
    config = train_config(small_cohort, folder / "out", cohort=str(table), cv=CrossValConfig(folds=FOLDS))
    events: list = []
    run_cross_validation(config, on_fold=lambda i, m, reused: events.append((i, reused)))
    return folder / "out", table, events


def test_fold_runs_and_summary(cross_validated):
    out, table, events = cross_validated
    assert events == [(i, False) for i in range(FOLDS)]
    summary = json.loads((out / "cv.json").read_text())
    folds = CrossValRun(out)
    tested = {}
    for i in range(FOLDS):
        run = folds.fold(i)
        assert run.is_complete()
        splits = json.loads(run.splits.read_text())
        assert {r["split"] for r in table_rows(folds.fold_table(i))} == {"train", "tune", "test"}
        tested |= {s: i for s in splits["test"]}
    assert len(tested) == 24
    labels, scores = [], []
    for i in range(FOLDS):  # the pooled metric, by hand from the folds' own prediction files
        for row in table_rows(folds.fold(i).predictions("test")):
            labels.append(int(row["label"]))
            scores.append(float(row["score"]))
    ci = bootstrap_auroc(labels, scores, n_boot=100, seed=0)
    assert summary["pooled"] == {"auroc": ci.auroc, "ci95": [ci.low, ci.high], "specimens": 24, "positive": 12}
    tests = [json.loads(folds.fold(i).metrics.read_text())["test"]["auroc"] for i in range(FOLDS)]
    assert summary["mean"] == pytest.approx(np.mean(tests)) and summary["sd"] == pytest.approx(np.std(tests, ddof=1))
    assert summary["grouped_by"] == "patient" and summary["stratified_by"] == "label"
    assert "Pooled out-of-fold AUROC" in (out / "cv.md").read_text()


def test_rerun_reuses_finished_folds(cross_validated, small_cohort):
    out, table, _ = cross_validated
    weights = {i: CrossValRun(out).fold(i).weights.stat().st_mtime_ns for i in range(FOLDS)}
    events: list = []
    config = train_config(small_cohort, out, cohort=str(table), cv=CrossValConfig(folds=FOLDS))
    run_cross_validation(config, on_fold=lambda i, m, reused: events.append((i, reused)))
    assert events == [(i, True) for i in range(FOLDS)]
    assert {i: CrossValRun(out).fold(i).weights.stat().st_mtime_ns for i in range(FOLDS)} == weights


def test_a_rerun_with_other_folds_retrains_them(small_cohort, tmp_path):
    settings = dict(cohort=str(with_patients(small_cohort, tmp_path)), epochs=1)
    splits, events = [], []
    for seed in (0, 1, 1):
        config = train_config(small_cohort, tmp_path / "out", cv=CrossValConfig(folds=2, seed=seed), **settings)
        run_cross_validation(config, on_fold=lambda i, m, reused: events.append(reused))
        splits.append(json.loads(CrossValRun(tmp_path / "out").fold(0).splits.read_text()))
    assert events == [False] * 4 + [True] * 2  # the same folds again are reused, another seed's are not
    assert splits[0] != splits[1] == splits[2]
    config = train_config(small_cohort, tmp_path / "out", cv=CrossValConfig(folds=2, seed=2), **settings)
    with pytest.MonkeyPatch.context() as patch:  # a rerun that dies while replacing the folds leaves no summary
        patch.setattr("mixmag.stages.crossval.run_training", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            run_cross_validation(config)
    assert not CrossValRun(tmp_path / "out").summary.exists()
    with pytest.raises(RunError, match="no cv.json"):
        prediction.load_models(tmp_path / "out")


def test_predict_with_the_fold_ensemble_is_the_mean_of_fold_scores(cross_validated, small_cohort, tmp_path):
    out, _, _ = cross_validated
    slides = ["P000-S0", "P001-S0", "P002-S1"]
    inputs = prediction.read_inputs(slides, None, small_cohort / "stores")
    notes: list[str] = []
    result = prediction.run(out, inputs, tmp_path / "p.csv", tmp_path / "work", heatmaps=False, on_note=notes.append)
    assert result.models == FOLDS and any(f"ensemble of {FOLDS} folds" in n for n in notes)
    stores = {s: small_cohort / "stores" / f"{s}.h5" for s in slides}
    per_fold = []
    for i in range(FOLDS):
        model = SlideClassifier.load(CrossValRun(out).fold(i).folder)
        model.use_stores(stores)
        per_fold.append(model.score(slides))
    rows = {r["slide"]: r for r in table_rows(result.path)}
    for slide in slides:
        expected = np.mean([scores[slide] for scores in per_fold])
        assert float(rows[slide]["slide_score"]) == pytest.approx(expected, abs=2e-6)
        assert rows[slide]["model"] == f"ensemble of {FOLDS} folds"
    assert len({round(scores[slides[0]], 6) for scores in per_fold}) > 1  # the folds' models differ


def test_cli_trains_evaluates_and_predicts_a_cross_validation(cross_validated, small_cohort, tmp_path):
    out, table, _ = cross_validated
    result = runner.invoke(app, ["evaluate", str(out)], catch_exceptions=False)
    assert result.exit_code == 0 and "Pooled out-of-fold AUROC" in result.output and "fold-2" in result.output
    config = tmp_path / "cv.yaml"
    settings = train_config(small_cohort, out, cohort=str(table), cv=CrossValConfig(folds=FOLDS)).model_dump()
    config.write_text(yaml.safe_dump({k: v for k, v in settings.items() if v is not None}))
    result = runner.invoke(app, ["train", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.count("reused (finished before)") == FOLDS and "mean ± sd" in result.output
    assert result.output.count("'split' column is ignored") == 1
    result = runner.invoke(
        app,
        ["predict", "--run", str(out), "--stores", str(small_cohort / "stores"), "P000-S0", "--no-heatmaps"]
        + ["--out", str(tmp_path / "p.csv")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0 and f"ensemble of {FOLDS} folds" in result.output


@pytest.mark.parametrize("task", ["survival", "multiclass"])
def test_other_task_types_cross_validate_with_their_pooled_metric(small_cohort, tmp_path, task):
    rows = table_rows(with_patients(small_cohort, tmp_path))
    for row in rows:
        k = int(row["specimen"][1:])
        if task == "survival":  # an event for labelled specimens, earlier the stronger their signal
            row |= {"event": row["label"], "time": f"{10 - 5 * int(row['label']) + k % 7:.1f}"}
        else:
            row["label"] = "abc"[k % 3]
    write_rows(tmp_path / "task.csv", rows)
    cv = CrossValConfig(folds=FOLDS, tune_fraction=0.34, group_by="specimen")
    config = train_config(small_cohort, tmp_path / "out", cohort=str(tmp_path / "task.csv"), task=task, cv=cv)
    summary = run_cross_validation(config)
    primary = {"survival": "c_index", "multiclass": "macro_auroc"}[task]
    assert summary["primary"] == primary and summary["stratified_by"] == ("event" if task == "survival" else "label")
    truth, scores = [], []
    for i in range(FOLDS):
        for row in table_rows(CrossValRun(tmp_path / "out").fold(i).predictions("test")):
            if task == "survival":
                truth.append((float(row["time"]), int(row["event"])))
                scores.append(float(row["score"]))
            else:
                truth.append("abc".index(row["label"]))
                scores.append([float(row[f"p_{c}"]) for c in "abc"])
    if task == "survival":
        expected = harrell_c(np.array([t for t, _ in truth]), np.array([e for _, e in truth]), np.array(scores))
    else:
        expected = macro_auroc(np.array(truth), np.array(scores))
    assert summary["pooled"][primary] == pytest.approx(expected, abs=1e-5) and summary["pooled"]["specimens"] == 24


def test_the_python_front_door_cross_validates(cross_validated, small_cohort):
    out, table, _ = cross_validated
    config = train_config(small_cohort, out, cohort=str(table), cv=CrossValConfig(folds=FOLDS))
    with pytest.raises(ConfigError, match="this config cross-validates"):
        run_training(config)
    summary = mixmag.train(config)
    assert summary == json.loads((out / "cv.json").read_text()) == mixmag.evaluate(out)
    pages = mixmag.report(out, heatmaps=False)
    assert pages == [CrossValRun(out).fold(i).report for i in range(FOLDS)] and all(p.is_file() for p in pages)


def test_a_fold_is_an_ordinary_run_of_its_table(cross_validated, small_cohort, tmp_path):
    out, table, _ = cross_validated
    fold = CrossValRun(out).fold(0)
    alone = train_config(small_cohort, tmp_path / "alone", cohort=str(CrossValRun(out).fold_table(0)))
    run_training(alone)
    for split in ("tune", "test"):
        assert (tmp_path / "alone" / f"predictions_{split}.csv").read_bytes() == fold.predictions(split).read_bytes()


def test_a_cross_validation_being_written_is_locked(small_cohort, tmp_path):
    config = train_config(small_cohort, tmp_path / "out", cv=CrossValConfig(folds=FOLDS))
    with CrossValRun(tmp_path / "out").lock():
        with pytest.raises(RunLockedError, match="is in use by pid"):
            run_cross_validation(config)
    assert not CrossValRun(tmp_path / "out").fold(0).folder.exists()


def test_predict_with_a_multiclass_fold_ensemble_averages_class_probabilities(small_cohort, tmp_path):
    rows = table_rows(with_patients(small_cohort, tmp_path))
    for row in rows:
        row["label"] = "abc"[int(row["specimen"][1:]) % 3]
    write_rows(tmp_path / "task.csv", rows)
    cv = CrossValConfig(folds=FOLDS, tune_fraction=0.34, group_by="specimen")
    out = tmp_path / "out"
    run_cross_validation(train_config(small_cohort, out, cohort=str(tmp_path / "task.csv"), task="multiclass", cv=cv))
    slides = ["P000-S0", "P001-S0", "P002-S1"]
    notes: list[str] = []
    inputs = prediction.read_inputs(slides, None, small_cohort / "stores")
    result = prediction.run(out, inputs, tmp_path / "p.csv", tmp_path / "work", heatmaps=False, on_note=notes.append)
    assert result.models == FOLDS and any("mean of the folds' class probabilities" in n for n in notes)
    stores = {s: small_cohort / "stores" / f"{s}.h5" for s in slides}
    per_fold = []
    for i in range(FOLDS):
        model = SlideClassifier.load(CrossValRun(out).fold(i).folder)
        model.use_stores(stores)
        per_fold.append(model.outputs(slides))
    written = {r["slide"]: r for r in table_rows(result.path)}
    for slide in slides:
        expected = np.mean([probabilities[slide] for probabilities in per_fold], axis=0)
        got = np.array([float(written[slide][f"p_{c}"]) for c in "abc"])
        np.testing.assert_allclose(got, expected, atol=2e-6)
        assert written[slide]["predicted"] == "abc"[int(np.argmax(expected))]
        assert float(written[slide]["slide_score"]) == pytest.approx(expected.max(), abs=2e-6)
        assert written[slide]["model"] == f"ensemble of {FOLDS} folds"
    assert any(  # the folds' models differ, so the mean is not any one fold's
        not np.allclose(per_fold[0][s], per_fold[1][s], atol=1e-4) for s in slides
    )


def test_an_experiment_grid_cross_validates_every_cell_and_states_its_statistics(small_cohort, tmp_path):
    """`mixmag experiment` with `cv:` and `n_boot` (the README's study): each cell a cross-validated folder whose value
    is its pooled out-of-fold C-index, and statistics.md holds that value, its CI, p and q (read from the folds)."""
    from mixmag.studies.experiments import GridConfig, Task, run_grid
    from mixmag.studies.grid_statistics import write_grid_statistics

    rows = table_rows(with_patients(small_cohort, tmp_path))
    for row in rows:
        k = int(row["specimen"][1:])
        row |= {"event": str(int(k % 4 != 0)), "time": f"{10 - 5 * int(row['label']) + k % 7:.1f}"}
    write_rows(tmp_path / "survival.csv", rows)
    task = Task(name="os", cohort=str(tmp_path / "survival.csv"), stores=str(small_cohort / "stores"), type="survival")
    grid = GridConfig(
        out=str(tmp_path / "grid"),
        tasks=[task],
        methods=["abmil-20x", "abmil-all"],
        cv={"folds": FOLDS, "tune_fraction": 0.34, "group_by": "specimen"},
        n_boot=200,
        train={"epochs": 2, "batch_size": 8, "lr": 5e-3, "bootstrap": 100},
    )
    results = run_grid(grid)
    text = write_grid_statistics(grid).read_text()
    assert "pooled out of 3 folds" in text and "specimens (os 24)" in text
    table = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    for method in grid.methods:
        folder = CrossValRun(tmp_path / "grid" / "os" / method / "seed0")
        assert results["os"][method] == [json.loads(folder.summary.read_text())["pooled"]["c_index"]]
        pooled = [row for i in range(FOLDS) for row in table_rows(folder.fold(i).predictions("test"))]
        assert len(pooled) == 24  # every specimen once, from the fold that tested it
        c = harrell_c(*(np.array([float(r[k]) for r in pooled]) for k in ("time", "event", "score")))
        assert table[method].split(" | ")[1].startswith(f"{c:.3f} [")
    assert "; p=" in table["abmil-all"] and ", q=" in table["abmil-all"] and "; p=" not in table["abmil-20x"]
