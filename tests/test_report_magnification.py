"""The report names task, method and seed, counts every split (train included), and says which magnification
mattered, leading with a measure that acts on the score."""

import json
import re
from pathlib import Path

from train_runs import learnt_task_config

from mixmag.eval.attribution import LEARNT_AUROC
from mixmag.report.html import build_report
from mixmag.report.magnification import magnification_section, not_learnt_caveat
from mixmag.train.finetune import run_training


def test_report_title_splits_and_magnification_panel(tmp_path):
    run = tmp_path / "grid" / "coarse" / "abmil-all" / "seed0"
    run_training(learnt_task_config(tmp_path, "coarse", run))
    page = build_report(run, heatmaps=True).read_text()
    assert "<title>mixmag report: task coarse, method abmil-all, seed 0</title>" in page
    train_row = re.search(r"<tr><td>train</td><td>(\d+)</td><td>(\d+)</td><td>(\d+)</td></tr>", page)
    assert train_row and train_row.groups() == ("40", "20", "40")
    assert "<h2>Which magnification mattered</h2>" in page
    assert "changes the score most for <b>5x</b> (its CI lies above the others')" in page
    assert "AB-MIL attention puts most weight on 20x" in page  # on this model attention follows the token counts
    assert "<th>predicted class</th>" not in page  # the per-class table is the multiclass report's


def test_a_model_at_chance_gets_a_caveat_instead_of_a_magnification_conclusion(tmp_path):
    """Issue 30: the panel spoke for a model with test AUROC 0.552; below LEARNT_AUROC (the benchmark's n/a rule) the
    report says why it draws no conclusion."""
    run = tmp_path / "run"
    run_training(learnt_task_config(tmp_path, "coarse", run, epochs=1))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"]["auroc"] = 0.552
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = build_report(run, heatmaps=True).read_text()
    panel = page.split("<h2>Which magnification mattered</h2>", 1)[1].split("<h2>", 1)[0]
    assert "No conclusion about magnifications: its test AUROC is 0.552, below 0.7" in panel
    assert "changes the score most" not in panel and "<table>" not in panel
    assert "Read these maps with care" in page


def test_the_caveat_uses_the_benchmark_threshold_and_falls_back_to_tune():
    assert LEARNT_AUROC == 0.7
    assert not_learnt_caveat({"test": {"auroc": 0.7}, "tune": {"auroc": 0.1}}) is None
    assert "test AUROC is 0.699" in not_learnt_caveat({"test": {"auroc": 0.699}})
    assert "tune AUROC is 0.550" in not_learnt_caveat({"test": {"auroc": float("nan")}, "tune": {"auroc": 0.55}})
    assert "undefined" in not_learnt_caveat({"test": {"auroc": float("nan")}})
    section = "".join(magnification_section(Path("nowhere"), {"bags": "all"}, [], {"test": {"auroc": 0.552}}))
    assert "No conclusion about magnifications" in section


def test_predict_gives_each_level_its_occlusion_share_and_finds_the_scale_attention_misses(tmp_path):
    """Issue 25 §6: users' new slides get the measure proven on known answers. On the coarse task (signal at 5x) the
    all-levels AB-MIL's attention leans to 20x (it follows the token counts), occlusion finds 5x."""
    import csv

    import numpy as np
    from typer.testing import CliRunner

    from mixmag.cli import app

    run = tmp_path / "run"
    cfg = learnt_task_config(tmp_path, "coarse", run)
    run_training(cfg)
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(app, ["predict", "--run", str(run), "--stores", cfg.stores, "--out", str(out),
                                      "--no-heatmaps"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [r for r in csv.DictReader(out.open()) if float(r["slide_score"]) > 0.5]  # why a slide scores positive
    occlusion = {lv: np.mean([float(r[f"occlusion_{lv}"]) for r in rows]) for lv in ("5x", "10x", "20x")}
    attention = {lv: np.mean([float(r[f"share_{lv}"]) for r in rows]) for lv in ("5x", "10x", "20x")}
    assert max(occlusion, key=occlusion.get) == "5x" and max(attention, key=attention.get) == "20x"
    assert all(abs(sum(float(r[f"occlusion_{lv}"]) for lv in occlusion) - 1) < 1e-3 for r in rows)
    assert "slides scored positive" in result.output, result.output
    shares = re.search(r"5x ([\d.]+) .*, 10x ([\d.]+) .*, 20x ([\d.]+) ", result.output)
    assert shares and float(shares[1]) > max(float(shares[2]), float(shares[3]))
