"""The 20x-only rival (issue 25 item 4): coarser levels pooled from the finest level's tiles."""

import numpy as np
import pytest
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.data.pooled import pool_from_finest
from mixmag.errors import MixmagError
from mixmag.store import EmbeddingSpace, read_store, write_store
from mixmag.synth.stores import synthetic_store


def test_each_coarse_tile_is_the_mean_of_the_finest_tiles_inside_it():
    store = synthetic_store("s1", n_rows=2, n_cols=3, dim=4, seed=0)
    pooled = pool_from_finest(store)
    fine = store.embeddings["20x"].astype(np.float32)  # (N, 16, D): a cell's 4 x 4 tiles, row-major
    # 10x tile (r, c) of a cell covers 20x tiles rows 2r..2r+1, cols 2c..2c+1 (written out, not reshaped)
    for cell in range(len(store)):
        for r in range(2):
            for c in range(2):
                children = [fine[cell, (2 * r + i) * 4 + (2 * c + j)] for i in range(2) for j in range(2)]
                np.testing.assert_allclose(pooled.embeddings["10x"][cell, r * 2 + c], np.mean(children, 0), atol=2e-3)
        np.testing.assert_allclose(pooled.embeddings["5x"][cell, 0], fine[cell].mean(0), atol=2e-3)
    assert np.array_equal(pooled.embeddings["20x"], store.embeddings["20x"])  # the finest level is untouched
    assert pooled.embeddings["5x"].dtype == store.embeddings["5x"].dtype
    assert not np.allclose(pooled.embeddings["5x"], store.embeddings["5x"])  # the encoder's 5x features are gone


def test_pooled_stores_are_another_embedding_space(tmp_path):
    store = synthetic_store("s1", n_rows=2, n_cols=2, dim=4, seed=0)
    pooled = pool_from_finest(store)
    assert pooled.header.pooled_from == "20x"
    assert EmbeddingSpace.of(pooled.header).differences(EmbeddingSpace.of(store.header)) == ["pooled_from"]
    assert "pooled_from" not in EmbeddingSpace.of(store.header).key()  # unset: older records keep their key
    write_store(tmp_path / "s1.h5", pooled)
    assert read_store(tmp_path / "s1.h5").header.pooled_from == "20x"


def test_store_pool_command_writes_new_stores_and_never_overwrites(tmp_path):
    src = tmp_path / "stores"
    src.mkdir()
    for k in range(2):
        write_store(src / f"s{k}.h5", synthetic_store(f"s{k}", n_rows=2, n_cols=2, dim=4, seed=k))
    result = CliRunner().invoke(
        app, ["store", "pool", *map(str, sorted(src.glob("*.h5"))), "--out", str(tmp_path / "p")]
    )
    assert result.exit_code == 0, result.output
    assert read_store(tmp_path / "p" / "s0.h5").header.pooled_from == "20x"
    again = CliRunner().invoke(app, ["store", "pool", str(src / "s0.h5"), "--out", str(src)])
    assert again.exit_code == 1 and "overwrite" in again.output
    twice = CliRunner().invoke(app, ["store", "pool", str(tmp_path / "p" / "s0.h5"), "--out", str(tmp_path / "q")])
    assert twice.exit_code == 1 and "already pooled" in twice.output


def test_a_store_whose_finest_level_is_not_a_full_grid_is_refused():
    store = synthetic_store("s1", n_rows=1, n_cols=1, dim=4, seed=0)
    store.embeddings = {"5x": store.embeddings["5x"], "20x": store.embeddings["20x"]}  # two levels, 16 tiles
    with pytest.raises(MixmagError, match="cannot be pooled"):
        pool_from_finest(store)


