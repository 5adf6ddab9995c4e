"""Replicated studies (`--label-efficiency` / `--design-space` with `--replicates R`): every random draw of a study
changes with the replicate, finished replicates are reused, the registered endpoint cannot change, and the analysis
is the hand computation on the replicates' own runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_design_space import _tiny as _tiny_design
from test_label_efficiency import CONFIG as LABEL_CONFIG
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.errors import ConfigError
from mixmag.store import read_store
from mixmag.studies.benchmark import BenchmarkConfig
from mixmag.studies.design_space import DESIGN_SPACE
from mixmag.studies.label_efficiency import LABEL_EFFICIENCY, LabelEfficiencyConfig, load_label_efficiency_config
from mixmag.studies.replicated_studies import Quantity, StudyPlan, analyse_study, run_replicated_study
from mixmag.studies.replicates import ENDPOINT_FILE, compare_replicates, replicate_config
from mixmag.tables import read_table

ROOT = Path(__file__).parents[1]


def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or not np.allclose(a, b)


def test_one_replicate_config_serves_the_three_studies_and_derives_every_seed_from_r(tmp_path):
    for kind in (BenchmarkConfig, LabelEfficiencyConfig, type(_tiny_design(tmp_path))):
        config = kind(out=str(tmp_path / "s"), seeds=[0, 2], cohort_by_task={"coarse": {"seed": 7}})
        r2 = replicate_config(config, 2)
        assert type(r2) is kind and r2.out == str(tmp_path / "s" / "replicate-2")
        assert r2.cohort["seed"] == 2 and r2.pretrain["seed"] == 2 and r2.cohort_by_task["coarse"]["seed"] == 9
        assert r2.seeds == [6, 8] and config.seeds == [0, 2]  # each seed + r * (largest + 1); the config untouched


def test_the_replicate_level_analysis_of_a_study_is_the_hand_computation():
    # two grid tasks, methods M and A (group G = {A, B}), two replicates, one seed each
    made_up = [
        {"aurocs": {"t1": {"M": [0.8], "A": [0.7], "B": [0.5]}, "t2": {"M": [0.6], "A": [0.6], "B": [0.6]}}},
        {"aurocs": {"t1": {"M": [0.9], "A": [0.7], "B": [0.7]}, "t2": {"M": [0.9], "A": [0.6], "B": [0.8]}}},
    ]
    level = Quantity("p", "M", ("t1", "t2"), ("M",))
    group = Quantity("p", "M − G", ("t1", "t2"), ("M",), ("A", "B"))
    levels, comparisons = analyse_study(made_up, StudyPlan([level], [group]))
    assert levels[level] == pytest.approx([0.7, 0.9])
    # replicate 0: t1 0.8 - 0.6 = 0.2, t2 0.6 - 0.6 = 0 -> 0.1; replicate 1: t1 0.9 - 0.7 = 0.2, t2 0.9 - 0.7 -> 0.2
    c = comparisons[group]
    assert c.differences == pytest.approx((0.1, 0.2)) and c.mean == pytest.approx(0.15)
    assert c.sign_flip_p == 0.5  # of +-0.1 +-0.2, only (+, +) and (-, -) reach |mean| 0.15
    hand = compare_replicates("M", "A + B", [0.7, 0.9], [0.6, 0.7])
    assert (c.method, c.against, c.mean, c.low, c.high, c.t_p) == pytest.approx(
        (hand.method, hand.against, hand.mean, hand.low, hand.high, hand.t_p)
    )


def test_replicated_label_efficiency_draws_afresh_in_each_replicate_reuses_and_keeps_its_endpoint(tmp_path):
    out = tmp_path / "le"
    path = tmp_path / "le.yaml"
    path.write_text(LABEL_CONFIG.format(out=out))
    args = ["benchmark", "--label-efficiency", "--replicates", "2", "--config", str(path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    reps = [out / f"replicate-{r}" for r in (0, 1)]
    # the labelled cohort, the nested subsets, the unlabelled pool and the pretrained mixer all differ
    tables = [read_table(rep / "data" / "fine-n8.csv") for rep in reps]
    train = [{row["specimen"] for row in t.rows if row["split"] == "train"} for t in tables]
    assert train[0] != train[1]
    stores = [sorted((rep / "data" / "stores").glob("*.h5")) for rep in reps]
    assert [p.name for p in stores[0]] == [p.name for p in stores[1]]
    pool = [next(p for p in s if "-U" in p.name) for s in stores]
    labelled = [next(p for p in s if "-U" not in p.name) for s in stores]
    for a, b in (pool, labelled):
        assert _differ(read_store(a).embeddings["20x"], read_store(b).embeddings["20x"])
    mixers = [load_file(rep / "pretrain" / "mixer.safetensors") for rep in reps]
    assert any(_differ(mixers[0][k], mixers[1][k]) for k in mixers[0])
    records = [json.loads((rep / "replicate.json").read_text()) for rep in reps]
    assert [(r["cohort_seed"], r["pretrain_seed"], r["seeds"]) for r in records] == [(0, 0, [0]), (1, 1, [1])]
    # the random mixer's init follows the training seed: its fine-tuned runs differ
    assert records[0]["aurocs"]["fine-n8"]["random-patch"] != records[1]["aurocs"]["fine-n8"]["random-patch"]
    # the analysis: per size, MEM-patch minus each other method, from the replicates' own runs
    endpoint = json.loads((out / ENDPOINT_FILE).read_text())
    assert endpoint["study"] == "label_efficiency" and endpoint["replicates"] == 2
    assert "n = 8: MEM-patch − abmil-20x" in endpoint["comparisons"] and len(endpoint["comparisons"]) == 4
    rows = list(csv.DictReader(open(out / "label_efficiency_replicates.csv")))
    value = {(r["replicate"], r["kind"], r["point"], r["name"]): float(r["auroc_or_difference"]) for r in rows}
    for r in ("0", "1"):
        own = records[int(r)]["aurocs"]["fine-n16"]
        assert value[(r, "level", "n = 16", "MEM-patch")] == pytest.approx(own["MEM-patch"][0], abs=1e-6)
        assert value[(r, "difference", "n = 16", "MEM-patch − random-patch")] == pytest.approx(
            own["MEM-patch"][0] - own["random-patch"][0], abs=1e-6
        )
    text = (out / "label_efficiency_replicates.md").read_text()
    assert "| n = 8 | MEM-patch − abmil-20x |" in text and "sign-flip p" in text and "CPU s" in text
    assert (out / "label_efficiency_replicates.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "label_efficiency_replicates.json").read_text())
    assert all(rep["cpu_seconds"] > 0 for rep in summary["replicates"])

    stamps = [(rep / "label_efficiency.md").stat().st_mtime_ns for rep in reps]
    again = CliRunner().invoke(app, args)  # a rerun reuses both replicates: nothing of theirs is rewritten
    assert again.exit_code == 0 and again.output.count("reusing replicate") == 2
    assert [(rep / "label_efficiency.md").stat().st_mtime_ns for rep in reps] == stamps
    changed = load_label_efficiency_config(path).model_copy(update={"label_sizes": [8, 12]})
    with pytest.raises(ConfigError, match="cannot change after the fact"):
        run_replicated_study(LABEL_EFFICIENCY, changed, 2)


def test_replicated_design_space_draws_afresh_in_each_replicate_and_writes_the_fig_3_contrasts(tmp_path):
    out = tmp_path / "ds"
    config = _tiny_design(out, mask_ratios=[0.5], contexts=[3], levels=["20x", "all"])
    result = run_replicated_study(DESIGN_SPACE, config, 2)
    reps = [out / f"replicate-{r}" for r in (0, 1)]
    contexts = [{p.name for p in (rep / "data" / "contexts-3").glob("*.h5")} for rep in reps]
    both = sorted(contexts[0] & contexts[1])  # the test split differs too: compare a slide both replicates copied
    assert both and contexts[0] != contexts[1]
    a, b = (read_store(rep / "data" / "contexts-3" / both[0]) for rep in reps)
    assert _differ(a.embeddings["20x"], b.embeddings["20x"])  # the CMEM context stores are the replicate's own
    for name in ("MEM-r0.5", "CMEM-c3"):
        mixers = [load_file(rep / "pretrain" / name / "mixer.safetensors") for rep in reps]
        assert any(_differ(mixers[0][k], mixers[1][k]) for k in mixers[0])
    labels = {q.label: c for q, c in result["comparisons"].items()}
    assert {"families, patch: MEM − Random", "families, cls: CMEM − Random", "families, patch: MEM − CMEM"} <= set(
        labels
    )
    assert "families, both: Patch − CLS (MEM)" in labels and "MEM 0.50 patch: MEM-r0.5-patch − abmil-20x" in labels
    # a point minus AB-MIL 20x is the replicates' own runs' difference
    runs = [rec["aurocs"]["fine"] for rec in result["records"]]
    point = labels["MEM 0.50 cls: MEM-r0.5-cls − abmil-20x"]
    assert point.differences == pytest.approx(tuple(a["MEM-r0.5-cls"][0] - a["abmil-20x"][0] for a in runs))
    fam = labels["families, patch: MEM − Random"]
    by_hand = [a["MEM-r0.5-patch"][0] - (a["random-20x-patch"][0] + a["random-patch"][0]) / 2 for a in runs]
    assert fam.differences == pytest.approx(tuple(by_hand))
    text = (out / "design_space_replicates.md").read_text()
    assert "| families, both | Patch − CLS (CMEM) |" in text and "t interval" in text
    assert (out / "design_space_replicates.png").read_bytes()[:4] == b"\x89PNG"
    # a replicate run twice reuses it
    stamp = (reps[1] / "design_space.md").stat().st_mtime_ns
    again = run_replicated_study(DESIGN_SPACE, config, 2)
    assert (reps[1] / "design_space.md").stat().st_mtime_ns == stamp and again["records"] == result["records"]
