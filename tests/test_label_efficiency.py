"""`mixmag benchmark --label-efficiency` (issue 25 item 2): the sizes asked, one test set, a pool with no test slide."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.studies.label_efficiency import load_label_efficiency_config, pretrain_settings
from mixmag.tables import read_table
from mixmag.train.pretrain import PretrainConfig, pretraining_catalog

CONFIG = """\
out: {out}
tasks: [fine]
label_sizes: [8, 16]
tune_specimens: 8
test_specimens: 12
unlabelled_specimens: 40
cohort: {{dim: 8, signal: 2.0, label_noise: 0.0}}
cohort_by_task: {{}}
methods: [abmil-20x, random-patch, MEM-patch]
seeds: [0]
pretrain: {{preset: tiny, batch_size: 8, steps: 2, warmup_steps: 1, precision: fp32, workers: 0, per_slide: 2,
            pool: 4, tensorboard: false}}
train: {{epochs: 2, batch_size: 8, lr: 5.0e-3, bootstrap: 100}}
loss_window: 2
n_boot: 100
"""


def test_one_command_runs_the_sizes_asked_on_one_test_set_and_pretrains_on_a_pool_without_test_slides(tmp_path):
    out = tmp_path / "le"
    path = tmp_path / "le.yaml"
    path.write_text(CONFIG.format(out=out))
    result = CliRunner().invoke(app, ["benchmark", "--label-efficiency", "--config", str(path)])
    assert result.exit_code == 0, result.output
    tables = {n: read_table(out / "data" / f"fine-n{n}.csv") for n in (8, 16)}
    split = {n: {r["specimen"]: r["split"] for r in t.rows} for n, t in tables.items()}
    train = {n: {s for s, v in split[n].items() if v == "train"} for n in split}
    assert {n: len(t) for n, t in train.items()} == {8: 8, 16: 16} and train[8] < train[16]  # the sizes, nested
    labels = {r["specimen"]: r["label"] for r in tables[16].rows}
    assert {labels[s] for s in train[8]} == {"0", "1"}  # stratified: both classes at the smallest size
    held = {n: {(s, v) for s, v in split[n].items() if v != "train"} for n in split}
    assert held[8] == held[16] and sum(v == "test" for _, v in held[8]) == 12 and len(held[8]) == 20
    # the pretraining pool: every unlabelled slide, the labelled non-test ones, no test slide
    sized = {"fine": {n: out / "data" / f"fine-n{n}.csv" for n in (8, 16)}}
    config = PretrainConfig(**pretrain_settings(out, load_label_efficiency_config(path), sized))
    pool = {e.slide_id for e in pretraining_catalog(config).entries}
    test = {r["slide"] for r in tables[16].rows if r["split"] == "test"}
    unlabelled = {s for s in pool if "-U" in s}
    assert (
        test
        and not pool & test
        and len(unlabelled) == 40
        and pool - unlabelled == {r["slide"] for r in tables[16].rows if r["split"] != "test"}
    )
    record = json.loads((out / "pool.json").read_text())
    assert record["test_slides_in_pool"] == 0 and record["unlabelled_slides"] == 40
    assert record["unlabelled_per_labelled"] == 2.5 and record["pool_slides"] == len(pool)
    rows = list(csv.DictReader(open(out / "label_efficiency.csv")))
    assert {(r["labelled_specimens"], r["method"]) for r in rows} == {
        (n, m) for n in ("8", "16") for m in ("abmil-20x", "random-patch", "MEM-patch")
    }
    text = (out / "label_efficiency.md").read_text()
    assert "| MEM-patch − random-patch |" in text and "| MEM-patch − abmil-20x |" in text
    assert "Departures from the paper's recipe" in text and "none in the pool" in text
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"


def test_the_studies_are_given_one_at_a_time(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "--design-space", "--label-efficiency", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "separate studies: give one" in result.output
