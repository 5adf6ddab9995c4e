"""Benchmark replicates: each replicate is a fresh cohort and pretraining run, finished replicates are reused, the
registered endpoint cannot change, and the replicate-level analysis is the hand computation."""

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_benchmark import _tiny_benchmark

from mixmag.errors import ConfigError
from mixmag.store import read_store
from mixmag.studies.replicates import (
    ENDPOINT_FILE,
    Endpoint,
    analyse,
    check_registered,
    compare_replicates,
    load_replicates_config,
    make_endpoint,
    per_task_comparisons,
    register_endpoint,
    replicate_config,
    replicate_defaults,
    rival_comparisons,
    run_replicates,
    sign_flip_p,
)


def _tiny(out: Path, **changes):
    return _tiny_benchmark(
        out, methods=["abmil-20x", "random-patch", "MEM-patch"], seeds=[0], pairs=[], attribution_methods=[], **changes
    )


def test_the_analysis_is_the_hand_computation_on_made_up_aurocs():
    tasks = ["fine", "coarse"]
    made_up = {  # replicate -> task -> method -> per-seed AUROCs
        0: {"fine": {"M": [0.80, 0.84], "A": [0.78, 0.78]}, "coarse": {"M": [0.70, 0.70], "A": [0.60, 0.64]}},
        1: {"fine": {"M": [0.75, 0.75], "A": [0.77, 0.79]}, "coarse": {"M": [0.66, 0.70], "A": [0.62, 0.62]}},
        2: {"fine": {"M": [0.90, 0.86], "A": [0.80, 0.80]}, "coarse": {"M": [0.72, 0.72], "A": [0.70, 0.66]}},
    }
    records = [{"aurocs": made_up[r]} for r in range(3)]
    # by hand: M per replicate (0.82 + 0.70) / 2 = 0.76, (0.75 + 0.68) / 2 = 0.715, (0.88 + 0.72) / 2 = 0.80;
    # A: (0.78 + 0.62) / 2 = 0.70, (0.78 + 0.62) / 2 = 0.70, (0.80 + 0.68) / 2 = 0.74 -> differences .06, .015, .06
    endpoint = Endpoint(method="M", against=["A"], tasks=tasks, replicates=3, protocol={})
    per_method, (c,) = analyse(records, endpoint)
    assert per_method["M"] == pytest.approx([0.76, 0.715, 0.80]) and per_method["A"] == pytest.approx([0.7, 0.7, 0.74])
    d = np.array([0.06, 0.015, 0.06])
    assert c.differences == pytest.approx(tuple(d)) and c.mean == pytest.approx(0.045)
    sd = np.sqrt(((d - 0.045) ** 2).sum() / 2)  # = 0.025981
    assert c.sd == pytest.approx(sd)
    t = 0.045 / (sd / np.sqrt(3))  # = 3.0
    assert t == pytest.approx(3.0)
    assert c.t_p == pytest.approx(0.0954, abs=2e-4)  # two-sided t(2) tail at 3.0: 2 * (1 - 0.9523)
    half = 4.302653 * sd / np.sqrt(3)  # t(2) 97.5% quantile
    assert (c.low, c.high) == pytest.approx((0.045 - half, 0.045 + half))
    # sign flips: |mean| >= 0.045 only for all + and all - of the 8 patterns
    assert c.sign_flip_p == pytest.approx(2 / 8)
    # by task: fine M 0.82, 0.75, 0.88 against A 0.78, 0.78, 0.80 -> .04, -.03, .08; coarse .08, .06, .04
    by_task = per_task_comparisons(records, endpoint)
    assert by_task["fine"][0].differences == pytest.approx((0.04, -0.03, 0.08))
    assert by_task["coarse"][0].differences == pytest.approx((0.08, 0.06, 0.04))
    assert by_task["coarse"][0].mean == pytest.approx(0.06) and by_task["fine"][0].mean == pytest.approx(0.03)


