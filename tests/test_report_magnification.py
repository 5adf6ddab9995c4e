"""The report names task, method and seed, counts every split (train included), and says which magnification
mattered, leading with a measure that acts on the score."""

import re

from train_runs import learnt_task_config

from mixmag.report.html import build_report
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
