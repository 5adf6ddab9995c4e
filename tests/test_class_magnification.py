"""The multiclass report's "Which magnification mattered" panel (issue 24 item 6): per predicted class, each level's
share of the drop of that class's logit when the level is mean-replaced (and of the attention), over the test slides
of the specimens predicted as it; escaped where rendered, and not drawn while the macro AUROC's CI reaches chance."""

from __future__ import annotations

import html

import numpy as np
from train_runs import train_config

from mixmag.eval.attribution import ATTENTION, OCCLUSION, LevelImportance
from mixmag.report import magnification
from mixmag.report.html import build_report
from mixmag.report.magnification import class_slides, class_table, outcome_magnification_section
from mixmag.runs import TrainRun
from mixmag.synth.benchmark import OutcomeSpec, write_outcome_cohort
from mixmag.train.finetune import run_training


def test_a_multiclass_report_shows_each_predicted_class_s_magnification_shares(tmp_path):
    table = write_outcome_cohort(tmp_path, OutcomeSpec("multiclass", n_specimens=60))
    settings = dict(cohort=str(table), bags="all", task="multiclass", epochs=6, batch_size=16, lr=1e-2)
    metrics = run_training(train_config(tmp_path, tmp_path / "run", **settings))
    page = html.unescape(build_report(tmp_path / "run").read_text())
    assert "<h2>Which magnification mattered</h2>" in page and "Not drawn" not in page
    if metrics["test"]["ci95"][0] <= 0.5:
        assert "has not shown it learnt the task" in page
    saved = TrainRun(tmp_path / "run").read_config()
    record = TrainRun(tmp_path / "run").read_metrics_record()
    unlearnt = record.model_copy(update={"test": record.test.model_copy(update={"ci95": [0.4, 0.7]})})
    assert "the test macro_auroc's 95% CI reaches 0.5" in " ".join(
        outcome_magnification_section(tmp_path / "run", saved, unlearnt)
    )
    learnt = record.model_copy(update={"test": record.test.model_copy(update={"ci95": [0.6, 0.9]})})
    said = " ".join(outcome_magnification_section(tmp_path / "run", saved, learnt))  # the panel's code path
    assert "<th>predicted class</th>" in said and "Not computed" not in said
    rows = TrainRun(tmp_path / "run").read_task_rows("test")
    predicted = {r.predicted for r in rows}
    for name in predicted:  # one row per predicted class and measure, levels as columns
        assert f"<tr><td>{name}</td>" in said
    assert f"<td>{OCCLUSION}</td>" in said and f"<td>{ATTENTION}</td>" in said
    assert all(len(slides) <= magnification.PER_CLASS_SLIDES for slides in class_slides(rows).values())
    assert set(class_slides(rows)) == predicted


def test_the_per_class_panel_escapes_class_and_level_names_and_its_shares_are_the_means(tmp_path, monkeypatch):
    name = "<img src=x onerror=alert(1)>&"
    levels = ["5x", "<b>20x</b>"]
    slides = [
        LevelImportance("s1", 0.0, levels, {OCCLUSION: np.array([3.0, 1.0])}),
        LevelImportance("s2", 0.0, levels, {OCCLUSION: np.array([1.0, 1.0])}),
    ]
    monkeypatch.setattr(magnification, "class_importances", lambda run, by_class: ({name: slides}, "reference: x"))
    row = type("Row", (), {"predicted": name, "probabilities": {name: 0.9}, "slides": ("s1", "s2")})()
    page = "".join(class_table(tmp_path, [row]))
    assert name not in page and "<b>20x</b>" not in page
    assert html.escape(name) in page and html.escape("<b>20x</b>") in page
    assert "<td>62% (" in page and "<td>38% (" in page  # mean of (75%, 25%) and (50%, 50%)
