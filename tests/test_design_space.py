"""`mixmag benchmark --design-space` (issue 25 item 5) and multi-slide benchmark cohorts: tiny configs, seconds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mixmag.data.cohort import load_cohort
from mixmag.errors import ConfigError
from mixmag.runs import PretrainRun
from mixmag.store import read_header, read_store
from mixmag.studies.design_space import (
    DesignSpaceConfig,
    design_rows,
    load_design_space_config,
    run_design_space,
)
from mixmag.synth.benchmark import (
    TASKS,
    BenchmarkSpec,
    _directions,
    _stratified_splits,
    benchmark_slide,
    write_benchmark_cohort,
)
from mixmag.tables import read_table

TINY_PRETRAIN = {
    "preset": "tiny",
    "batch_size": 8,
    "steps": 2,
    "warmup_steps": 1,
    "precision": "fp32",
    "workers": 0,
    "per_slide": 2,
    "pool": 4,
    "tensorboard": False,
}


def _tiny(out: Path, **changes) -> DesignSpaceConfig:
    settings = dict(
        out=str(out),
        tasks=["fine"],
        cohort={
            "n_specimens": 24,
            "dim": 8,
            "cells": 6,
            "signal_regions": 1,
            "slides_per_specimen": 2,
            "signal": 2.0,
            "label_noise": 0.0,
            "split": [0.5, 0.2, 0.3],
        },
        cohort_by_task={},
        mask_ratios=[0.25, 0.5],
        contexts=[3, 6],
        seeds=[0],
        pretrain=TINY_PRETRAIN,
        train={"epochs": 2, "batch_size": 8, "lr": 5e-3, "bootstrap": 100},
        n_boot=100,
        loss_window=2,
    )
    return DesignSpaceConfig(**(settings | changes))


def test_a_tiny_design_space_runs_every_point_and_writes_the_tables_the_figure_and_the_departures(tmp_path):
    config = _tiny(tmp_path / "d")
    result = run_design_space(config)
    out = tmp_path / "d"
    rows = list(csv.DictReader(open(out / "design_space.csv")))
    wanted = [r[0] for r in design_rows(config)]
    assert [r["method"] for r in rows] == wanted
    assert {"abmil-5x", "abmil-10x", "abmil-20x", "abmil-all", "random-10x-patch", "random-cls"} <= set(wanted)
    assert {"MEM-r0.25-patch", "MEM-r0.5-cls", "CMEM-c3-patch", "CMEM-c6-cls"} <= set(wanted)
    assert all(0 <= float(r["auroc_fine"]) <= 1 for r in rows)
    base = next(r for r in rows if r["method"] == "abmil-20x")
    assert base["difference_vs_abmil-20x"] == "" and all(r["ci_low"] for r in rows if r is not base)
    for r in rows:
        if r is not base:
            assert float(r["ci_low"]) <= float(r["difference_vs_abmil-20x"]) <= float(r["ci_high"])
    assert (out / "design_space.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "design_space.md").read_text()
    assert "Table 1-style" in text and "Table 2-style" in text and "Departures from the paper's recipe" in text
    assert "| slide-level lr | 1e-5 | 0.005 | yes |" in text and "| 2; eq. 9 runs | no |" in text
    assert (
        "| Random | 10× |" in text
        and "| MEM − AB-MIL 20× | patch |" in text
        and "| Patch − CLS (CMEM) | both |" in text
    )
    # every pretraining run: MEM at each r, CMEM at each c on stores whose contexts are c x c and hold no test slide
    assert set(result["mixers"]) == {"MEM-r0.25", "MEM-r0.5", "CMEM-c3", "CMEM-c6"}
    assert all(PretrainRun(out / "pretrain" / name).mixer_weights.is_file() for name in result["mixers"])
    test_slides = {r["slide"] for r in read_table(out / "data" / "fine.csv").rows if r["split"] == "test"}
    copies = sorted((out / "data" / "contexts-6").glob("*.h5"))
    assert copies and not {p.stem for p in copies} & test_slides
    assert read_header(copies[0]).context_size == 6 and len(read_store(copies[0]).windows["contexts"]) == 1
    # the cohort has two slides per specimen, so training takes eq. 9's minimum over them
    cohort = load_cohort(out / "data" / "fine.csv", out / "data" / "stores")
    assert {len(sp.slides) for sp in cohort.specimens.values()} == {2}


def test_a_design_space_refuses_contexts_larger_than_the_slides_and_levels_without_20x(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("cohort: {cells: 6}\ncontexts: [3, 7]\n")
    with pytest.raises(ConfigError, match="CMEM context 7 is larger than the slides"):
        load_design_space_config(path)
    path.write_text("levels: [5x, all]\n")
    with pytest.raises(ConfigError, match="levels must include 20x"):
        load_design_space_config(path)
    path.write_text("pretrain: {mask_ratio: 0.3}\n")
    with pytest.raises(ConfigError, match="mask_ratio and context are the design's"):
        load_design_space_config(path)


def test_one_slide_per_specimen_is_the_cohort_the_generator_always_made(tmp_path):
    """slides_per_specimen = 1 (the default) draws exactly what the generator drew before the knob existed."""
    for task in ("fine", "context"):
        spec = BenchmarkSpec(task=task, n_specimens=6, dim=4)
        table = read_table(write_benchmark_cohort(tmp_path, spec))
        rng = np.random.default_rng(spec.seed * 7919 + TASKS.index(task))  # the loop as it was
        truth = np.array([k % 2 for k in range(6)])
        labels = np.where(rng.random(6) < spec.label_noise, 1 - truth, truth)
        splits = _stratified_splits(labels, spec.split, rng)
        assert [r["slide"] for r in table.rows] == [f"{task}-P{k:04d}-S0" for k in range(6)]
        assert [(int(r["label"]), r["split"]) for r in table.rows] == list(zip(labels.tolist(), splits, strict=True))
        for k, row in enumerate(table.rows):
            expected = benchmark_slide(spec, row["slide"], bool(truth[k]), rng)
            got = read_store(row["store"])
            assert all(np.array_equal(got.embeddings[n], expected.embeddings[n]) for n in expected.embeddings)


def test_several_slides_per_specimen_put_a_positive_s_biomarker_on_one_of_them(tmp_path):
    spec = BenchmarkSpec(task="coarse", n_specimens=8, dim=8, signal=3.0, label_noise=0.0, slides_per_specimen=3)
    table = read_table(write_benchmark_cohort(tmp_path, spec))
    by_specimen: dict[str, list[dict]] = {}
    for row in table.rows:
        by_specimen.setdefault(row["specimen"], []).append(row)
    assert len(by_specimen) == 8 and all(len(rows) == 3 for rows in by_specimen.values())
    assert all(len({(r["label"], r["split"]) for r in rows}) == 1 for rows in by_specimen.values())
    _, coarse = _directions(spec.dim, spec.seed)
    for (
        rows
    ) in by_specimen.values():  # the 5x direction stands out on exactly one slide of a positive, none of a negative
        strength = [
            float(np.max(read_store(r["store"]).embeddings["5x"][:, 0].astype(np.float64) @ coarse)) for r in rows
        ]
        marked = sum(s > 4.0 for s in strength)  # background tops out near 2, the marked cell near 7
        assert marked == (1 if rows[0]["label"] == "1" else 0), strength
