"""Benchmark v2: the generator puts the biomarker where it says, the statistics are the ones named, and a tiny
`mixmag benchmark` runs end to end."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mixmag.errors import MixmagError
from mixmag.eval.attribution import INTEGRATED_GRADIENTS, LevelImportance
from mixmag.metrics import auroc, delong_test
from mixmag.studies.benchmark import (
    BenchmarkConfig,
    _recovery_word,
    ig_baseline_check,
    load_benchmark_config,
    run_benchmark,
)
from mixmag.studies.benchmark_stats import (
    cell_statistics,
    compare_methods,
    paired_power,
    pretraining_losses,
    specimens_for_power,
)
from mixmag.synth.benchmark import BenchmarkSpec, _directions, benchmark_slide, write_benchmark_cohort


def _projection(store, spec, level):
    fine, coarse = _directions(spec.dim, spec.seed)
    emb = store.embeddings[level].astype(np.float64)
    return emb @ (fine if level == "20x" else coarse)


@pytest.mark.parametrize("task", ["fine", "coarse"])
def test_the_biomarker_is_at_its_scale_in_a_minority_of_regions(task):
    spec = BenchmarkSpec(task, dim=32, signal=2.0, cells=6, signal_regions=1)
    rng = np.random.default_rng(0)
    pos, neg = benchmark_slide(spec, "p", True, rng), benchmark_slide(spec, "n", False, np.random.default_rng(0))
    level = "20x" if task == "fine" else "5x"
    other = "5x" if task == "fine" else "20x"
    shift = _projection(pos, spec, level) - _projection(neg, spec, level)  # same background (same rng stream start)
    for k in (level, other):
        assert pos.embeddings[k].shape == neg.embeddings[k].shape
    moved_cells = np.flatnonzero(np.abs(shift).max(axis=1) > 0.5)
    assert len(moved_cells) == 9  # one 3x3 region of the four
    np.testing.assert_allclose(pos.embeddings["10x"], neg.embeddings["10x"], atol=1e-2)  # nothing at 10x


def test_signal_spread_varies_each_marked_slides_strength_between_zero_and_twice_the_signal():
    spec = BenchmarkSpec("coarse", dim=32, signal=1.0, signal_spread=1.0)
    strengths = []
    for seed in range(12):
        pos = benchmark_slide(spec, "p", True, np.random.default_rng(seed))
        neg = benchmark_slide(spec, "n", False, np.random.default_rng(seed))  # the same background and draws
        shift = (_projection(pos, spec, "5x") - _projection(neg, spec, "5x")).max()
        strengths.append(shift / np.median(np.linalg.norm(neg.embeddings["20x"].astype(np.float64), axis=-1)))
    assert 0 <= min(strengths) and max(strengths) <= 2.01 and np.std(strengths) > 0.3
    fixed = BenchmarkSpec("coarse", dim=32, signal=1.0, signal_spread=0.0)
    pos = benchmark_slide(fixed, "p", True, np.random.default_rng(0))
    neg = benchmark_slide(fixed, "n", False, np.random.default_rng(0))
    scale = np.median(np.linalg.norm(neg.embeddings["20x"].astype(np.float64), axis=-1))
    assert (_projection(pos, fixed, "5x") - _projection(neg, fixed, "5x")).max() / scale == pytest.approx(1, abs=0.01)
    with pytest.raises(MixmagError, match="signal_spread"):
        BenchmarkSpec("fine", signal_spread=1.5)


def test_context_positives_and_decoys_differ_only_in_arrangement():
    spec = BenchmarkSpec("context", dim=32, signal=2.0, decoy_rate=1.0)
    pos = benchmark_slide(spec, "p", True, np.random.default_rng(1))
    neg = benchmark_slide(spec, "n", False, np.random.default_rng(1))
    marked = [
        np.abs(
            _projection(s, spec, "20x")
            - _projection(
                benchmark_slide(BenchmarkSpec("fine", dim=32, signal=0.0), "b", False, np.random.default_rng(1)),
                spec,
                "20x",
            )
        )
        > 0.5
        for s in (pos, neg)
    ]
    assert marked[0].sum() == marked[1].sum() > 0  # the same number of marked 20x tiles
    cells = np.flatnonzero(marked[0].any(1))
    assert all((np.flatnonzero(marked[0][c]) % 4 < 2).all() for c in cells)  # positives: the left half of each cell
    assert not all((np.flatnonzero(marked[1][c]) % 4 < 2).all() for c in np.flatnonzero(marked[1].any(1)))


def test_label_noise_flips_about_its_share(tmp_path):
    table = write_benchmark_cohort(tmp_path, BenchmarkSpec("fine", n_specimens=100, label_noise=0.25, dim=8))
    rows = list(csv.DictReader(open(table)))
    flipped = sum(int(r["label"]) != int(r["specimen"][-4:]) % 2 for r in rows)
    assert 10 < flipped < 45
    assert {r["split"] for r in rows} == {"train", "tune", "test"}


def _run(folder, scores, labels):
    folder.mkdir(parents=True)
    with (folder / "predictions_test.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["specimen", "label", "score", "slides", "slide_scores"])
        for k, (y, s) in enumerate(zip(labels, scores)):
            w.writerow([f"P{k}", y, s, f"P{k}-S0", s])
    return folder


def test_cell_statistics_are_mean_sd_over_seeds_and_paired_delong(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 40)
    base = [rng.normal(size=80) + labels for _ in range(3)]
    other = [rng.normal(size=80) + 2 * labels for _ in range(3)]
    runs = {
        "abmil-20x": [_run(tmp_path / f"b{k}", s, labels) for k, s in enumerate(base)],
        "mixer": [_run(tmp_path / f"m{k}", s, labels) for k, s in enumerate(other)],
    }
    cells = {c.method: c for c in cell_statistics("fine", runs, "abmil-20x", n_boot=200)}
    per_seed = [auroc(labels, s) for s in other]
    assert cells["mixer"].mean == pytest.approx(np.mean(per_seed)) and cells["mixer"].sd == pytest.approx(
        np.std(per_seed, ddof=1)
    )
    assert cells["mixer"].low < cells["mixer"].mean < cells["mixer"].high
    assert cells["mixer"].p_vs_baseline == pytest.approx(
        delong_test(labels, np.mean(other, 0), np.mean(base, 0)).p_value
    )
    assert cells["abmil-20x"].p_vs_baseline is None
    _run(tmp_path / "short", other[0][:60], labels[:60])
    with pytest.raises(MixmagError, match="different specimens"):
        cell_statistics(
            "fine", {"abmil-20x": runs["abmil-20x"][:1], "x": [tmp_path / "short"]}, "abmil-20x", n_boot=100
        )


def test_any_two_methods_get_a_paired_delong_p(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 40)
    a = [_run(tmp_path / f"a{k}", rng.normal(size=80) + 2 * labels, labels) for k in range(2)]
    b = [_run(tmp_path / f"b{k}", rng.normal(size=80) + 0.5 * labels, labels) for k in range(2)]
    pair = compare_methods("fine", a, b, "MEM-patch-frozen", "Random-patch-frozen")
    assert pair.difference > 0 and pair.p < 0.01
    assert compare_methods("fine", a, a, "x", "x").p == pytest.approx(1.0)


def test_pretraining_losses_average_the_last_steps_of_the_log(tmp_path):
    log = tmp_path / "log.csv"
    rows = [(10 * k, -0.1 - 0.01 * k, -0.25 + (0.02 if k % 2 else -0.02)) for k in range(1, 31)]
    log.write_text("step,mem,baseline_loss\n" + "".join(f"{s},{m},{b}\n" for s, m, b in rows))
    losses = pretraining_losses(log, 100)
    assert losses["steps"] == 300 and losses["logged_batches"] == 10
    assert losses["mem"] == pytest.approx(np.mean([m for _, m, _ in rows[-10:]]))
    assert losses["baseline"] == pytest.approx(-0.25) and losses["first_mem"] == pytest.approx(-0.11)
    log.write_text("step,mem\n10,-0.2\n")
    with pytest.raises(MixmagError, match="not a readable pretraining log"):
        pretraining_losses(log, 100)


def test_configs_benchmark_yaml_is_the_built_in_default():
    shipped = load_benchmark_config(Path(__file__).parents[1] / "configs" / "benchmark.yaml")
    assert shipped.model_dump() == BenchmarkConfig().model_dump()


def test_integrated_gradients_from_a_baseline_that_scores_higher_are_not_read_as_a_scale():
    slides = []
    for k, values in enumerate([[0.1, -0.9, 0.3], [0.2, -0.8, -0.3], [0.0, 0.1, 0.5]]):
        imp = LevelImportance(f"s{k}", 3.0, ["5x", "10x", "20x"])
        imp.values[INTEGRATED_GRADIENTS] = np.array(values)
        imp.completeness_gap = 0.01 * k
        slides.append(imp)
    check = ig_baseline_check(slides)
    assert check["baseline_above_fraction"] == pytest.approx(2 / 3, abs=1e-3) and check["completeness_gap_max"] == 0.02
    row = {"test_auroc": 0.9, "recovers": True} | check
    assert _recovery_word(row).startswith("n/a (its all-mean baseline scores above 67%")
    assert _recovery_word({"test_auroc": 0.9, "recovers": True}) == "yes"


def test_power_grows_with_specimens_and_is_alpha_without_a_difference():
    assert paired_power(0.8, 0.0, 100, 100, 0.5) == pytest.approx(0.05, abs=1e-9)
    assert paired_power(0.8, 0.05, 50, 50, 0.5) < paired_power(0.8, 0.05, 300, 300, 0.5) < 1
    n = specimens_for_power(0.8, 0.05, 0.5)
    assert (
        paired_power(0.8, 0.05, n // 2, n // 2, 0.5) >= 0.8 > paired_power(0.8, 0.05, (n - 10) // 2, (n - 10) // 2, 0.5)
    )


def _tiny_benchmark(out: Path, **changes) -> BenchmarkConfig:
    """One small task, two seeds, two pretraining steps: seconds on a CPU."""
    settings = dict(
        out=str(out),
        tasks=["fine"],
        methods=["abmil-20x", "abmil-all"],
        seeds=[0, 1],
        cohort={"n_specimens": 40, "dim": 8, "signal": 2.0, "label_noise": 0.0},
        pretrain={
            "preset": "tiny",
            "batch_size": 8,
            "steps": 2,
            "warmup_steps": 1,
            "precision": "fp32",
            "workers": 0,
            "per_slide": 2,
            "pool": 4,
            "tensorboard": False,
        },
        train={"epochs": 3, "batch_size": 16, "bootstrap": 100},
        pairs=[("abmil-all", "abmil-20x")],
        attribution_methods=["abmil-all"],
        attribution_slides=4,
        n_boot=100,
    )
    return BenchmarkConfig(**(settings | changes))


def test_a_tiny_benchmark_runs_end_to_end_and_skips_pretraining_no_method_uses(tmp_path):
    result = run_benchmark(_tiny_benchmark(tmp_path / "b"))
    rows = list(csv.DictReader(open(tmp_path / "b" / "benchmark.csv")))
    assert [r["method"] for r in rows] == ["abmil-20x", "abmil-all"] and rows[1]["delong_p_vs_abmil-20x"]
    pairs = list(csv.DictReader(open(tmp_path / "b" / "pairs.csv")))
    assert [(p["method"], p["against"]) for p in pairs] == [("abmil-all", "abmil-20x")] and float(pairs[0]["delong_p"])
    assert float(rows[1]["fdr_q_vs_abmil-20x"]) == pytest.approx(float(rows[1]["delong_p_vs_abmil-20x"]), rel=1e-3)
    assert float(pairs[0]["fdr_q"]) == pytest.approx(float(pairs[0]["delong_p"]), rel=1e-3)  # one test: q = p
    assert not (tmp_path / "b" / "pretrain").exists() and not (tmp_path / "b" / "random-mixer").exists()
    said = "MEM pretraining: skipped (no configured method uses a mixer (abmil-20x, abmil-all: AB-MIL alone))."
    assert result["pretraining"]["skipped"] and said in (tmp_path / "b" / "benchmark.md").read_text()
    assert json.loads((tmp_path / "b" / "pretraining.json").read_text()) == result["pretraining"]
    assert not any("pretrain" in stage for stage in result["timings"])
    assert {r["measure"] for r in result["attribution"]} >= {"level occlusion (mean-replace)", "integrated gradients"}
    assert (
        "± " in (tmp_path / "b" / "benchmark.md").read_text()
        and set(result["timings"])
        and all(v >= 0 for v in result["timings"].values())
    )


def test_a_tiny_benchmark_with_a_mixer_method_pretrains_the_mixer_and_records_its_loss(tmp_path):
    config = _tiny_benchmark(tmp_path / "b", methods=["abmil-20x", "MEM-patch-frozen"], seeds=[0], pairs=[])
    result = run_benchmark(config)
    assert (tmp_path / "b" / "pretrain" / "mixer.safetensors").is_file()
    rows = list(csv.DictReader(open(tmp_path / "b" / "benchmark.csv")))
    assert [r["method"] for r in rows] == ["abmil-20x", "MEM-patch-frozen"]
    assert (
        set(result["pretraining"]) >= {"mem", "baseline"}
        and "predict-the-mean baseline" in (tmp_path / "b" / "benchmark.md").read_text()
    )
    assert "2. pretrain a mixer with MEM" in result["timings"]


def test_a_decoy_that_can_only_be_the_pattern_is_refused_not_looped_forever():
    from types import SimpleNamespace

    from mixmag.synth.benchmark import _mark_fine

    one_tile = SimpleNamespace(embeddings={"20x": np.zeros((2, 1, 4), np.float32)})  # a level of one tile per cell
    with pytest.raises(ValueError, match="would always be the pattern"):
        _mark_fine(one_tile, np.array([0, 1]), np.ones(4), 1.0, 1.0, np.random.default_rng(0), pattern=False)
    sixteen = SimpleNamespace(embeddings={"20x": np.zeros((2, 16, 4), np.float32)})
    _mark_fine(sixteen, np.array([0]), np.ones(4), 1.0, 0.25, np.random.default_rng(0), pattern=False)
    marked = np.flatnonzero(sixteen.embeddings["20x"][0, :, 0])
    assert len(marked) == 4 and set(marked) != {0, 1, 4, 5}  # four tiles, not the left-half pattern
