import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_tissue_slide
from torch import nn
from typer.testing import CliRunner

from mixmag.catalog import CATALOG_NAME, PARTS_NAME, refresh_catalog
from mixmag.cli import app
from mixmag.encoders.model import build_encoder
from mixmag.encoders.registry import EncoderPreset, InputTransform, register_preset
from mixmag.slides.pyramids import read_pyramid
from mixmag.slides.sources import SlideSource
from mixmag.slides.tiling import TilingParams, load_plan
from mixmag.stages.embed import find_plans, run_embed, shard
from mixmag.stages.tile import tile_slides
from mixmag.store import read_store

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def plans_dir(tmp_path_factory, real_svs):
    d = tmp_path_factory.mktemp("embed")
    slides = [SlideSource(real_svs, "cmu")]
    for i, size in enumerate([(2600, 2200), (2000, 1900)]):
        slides.append(
            SlideSource(
                make_tissue_slide(d, f"gen{i}.tiff", size=size, seed=10 + i, tissue_mask=np.ones((4, 4), bool)),
                f"gen{i}",
            )
        )
    tile_slides(slides, d / "plans", TilingParams(region_size=1))
    return d / "plans"


def test_shard_balances_by_cells():
    parts = shard([10, 1, 7, 3, 3], 2)
    assert sorted(sum(parts, [])) == [0, 1, 2, 3, 4]
    loads = [sum([10, 1, 7, 3, 3][i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= 2
    assert shard([5], 3) == [[0], [], []]


@pytest.mark.parametrize("encoder_name", ["stats", "tiny-vit"])
def test_store_holds_the_encoder_applied_to_the_tiler_tiles(tmp_path, plans_dir, encoder_name):
    encoder = build_encoder(encoder_name)
    results = run_embed(find_plans(plans_dir, ["cmu"]), tmp_path, encoder, device=CPU, workers=0)
    assert [r.outcome for r in results] == ["embedded"]
    store = read_store(tmp_path / "cmu.h5")
    plan = load_plan(plans_dir / "cmu")
    assert [tuple(rc) for rc in store.rc.tolist()] == [tuple(c) for c in plan.cells]
    assert [store.embeddings[n].shape[1] for n in ("5x", "10x", "20x")] == [1, 4, 16]
    assert store.attrs["encoder"] == encoder_name and store.attrs["slide_mpp"] == pytest.approx(0.499)
    with plan.open_slide() as slide, torch.inference_mode():
        for k in range(min(2, len(plan.cells))):
            pyramid = read_pyramid(slide, plan.grid, plan.levels, *plan.cells[k])
            for name, tiles in zip(("5x", "10x", "20x"), pyramid.tiles):
                expected = encoder(torch.from_numpy(tiles)).numpy()
                np.testing.assert_allclose(store.embeddings[name][k], expected, rtol=2e-3, atol=2e-3)


def test_rerun_skips_current_stores_and_redoes_changed_ones(tmp_path, plans_dir):
    enc = build_encoder("stats")
    first = run_embed(find_plans(plans_dir), tmp_path, enc, device=CPU, workers=0)
    assert {r.outcome for r in first} == {"embedded"}
    catalog, report = refresh_catalog(
        tmp_path, write=False
    )  # each landed store was recorded in the rank's catalog part
    assert len(catalog) == 3 and report.new == [] and not report.changed
    again = run_embed(find_plans(plans_dir), tmp_path, enc, device=CPU, workers=0)
    assert {r.outcome for r in again} == {"skipped"}
    other = run_embed(find_plans(plans_dir), tmp_path, build_encoder("tiny-vit"), device=CPU, workers=0)
    assert {r.outcome for r in other} == {"embedded"}


def test_a_run_killed_midway_resumes_without_redoing_finished_slides(tmp_path, plans_dir, monkeypatch):
    import mixmag.stages.embed as stage

    enc = build_encoder("stats")
    real_write = stage.write_store
    calls = []

    def write_then_die(path, store):
        if calls:
            # the process dies while writing the second store: a partial file is left behind
            (path.parent / f".{path.name}.999.partial").write_bytes(b"half an HDF5 file")
            raise KeyboardInterrupt
        calls.append(path)
        return real_write(path, store)

    monkeypatch.setattr(stage, "write_store", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_embed(find_plans(plans_dir), tmp_path, enc, device=CPU, workers=0)
    done = sorted(p.name for p in tmp_path.glob("*.h5"))
    assert len(done) == 1  # one complete store; the half-written one does not look like a store
    monkeypatch.setattr(stage, "write_store", real_write)
    results = run_embed(find_plans(plans_dir), tmp_path, enc, device=CPU, workers=0)
    outcomes = {r.slide_id: r.outcome for r in results}
    assert outcomes[done[0][:-3]] == "skipped"
    assert sorted(outcomes.values()).count("embedded") == 2
    for path in tmp_path.glob("*.h5"):
        read_store(path)


def test_nan_embeddings_fail_that_slide_and_name_it(tmp_path, plans_dir):
    class Broken(nn.Module):
        num_prefix_tokens = 1

        def forward_features(self, x):
            out = x.mean(dim=(2, 3))[:, None, :]
            return out / (x.mean() > 2).float()  # 0/0 and x/0: NaN and Inf

    register_preset(
        EncoderPreset(
            name="broken",
            description="test",
            dim=3,
            builder=Broken,
            needs_weights=False,
            transform=InputTransform(mean=(0, 0, 0), std=(1, 1, 1)),
        ),
        replace=True,
    )
    results = run_embed(find_plans(plans_dir, ["gen0"]), tmp_path, build_encoder("broken"), device=CPU, workers=0)
    assert results[0].outcome == "failed"
    assert "gen0" in results[0].error and "NaN or Inf" in results[0].error
    assert not (tmp_path / "gen0.h5").exists()


def test_workers_give_the_same_store_as_the_main_process(tmp_path, plans_dir):
    enc = build_encoder("tiny-vit")
    run_embed(find_plans(plans_dir, ["gen0"]), tmp_path / "w0", enc, device=CPU, workers=0, cells_per_batch=3)
    run_embed(find_plans(plans_dir, ["gen0"]), tmp_path / "w2", enc, device=CPU, workers=2, cells_per_batch=3)
    a, b = read_store(tmp_path / "w0" / "gen0.h5"), read_store(tmp_path / "w2" / "gen0.h5")
    for name in a.embeddings:
        np.testing.assert_array_equal(a.embeddings[name], b.embeddings[name])


def test_two_ranks_under_torchrun_match_one_process(tmp_path, plans_dir):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    args = [
        "-m",
        "mixmag.cli",
        "embed",
        "--plans",
        str(plans_dir),
        "--encoder",
        "tiny-vit",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    one = subprocess.run(
        base + ["1"] + args + ["--out", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        base + ["2"] + args + ["--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert "x 2 ranks" in two.stdout and "Done: 3 embedded" in two.stdout  # rank 0 counts every rank's slides
    names = sorted(p.name for p in (tmp_path / "one").glob("*.h5"))
    assert names == sorted(p.name for p in (tmp_path / "two").glob("*.h5")) and len(names) == 3
    catalog, report = refresh_catalog(tmp_path / "two", write=False)  # both ranks' parts were folded by rank 0
    assert len(catalog) == 3 and not report.changed and not list((tmp_path / "two" / PARTS_NAME).iterdir())
    for name in names:
        a, b = read_store(tmp_path / "one" / name), read_store(tmp_path / "two" / name)
        for level in a.embeddings:
            np.testing.assert_array_equal(a.embeddings[level], b.embeddings[level])


def test_cli_errors_and_store_tools(tmp_path, plans_dir):
    runner = CliRunner()
    result = runner.invoke(app, ["embed", "--plans", str(plans_dir), "--out", str(tmp_path), "--encoder", "virchow3"])
    assert result.exit_code == 2 and "known presets" in result.output
    result = runner.invoke(app, ["embed", "--plans", str(plans_dir), "--out", str(tmp_path), "--encoder", "uni"])
    assert result.exit_code == 2 and "--weights PATH" in result.output
    result = runner.invoke(app, ["embed", "--plans", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no tiling plans" in result.output
    result = runner.invoke(
        app, ["embed", "--plans", str(plans_dir), "--out", str(tmp_path / "s"), "--encoder", "stats", "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    stores = sorted((tmp_path / "s").glob("*.h5"))
    assert runner.invoke(app, ["store", "validate", *map(str, stores)]).exit_code == 0
    assert (tmp_path / "s" / CATALOG_NAME).is_file() and not list(
        (tmp_path / "s" / PARTS_NAME).iterdir()
    )  # parts folded
    result = runner.invoke(
        app,
        [
            "embed",
            "--plans",
            str(plans_dir),
            "--cohort",
            str(_one_slide_table(tmp_path, stores[0].stem)),
            "--out",
            str(tmp_path / "t"),
            "--encoder",
            "tiny-vit",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    (tmp_path / "bad.csv").write_text("specimen,label\nA,1\n")
    result = runner.invoke(
        app, ["embed", "--plans", str(plans_dir), "--cohort", str(tmp_path / "bad.csv"), "--encoder", "stats"]
    )
    assert result.exit_code == 2 and "bad.csv: needs a 'slide' column" in result.output
    other = tmp_path / "t" / stores[0].name  # the same slide, another encoder: every store valid, the set is not
    result = runner.invoke(app, ["store", "validate", str(other), *map(str, stores[1:])])
    assert result.exit_code == 1 and "encoder: " in result.output and other.name in result.output
    assert runner.invoke(app, ["store", "export", str(stores[0]), "--out", str(tmp_path / "tri")]).exit_code == 0
    slide = stores[0].stem
    result = runner.invoke(
        app,
        [
            "store",
            "import",
            str(tmp_path / "tri"),
            "--plans",
            str(plans_dir),
            "--slide",
            slide,
            "--out",
            str(tmp_path / "back"),
        ],
    )
    assert result.exit_code == 0, result.output
    a, b = read_store(stores[0]), read_store(tmp_path / "back" / f"{slide}.h5")
    for level in a.embeddings:
        np.testing.assert_array_equal(a.embeddings[level], b.embeddings[level])


def test_a_slide_that_fails_to_decode_midway_fails_alone(tmp_path, plans_dir):
    import tifffile

    source = make_tissue_slide(tmp_path, "bad.tiff", size=(2600, 2200), seed=21, tissue_mask=np.ones((4, 4), bool))
    tile_slides([SlideSource(source, "bad")], plans_dir.parent / "plans-bad", TilingParams(region_size=1))
    with tifffile.TiffFile(source) as tif:  # damage one tile of the full-resolution level, after tiling
        page = tif.pages[0]
        middle = len(page.dataoffsets) // 2
        offset, count = page.dataoffsets[middle], page.databytecounts[middle]
    with open(source, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * count)
    plans = find_plans(plans_dir.parent / "plans-bad", ["bad"]) + find_plans(plans_dir, ["gen1"])
    results = {
        r.slide_id: r for r in run_embed(plans, tmp_path / "stores", build_encoder("stats"), device=CPU, workers=2)
    }
    assert (
        results["bad"].outcome == "failed"
        and "bad.tiff" in results["bad"].error
        and "could not decode" in results["bad"].error
    )
    assert not (tmp_path / "stores" / "bad.h5").exists()
    assert results["gen1"].outcome == "embedded" and read_store(tmp_path / "stores" / "gen1.h5").rc.shape[0] > 0


def _one_slide_table(folder, slide_id):
    table = folder / f"{slide_id}.csv"
    table.write_text(f"slide\n{slide_id}\n")
    return table


def test_progress_counts_tiles_after_the_encoder_ran_and_reaches_the_total(tmp_path, plans_dir):
    """`mixmag embed`'s bar moves with embedded tiles, not cells loaded (issue 30: 2/2 with a frozen clock)."""
    encoder = build_encoder("stats")
    embedded = [0]
    encoder.register_forward_hook(lambda module, args, output: embedded.__setitem__(0, embedded[0] + len(args[0])))
    totals, counts = [], []

    def on_batch(tiles: int) -> None:
        counts.append(tiles)
        assert sum(counts) == embedded[0]  # counted once the encoder has embedded them

    run_embed(
        find_plans(plans_dir),
        tmp_path,
        encoder,
        device=CPU,
        workers=0,
        cells_per_batch=2,
        on_start=totals.append,
        on_batch=on_batch,
    )
    cells = sum(len(load_plan(p).cells) for p in find_plans(plans_dir))
    assert totals == [21 * cells] and sum(counts) == 21 * cells and len(counts) > 1
    assert all(n % 21 == 0 and n <= 42 for n in counts)  # whole cells of 21 tiles, at most one batch of 2 cells


def test_embed_cli_shows_tiles_with_a_rate_and_time_left(tmp_path, plans_dir):
    result = CliRunner().invoke(
        app, ["embed", "--plans", str(plans_dir), "--out", str(tmp_path), "--encoder", "stats", "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    cells = sum(len(load_plan(p).cells) for p in find_plans(plans_dir))
    assert "tiles embedded" in result.output and f"{21 * cells}/{21 * cells}" in result.output
    assert "tiles/s" in result.output and "left" in result.output
