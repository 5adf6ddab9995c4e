"""The README's cross-validated survival study, as a new user runs it: a synthetic outcome cohort from the command
line, 3-fold cross-validation, and new slides scored with the fold ensemble (risk groups against the folds' tune
median)."""

from __future__ import annotations

import csv

from typer.testing import CliRunner

from mixmag.cli import app


def _run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_cross_validated_survival_study_scores_new_slides_with_the_fold_ensemble(tmp_path):
    _run("synth", "outcomes", tmp_path / "study", "--task", "survival", "--scale", "20x", "--specimens", 60)
    config = tmp_path / "survival.yaml"
    config.write_text(
        f"cohort: {tmp_path / 'study' / 'survival-20x.csv'}\nstores: {tmp_path / 'study' / 'stores'}\n"
        f"out: {tmp_path / 'run'}\ntask: survival\nbags: 20x\nepochs: 3\nbatch_size: 16\nlr: 5.0e-3\ncv:\n  folds: 3\n"
    )
    said = _run("train", "--config", config)
    assert "Pooled out-of-fold C-index" in said
    out = tmp_path / "p.csv"
    slides = ["survival-20x-P0000-S0", "survival-20x-P0001-S0"]
    said = _run("predict", "--run", tmp_path / "run", "--stores", tmp_path / "study" / "stores", *slides,
                "--out", out, "--no-heatmaps")  # fmt: skip
    assert "ensemble of 3 folds" in said
    rows = list(csv.DictReader(out.open()))
    assert [r["slide"] for r in rows] == slides and {r["risk_group"] for r in rows} <= {"high", "low"}


def test_synth_outcomes_refuses_an_unknown_task_in_one_sentence(tmp_path):
    result = CliRunner().invoke(app, ["synth", "outcomes", str(tmp_path), "--task", "hazard"])
    assert result.exit_code == 2 and "use a task of survival, multiclass, regression" in result.output
