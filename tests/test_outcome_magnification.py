"""The outcome report's "Which magnification mattered" panel (issue 24 item 6): a survival run on all levels, where
the hazard's biomarker sits at 20x, is explained over the high-risk group's test slides; a run that has not shown it
learnt the task, a one-level run and a binary run (which has its own) say why no panel is drawn."""

from __future__ import annotations

import html

from mixmag.report.html import build_report
from mixmag.report.magnification import outcome_magnification_section
from mixmag.runs import TrainRun
from mixmag.synth.benchmark import OutcomeSpec, write_outcome_cohort
from mixmag.train.finetune import TrainConfig, run_training


def test_a_survival_report_says_which_magnification_raised_the_risk(tmp_path):
    table = write_outcome_cohort(tmp_path, OutcomeSpec("survival", scale="20x", n_specimens=120))
    config = TrainConfig(
        cohort=str(table), stores=str(tmp_path / "stores"), out=str(tmp_path / "run"), bags="all",
        task="survival", epochs=12, batch_size=32, lr=1e-2, bootstrap=100,
    )  # fmt: skip
    metrics = run_training(config)
    page = html.unescape(build_report(tmp_path / "run").read_text())
    assert "<h2>Which magnification mattered</h2>" in page and "Not computed" not in page
    if metrics["test"]["ci95"][0] > 0.5:  # learnt: the panel over the high-risk slides
        assert "test slides of the high-risk group" in page and "level occlusion" in page.lower()
    else:
        assert "has not shown it learnt the task" in page
    saved = TrainRun(tmp_path / "run").read_config()
    record = TrainRun(tmp_path / "run").read_metrics_record()
    unlearnt = record.model_copy(update={"test": record.test.model_copy(update={"ci95": [0.45, 0.7]})})
    said = " ".join(outcome_magnification_section(tmp_path / "run", saved, unlearnt))
    assert "the test c_index's 95% CI reaches 0.5 (chance)" in said
    said = " ".join(outcome_magnification_section(tmp_path / "run", saved | {"bags": "20x"}, unlearnt))
    assert "reads one magnification only" in said
    # this small run does not learn the hazard on all levels (C-index about 0.52): the panel itself, as if it had
    shown_learnt = record.model_copy(update={"test": record.test.model_copy(update={"ci95": [0.6, 0.8]})})
    said = " ".join(outcome_magnification_section(tmp_path / "run", saved, shown_learnt))  # the panel's code path
    assert "test slides of the high-risk group" in said and "level occlusion" in said.lower()
    assert "Not computed" not in said and "<table>" in said
    binary = record.model_copy(update={"task": "binary"})  # binary runs have their own panel (magnification_section)
    said = " ".join(outcome_magnification_section(tmp_path / "run", saved, binary))
    assert "Not drawn for binary runs" in said
