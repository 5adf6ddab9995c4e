import base64
import csv
import json
import re
from pathlib import Path

import pytest
from train_runs import train_config

from mixmag.report.html import build_report
from mixmag.synth.embedding_cohort import write_embedding_cohort
from mixmag.train.finetune import run_training

HOSTILE = 'P<b>&"x'


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    table = write_embedding_cohort(d, n_specimens=30, seed=5, signal=2.5)
    rows = list(csv.DictReader(open(table)))
    first_test = next(r["specimen"] for r in rows if r["split"] == "test")
    for r in rows:
        if r["specimen"] == first_test:
            r["specimen"] = HOSTILE
    with table.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run_training(train_config(d, d / "run", epochs=3))  # the table: d/cohort.csv
    return d / "run"


def test_report_is_self_contained_and_escaped(run_dir):
    path = build_report(run_dir, {"tile": 1.5, "embed": 12.0})
    text = path.read_text()
    assert "P&lt;b&gt;&amp;&quot;x" in text and HOSTILE not in text
    sources = re.findall(r"src='([^']*)'", text)
    assert len(sources) >= 2
    for s in sources:
        head, data = s.split(",", 1)
        raw = base64.b64decode(data)
        assert head in ("data:image/png;base64", "data:image/svg+xml;base64", "data:image/jpeg;base64"), head
        assert (
            raw[:8] == b"\x89PNG\r\n\x1a\n"
            if "png" in head
            else raw[:2] == b"\xff\xd8"
            if "jpeg" in head
            else b"<svg" in raw[:2000]
        )
    assert any("svg" in s[:30] for s in sources)  # line plots are vector graphics
    assert "http://" not in text and "https://" not in text
    assert "ROC curves" in text and "95% CI" in text and "Stage timings" in text
    assert "Heatmaps not drawn" in text and "names no slide file" in text  # stores without slides: said, not hidden


def test_report_renders_in_headless_chromium(run_dir, chromium):
    import cv2

    shot, console_errors, images, broken = chromium(build_report(run_dir))
    assert not console_errors, console_errors
    assert images >= 2 and broken == 0
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.std() > 10  # not a blank page
    # the probe does see a picture that does not load
    bad = run_dir.parent / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><h1>x</h1><img alt='x' src='data:image/png;base64,AAAA'></body></html>")
    assert chromium(bad)[2:] == (1, 1)


def test_predict_on_new_stores_equals_the_evaluation_path(run_dir, tmp_path):
    from typer.testing import CliRunner

    from mixmag.cli import app

    config = json.loads((run_dir / "config.json").read_text())
    stores = Path(config["stores"])
    rows = list(csv.DictReader(open(run_dir / "predictions_test.csv")))
    slides = [s for r in rows for s in r["slides"].split(";")]
    expected = {s: float(v) for r in rows for s, v in zip(r["slides"].split(";"), r["slide_scores"].split(";"))}
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(
        app, ["predict", "--run", str(run_dir), "--stores", str(stores), "--out", str(out), *slides]
    )
    assert result.exit_code == 0, result.output
    got = {r["slide"]: float(r["slide_score"]) for r in csv.DictReader(open(out))}
    assert got.keys() == expected.keys()
    for s in slides:
        assert got[s] == pytest.approx(expected[s], abs=1e-5)


def test_predict_refuses_stores_made_differently(run_dir, tmp_path):
    from mixmag.errors import RunMismatchError
    from mixmag.store import write_store
    from mixmag.synth.stores import synthetic_store
    from mixmag.train.classifier import SlideClassifier

    other = synthetic_store("other", dim=16, projection_seed=99)  # another "encoder"
    path = write_store(tmp_path / "other.h5", other)
    classifier = SlideClassifier.load(run_dir)
    with pytest.raises(RunMismatchError, match="encoder_weights_digest"):
        classifier.use_stores({"other": path})
