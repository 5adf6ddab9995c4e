"""Run folders as artifacts (`mixmag.runs`), the trained model apart from its loop (`SlideClassifier`), and the one
error boundary of the command line."""

import pytest
import torch
from train_runs import train_config
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.errors import PlanError, RunError
from mixmag.fileio import FolderLock, RunLockedError
from mixmag.runs import RUN_FORMAT_VERSION, TrainRun
from mixmag.slides.tiling import load_plan
from mixmag.train.classifier import SlideClassifier
from mixmag.train.finetune import run_training


@pytest.fixture(scope="module")
def run(small_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    run_training(train_config(small_cohort, out))
    return TrainRun(out)


def test_a_training_run_folder_is_complete_and_records_its_format(run):
    assert run.is_complete() and run.missing() == []
    assert run.read_pipeline()["run_format"] == RUN_FORMAT_VERSION
    assert set(run.read_splits()) == {"train", "tune", "test"}
    assert not list(run.folder.glob(".*partial*"))  # every file went through an atomic write
    run.metrics.rename(run.folder / "metrics.moved")
    try:
        assert not run.is_complete() and run.missing() == ["metrics.json"]
        result = CliRunner().invoke(app, ["report", str(run.folder)])
        assert result.exit_code == 2 and "not a complete `mixmag train` run folder (no metrics.json)" in result.output
        assert "Traceback" not in result.output
    finally:
        (run.folder / "metrics.moved").rename(run.metrics)


def test_training_refuses_a_run_folder_another_process_writes(small_cohort, tmp_path):
    with FolderLock(tmp_path / "busy", "another training"):
        with pytest.raises(RunLockedError, match="in use by pid .*another training"):
            run_training(train_config(small_cohort, tmp_path / "busy"))
    assert not (tmp_path / "busy" / "best.pt").exists()


def test_a_classifier_loads_and_scores_without_a_training_loop(run, small_cohort):
    """The loaded model gives the run's own test scores; loading neither seeds nor draws from the random generator
    (the training loop seeds it: prediction must not)."""
    rows = run.read_predictions("test")
    expected = {s: float(v) for r in rows for s, v in zip(r["slides"].split(";"), r["slide_scores"].split(";"))}
    state = torch.random.get_rng_state()
    classifier = SlideClassifier.load(run.folder)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not classifier.model.training and classifier.bag_kind == "20x"
    classifier.use_stores({s: small_cohort / "stores" / f"{s}.h5" for s in expected})
    got = classifier.score(list(expected))
    assert got == pytest.approx(expected, abs=1e-5)


def test_a_run_without_its_files_is_one_sentence(tmp_path):
    with pytest.raises(RunError, match="no config.json; is it a finished `mixmag train` run folder"):
        SlideClassifier.load(tmp_path)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "no config.json" in result.output and "Traceback" not in result.output


def test_a_corrupt_plan_is_one_sentence_in_embed(tmp_path):
    """`mixmag embed` reads plans outside any command's own error handling: a damaged plan fails its slide in one
    sentence (a `PlanError`, a `MixmagError`), never a traceback."""
    (tmp_path / "tiles" / "s1").mkdir(parents=True)
    (tmp_path / "tiles" / "s1" / "plan.json").write_text('{"format_version": 1, "slide": ')
    with pytest.raises(PlanError, match="plan.json: not a valid mixmag tiling plan"):
        load_plan(tmp_path / "tiles" / "s1" / "plan.json")
    result = CliRunner().invoke(
        app,
        [
            "embed",
            "--plans",
            str(tmp_path / "tiles"),
            "--out",
            str(tmp_path / "stores"),
            "--encoder",
            "stats",
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code in (1, 2), result.output
    assert "plan.json: not a valid mixmag tiling plan" in result.output and "re-run `mixmag tile`" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