def test_the_rival_comparisons_are_over_the_rival_tasks_against_the_pooled_runs():
    records = [  # the endpoint's method M and AB-MIL all x on real stores, and AB-MIL all x on pooled ones
        {"aurocs": {"fine": {"M": [0.80], "all": [0.76]}, "coarse": {"M": [0.70], "all": [0.90]}},
         "rival_aurocs": {"fine": {"all": [0.80]}, "coarse": {"all": [0.50]}}},
        {"aurocs": {"fine": {"M": [0.84], "all": [0.78]}, "coarse": {"M": [0.60], "all": [0.88]}},
         "rival_aurocs": {"fine": {"all": [0.82]}, "coarse": {"all": [0.54]}}},
    ]  # fmt: skip
    protocol = {"rival_tasks": ["fine", "coarse"], "rival_methods": ["all"], "methods": ["M", "all"]}
    endpoint = Endpoint(method="M", against=["all"], tasks=["fine", "coarse"], replicates=2, protocol=protocol)
    m_vs_pooled, real_vs_pooled = rival_comparisons(records, endpoint)
    # M: 0.75, 0.72; pooled all: 0.65, 0.68; real all: 0.83, 0.83
    assert m_vs_pooled.against == "all (20x-pooled)" and m_vs_pooled.differences == pytest.approx((0.10, 0.04))
    assert real_vs_pooled.method == "all" and real_vs_pooled.differences == pytest.approx((0.18, 0.15))
    assert rival_comparisons(records, endpoint.model_copy(update={"protocol": {}})) == []


def test_sign_flip_p_counts_patterns_at_least_as_extreme():
    d = [0.05, 0.04, -0.01, 0.03]
    means = [abs(np.mean(np.array(s) * d)) for s in itertools.product((1, -1), repeat=4)]
    assert sign_flip_p(d) == pytest.approx(np.mean(np.array(means) >= abs(np.mean(d)) - 1e-15))
    assert sign_flip_p([0.1, 0.1, 0.1, 0.1, 0.1]) == pytest.approx(2 / 32)  # R = 5 can never reach 0.05
    assert compare_replicates("a", "b", [0.7] * 11, list(np.linspace(0.6, 0.65, 11))).sign_flip_p is None
    with pytest.raises(ValueError, match="at least 2"):
        compare_replicates("a", "b", [0.7], [0.6])


def test_replicates_derive_every_seed_from_r_and_the_endpoint_needs_its_methods(tmp_path):
    config = replicate_defaults(tmp_path / "r")
    assert config.methods == ["abmil-20x", "random-patch", "MEM-patch"]
    shipped = load_replicates_config(Path(__file__).parents[1] / "configs" / "replicates.yaml", tmp_path / "r")
    assert shipped.model_dump() == config.model_dump()
    r2 = replicate_config(config, 2)
    assert r2.out == str(tmp_path / "r" / "replicate-2") and r2.seeds == [2]  # one training seed a replicate
    assert r2.cohort["seed"] == 2 and r2.pretrain["seed"] == 2 and config.cohort.get("seed") is None
    odd = config.model_copy(update={"seeds": [5, 9], "cohort": config.cohort | {"seed": 10}})
    seeds = [replicate_config(odd, r).seeds for r in range(3)]
    assert seeds == [[5, 9], [15, 19], [25, 29]] and replicate_config(odd, 2).cohort["seed"] == 12
    with pytest.raises(ConfigError, match="lack MEM-patch, random-patch"):
        make_endpoint(config.model_copy(update={"methods": ["abmil-20x"]}), 5)
    with pytest.raises(ConfigError, match="--replicates 1"):
        make_endpoint(config, 1)