def test_the_benchmark_runs_the_rival_on_pooled_stores(tmp_path):
    """The finest level is untouched by pooling, so AB-MIL 20x on the pooled stores is AB-MIL 20x (the same AUROC per
    seed, the same run in all but folder); AB-MIL all x meets its real-store twin in a paired test."""
    from test_benchmark import _tiny_benchmark

    from mixmag.studies.benchmark import run_benchmark

    config = _tiny_benchmark(tmp_path / "b", rival_tasks=["fine"], rival_methods=["abmil-20x", "abmil-all"])
    result = run_benchmark(config)
    real = {c.method: c.seeds for c in result["cells"]}
    rival = {c.method: c.seeds for c in result["rival"]["cells"]}
    assert rival["abmil-20x"] == real["abmil-20x"]
    rival_runs = tmp_path / "b" / "results-rival" / "fine" / "abmil-all"
    real_scores = (tmp_path / "b" / "results" / "fine" / "abmil-all" / "seed0" / "predictions_test.csv").read_text()
    assert (rival_runs / "seed0" / "predictions_test.csv").read_text() != real_scores  # it read the pooled 5x/10x
    pooled_rows = (tmp_path / "b" / "data" / "fine-pooled.csv").read_text()
    assert "stores-pooled" in pooled_rows and "/stores/" not in pooled_rows
    assert [(p.method, p.against) for p in result["rival"]["pairs"]] == [
        ("abmil-20x", "abmil-20x (20x-pooled)"),
        ("abmil-all", "abmil-all (20x-pooled)"),
    ]
    text = (tmp_path / "b" / "benchmark.md").read_text()
    assert "The 20x-only rival" in text and "abmil-all (20x-pooled)" in text
    assert read_store(next((tmp_path / "b" / "data" / "stores-pooled").glob("*.h5"))).header.pooled_from == "20x"


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"rival_tasks": ["coarse"], "tasks": ["fine"]}, "not among the tasks"),
        ({"rival_tasks": ["fine"], "rival_methods": ["abmil-all", "MEM-patch-frozen"]}, "AB-MIL methods"),
        ({"rival_tasks": ["fine"], "rival_methods": ["abmil-all"]}, "include the baseline"),
    ],
)
def test_rival_settings_are_checked_when_the_config_is_read(tmp_path, changes, said):
    import yaml

    from mixmag.errors import ConfigError
    from mixmag.studies.benchmark import load_benchmark_config

    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(changes))
    with pytest.raises(ConfigError, match=said):
        load_benchmark_config(path)


def test_predict_pools_new_stores_for_a_run_on_pooled_stores_and_one_bad_store_stays_its_slides(tmp_path):
    from mixmag.stages.predict import pool_stores

    good = write_store(tmp_path / "a.h5", synthetic_store("a", n_rows=2, n_cols=2, dim=4, seed=0))
    bad = tmp_path / "b.h5"
    bad.write_bytes(b"not hdf5")
    pooled, problems = pool_stores({"a": good, "b": bad}, tmp_path / "pooled")
    assert read_store(pooled["a"]).header.pooled_from == "20x" and list(problems) == ["b"]


def test_the_pixel_benchmark_runs_the_rival_and_says_what_embedding_only_20x_saves(tmp_path):
    """configs/demo-small.yaml (the pixel benchmark's small twin) with the rival on fine: the pooled stores leave the
    20x tiles as they were, so AB-MIL 20x scores the same on them; AB-MIL all x reads other 5x/10x tokens; the saving
    is the 5x and 10x tiles' share (5 of 21 at three levels) of the embedding stage's measured time."""
    import json
    from pathlib import Path

    import yaml

    from mixmag.studies.demo import DemoConfig, run_demo
    from mixmag.studies.rival import embedding_saving
    from mixmag.train.pretrain import store_paths

    shipped = yaml.safe_load(open(Path(__file__).resolve().parents[1] / "configs" / "demo-small.yaml"))
    config = DemoConfig(
        **shipped
        | {
            "out": str(tmp_path / "d"),
            "methods": ["abmil-20x", "abmil-all"],
            "n_boot": 100,
            "rival_tasks": ["fine"],
            "rival_methods": ["abmil-20x", "abmil-all"],
        }
    )
    assert run_demo(config) == 0
    out = tmp_path / "d"
    real = json.loads((out / "results" / "results.json").read_text())
    rival = json.loads((out / "results-rival" / "results.json").read_text())
    assert rival["fine"]["abmil-20x"] == real["fine"]["abmil-20x"]
    scores = [
        (out / r / "fine" / "abmil-all" / "seed0" / "predictions_test.csv").read_text()
        for r in ("results", "results-rival")
    ]
    assert scores[0] != scores[1]
    embed = next(v for k, v in json.loads((out / "timings.json").read_text()).items() if k.startswith("3. embed"))
    saving = embedding_saving(store_paths(out / "stores"), embed)
    assert saving["share"] == pytest.approx(5 / 21) and saving["saved_seconds"] == pytest.approx(5 / 21 * embed)
    text = (out / "results" / "rival.md").read_text()
    assert f"{saving['tiles_not_embedded']:,} of the {saving['tiles']:,} tiles" in text
    assert "fine | abmil-all | abmil-all (20x-pooled)" in text
    with pytest.raises(ValueError, match="needs n_boot > 0"):
        DemoConfig(**shipped | {"rival_tasks": ["fine"]})
