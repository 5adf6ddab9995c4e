"""The structure sweep (issue 25 item 3): one benchmark per knob point, each at its own structure, and the MEM - Random
gap per point computed from the runs' own test predictions."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from test_benchmark import _tiny_benchmark
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.metrics import auroc
from mixmag.store import read_store
from mixmag.studies.benchmark_stats import read_test_predictions
from mixmag.studies.structure_sweep import (
    StructureSweepConfig,
    load_structure_sweep_config,
    point_config,
    run_structure_sweep,
)


def _tiny_sweep(out: Path, **changes) -> StructureSweepConfig:
    settings = _tiny_benchmark(out).model_dump() | dict(
        methods=["abmil-20x", "random-patch", "MEM-patch"],
        seeds=[0],
        pairs=[],
        attribution_methods=[],
        train={"epochs": 2, "batch_size": 16, "bootstrap": 100},
        structures=[0.0, 1.0],
    )
    return StructureSweepConfig(**(settings | changes))


def _auroc(run: Path) -> float:
    preds = read_test_predictions(run)
    return auroc([v[0] for v in preds.values()], [v[1] for v in preds.values()])


def _children_r2(store) -> float:
    """How much of a cell's 5x token its 20x children's mean explains (least squares over the slide's cells)."""
    x = store.embeddings["20x"].astype(np.float64).mean(1)
    y = store.embeddings["5x"][:, 0].astype(np.float64)
    x = np.c_[x, np.ones(len(x))]
    fit = x @ np.linalg.lstsq(x, y, rcond=None)[0]
    return 1 - float(((y - fit) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def test_each_point_runs_at_its_structure_and_the_gap_is_the_runs_own(tmp_path):
    out = tmp_path / "s"
    result = run_structure_sweep(_tiny_sweep(out))
    stores = {}
    for s in ("0", "1"):
        specs = json.loads((out / f"structure-{s}" / "data" / "specs.json").read_text())
        assert {spec["structure"] for spec in specs.values()} == {float(s)}
        stores[s] = read_store(sorted((out / f"structure-{s}" / "data" / "stores").glob("*.h5"))[0])
    # the knob reached the generator: at 0 a 5x token is not its 20x children's, at 1 it largely is
    assert _children_r2(stores["0"]) < 0.5 < _children_r2(stores["1"])
    for point, s in zip(result["points"], ("0", "1"), strict=True):
        runs = out / f"structure-{s}" / "results" / "fine"
        mem = _auroc(runs / "MEM-patch" / "seed0")
        against = [c.value for c in point["contrasts"]]
        assert against == pytest.approx(
            [mem - _auroc(runs / "random-patch" / "seed0"), mem - _auroc(runs / "abmil-20x" / "seed0")]
        )
        assert all(c.low <= c.value <= c.high for c in point["contrasts"])
    rows = list(csv.DictReader(open(out / "structure_sweep.csv")))
    assert [(r["structure"], r["difference"]) for r in rows] == [
        (s, f"MEM-patch − {b}") for s in ("0", "1") for b in ("random-patch", "abmil-20x")
    ]
    text = (out / "structure_sweep.md").read_text()
    assert "| 0 |" in text and "| 1 |" in text and (out / "structure_sweep.png").stat().st_size > 0


def test_a_sweep_config_is_checked_and_each_point_is_a_benchmark_at_its_structure(tmp_path):
    config = _tiny_sweep(tmp_path / "s", structures=[0.0, 0.25])
    point = point_config(config, 0.25)
    assert point.out == str(tmp_path / "s" / "structure-0.25") and point.cohort["structure"] == 0.25
    assert point.methods == config.methods and point.pretrain == config.pretrain
    for bad, words in (
        ({"structures": [0.0, 0.0]}, "distinct values"),
        ({"structures": [0.0, 1.5]}, "distinct values"),
        ({"against": ["abmil-all"]}, "not among the methods"),
        ({"cohort": {"n_specimens": 40, "structure": 0.5}}, "remove it from cohort"),
    ):
        with pytest.raises(ValidationError, match=words):
            _tiny_sweep(tmp_path / "s", **bad)
    shipped = load_structure_sweep_config(Path(__file__).parents[1] / "configs" / "structure-sweep-small.yaml")
    assert shipped.structures == [0.0, 0.5, 1.0] and shipped.against == ["random-patch", "abmil-20x"]


def test_the_sweep_is_a_study_of_its_own_on_the_command_line(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "--structure-sweep", "--design-space", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "separate studies: give one" in result.output


def test_a_replicated_sweep_gives_each_point_its_own_replicates_and_differences_over_them(tmp_path):
    from mixmag.studies.replicates import ENDPOINT_FILE
    from mixmag.studies.structure_replicates import run_structure_sweep_replicates

    out = tmp_path / "s"
    config = _tiny_sweep(out, against=["random-patch"])
    result = run_structure_sweep_replicates(config, 2)
    for point, s in zip(result["points"], ("0", "1"), strict=True):
        folder = out / f"structure-{s}"
        endpoint = json.loads((folder / ENDPOINT_FILE).read_text())
        assert endpoint["method"] == "MEM-patch" and endpoint["against"] == ["random-patch"]
        specs = [json.loads((folder / f"replicate-{r}" / "data" / "specs.json").read_text()) for r in (0, 1)]
        assert all(spec["structure"] == float(s) for rep in specs for spec in rep.values())
        assert specs[0] != specs[1]  # a fresh cohort per replicate
        (comparison,) = point["comparisons"]
        expected = []
        for r in (0, 1):
            runs = folder / f"replicate-{r}" / "results"
            expected.append(
                np.mean(
                    [
                        _auroc(runs / t / "MEM-patch" / f"seed{r}") - _auroc(runs / t / "random-patch" / f"seed{r}")
                        for t in config.tasks
                    ]
                )
            )
        assert list(comparison.differences) == pytest.approx(expected)
        assert comparison.low <= comparison.mean <= comparison.high
    rows = list(csv.DictReader(open(out / "structure_sweep_replicates.csv")))
    assert [(r["structure"], r["against"]) for r in rows] == [("0", "random-patch"), ("1", "random-patch")]
    assert (out / "structure_sweep_replicates.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "structure_sweep_replicates.md").read_text()
    assert "t interval over replicates" in text and "| 1 | MEM-patch − random-patch |" in text
    # a rerun reuses every finished replicate and gives the same differences
    again = run_structure_sweep_replicates(config, 2)
    assert [p["comparisons"][0].differences for p in again["points"]] == [
        p["comparisons"][0].differences for p in result["points"]
    ]