def test_replicates_differ_in_cohort_and_pretraining_are_reused_and_the_endpoint_is_fixed(tmp_path):
    out = tmp_path / "r"
    first = run_replicates(_tiny(out), 2)
    registered = json.loads((out / ENDPOINT_FILE).read_text())
    assert registered["method"] == "MEM-patch" and registered["against"] == ["abmil-20x", "random-patch"]
    assert registered["tasks"] == ["fine"] and registered["replicates"] == 2
    stores = [sorted((out / f"replicate-{r}" / "data" / "stores").glob("*.h5")) for r in (0, 1)]
    assert [p.name for p in stores[0]] == [p.name for p in stores[1]]  # the same specimens' names ...
    a, b = read_store(stores[0][0]), read_store(stores[1][0])  # ... but other embeddings
    assert a.embeddings["20x"].shape != b.embeddings["20x"].shape or not np.allclose(
        a.embeddings["20x"], b.embeddings["20x"]
    )
    mixers = [load_file(out / f"replicate-{r}" / "pretrain" / "mixer.safetensors") for r in (0, 1)]
    assert any(not np.allclose(mixers[0][k], mixers[1][k]) for k in mixers[0])
    assert [rec["seeds"] for rec in first["records"]] == [[0], [1]]
    assert all(rec["cpu_seconds"] > 0 for rec in first["records"])
    rows = list(csv.DictReader(open(out / "replicates.csv")))
    assert [r["replicate"] for r in rows] == ["0", "1"]
    diff = float(rows[0]["auroc_MEM-patch"]) - float(rows[0]["auroc_abmil-20x"])
    assert float(rows[0]["difference_MEM-patch_minus_abmil-20x"]) == pytest.approx(diff, abs=1e-5)
    assert "t-test p" in (out / "replicates.md").read_text()

    stamp = [(out / f"replicate-{r}" / "benchmark.md").stat().st_mtime_ns for r in (0, 1)]
    again = run_replicates(_tiny(out), 2)  # a rerun reuses both replicates: nothing is rewritten
    assert [(out / f"replicate-{r}" / "benchmark.md").stat().st_mtime_ns for r in (0, 1)] == stamp
    assert again["per_method"] == first["per_method"]

    for changed in (_tiny(out, tasks=["fine", "coarse"]), _tiny(out, train={"epochs": 4})):
        with pytest.raises(ConfigError, match="cannot change after the fact"):
            run_replicates(changed, 2)
    with pytest.raises(ConfigError, match="differs from this run's in replicates;"):
        run_replicates(_tiny(out), 3)
    assert json.loads((out / ENDPOINT_FILE).read_text()) == registered


def test_the_analysis_refuses_an_endpoint_file_edited_after_registration(tmp_path):
    endpoint = make_endpoint(replicate_defaults(tmp_path), 5)
    register_endpoint(tmp_path, endpoint)
    check_registered(tmp_path, endpoint)  # unchanged: the analysis may run
    edited = json.loads((tmp_path / ENDPOINT_FILE).read_text()) | {"against": ["abmil-20x"]}
    (tmp_path / ENDPOINT_FILE).write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match="missing or changed since the replicates started"):
        check_registered(tmp_path, endpoint)
    with pytest.raises(ConfigError, match="differs from this run's in against;"):
        register_endpoint(tmp_path, endpoint)


def test_replicates_with_a_rival_record_its_pooled_runs_and_compare_against_them(tmp_path):
    out = tmp_path / "r"
    config = _tiny(out, rival_tasks=["fine"], rival_methods=["abmil-20x"])
    result = run_replicates(config, 2)
    for r, rec in enumerate(result["records"]):
        assert list(rec["rival_aurocs"]) == ["fine"] and len(rec["rival_aurocs"]["fine"]["abmil-20x"]) == 1
        assert (out / f"replicate-{r}" / "results-rival" / "fine" / "abmil-20x").is_dir()
    saved = json.loads((out / "replicates.json").read_text())
    assert [(c["method"], c["against"]) for c in saved["rival"]] == [
        ("MEM-patch", "abmil-20x (20x-pooled)"),
        ("abmil-20x", "abmil-20x (20x-pooled)"),
    ]
    pooled = [rec["rival_aurocs"]["fine"]["abmil-20x"][0] for rec in result["records"]]
    mem = [rec["aurocs"]["fine"]["MEM-patch"][0] for rec in result["records"]]
    assert saved["rival"][0]["differences"] == pytest.approx([m - p for m, p in zip(mem, pooled, strict=True)])
    assert "Against the 20x-only rival" in (out / "replicates.md").read_text()
