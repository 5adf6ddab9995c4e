"""Hostile inputs to the newer surfaces: `store export --mixer` and `store pool` over damaged stores, annotation
files that are links or FIFOs, damaged `.mixmag` folders, cross-validated run folders with odd fold folders. One
bad slide is that slide's failure, said in one sentence; the rest of the batch is done."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_interop import make_store
from train_runs import train_config
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.models.mixer import RegionMixer, mixer_config
from mixmag.stages.crossval import run_cross_validation
from mixmag.synth.patterns import tissue_like
from mixmag.synth.slide_writer import write_slide
from mixmag.train.crossval import CrossValConfig
from mixmag.train.mixer_file import export_mixer


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture()
def mixer_and_store(tmp_path) -> tuple[Path, Path]:
    """A 3-level store and a small random mixer for it (its run folder)."""
    store, _ = make_store(tmp_path)
    cfg = mixer_config("tiny", in_dim=6, t=2, n_levels=3)
    torch.manual_seed(0)
    (tmp_path / "run").mkdir()
    export_mixer(tmp_path / "run", RegionMixer(cfg), cfg, {"preset": "tiny"}, {})
    return tmp_path / "run", store


def _damaged(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.h5"
    if kind == "not-hdf5":
        path.write_bytes(b"not an HDF5 file")
    elif kind == "fifo":
        os.mkfifo(path)
    return path  # "missing": never made


@pytest.mark.parametrize("kind", ["not-hdf5", "missing", "fifo"])
def test_one_unreadable_store_never_stops_a_mixer_export(mixer_and_store, tmp_path, kind):
    """Before: every store's header was read before the first export, so a file that is not HDF5 or is gone stopped
    the whole batch with an h5py traceback, and a FIFO stopped it with nothing exported."""
    run, store = mixer_and_store
    bad, out = _damaged(tmp_path, kind), tmp_path / "out"
    result = _invoke("store", "export", bad, store, "--mixer", run, "--format", "clam", "--out", out)
    assert result.exit_code == 1, (result.output, result.exception)
    assert "Traceback" not in result.output
    said = [line for line in result.output.splitlines() if line.startswith(str(bad))]
    assert len(said) == 1 and ("run `mixmag embed`" in said[0] or "FIFO" in said[0]), result.output
    assert (out / "regions" / "h5_files" / store.name).is_file()  # the good store was exported


def test_a_store_export_with_only_unreadable_stores_says_each(mixer_and_store, tmp_path):
    run, _ = mixer_and_store
    bad = [_damaged(tmp_path, "not-hdf5"), _damaged(tmp_path, "missing")]
    result = _invoke("store", "export", *bad, "--mixer", run, "--format", "trident", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert all(sum(line.startswith(str(b)) for line in result.output.splitlines()) == 1 for b in bad), result.output


def test_one_damaged_store_never_stops_encode(mixer_and_store, tmp_path):
    """Before: a store whose header reads but which lists no regions stopped `mixmag encode` at that slide (exit 2,
    the slides after it never encoded, nothing said about them)."""
    import h5py

    run, store = mixer_and_store
    bad = store.parent / "a-bad.h5"  # sorted first: the good store comes after it
    shutil.copy(store, bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["slide_id"] = "a-bad"
        del f["windows"]
    out = tmp_path / "enc"
    result = _invoke("encode", "--mixer", run / "mixer.safetensors", "--stores", store.parent, "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output, (result.output, result.exception)
    said = [line for line in result.output.splitlines() if line.startswith(str(bad))]
    assert len(said) == 1 and "left out" in said[0] and "lists no regions" in said[0], result.output
    assert (out / store.name).is_file() and not (out / bad.name).exists()
    assert "1 encoded, 0 skipped (current), 1 failed" in " ".join(result.output.split()), result.output


def test_a_pool_into_a_link_to_the_stores_folder_never_overwrites_a_store(mixer_and_store, tmp_path):
    _, store = mixer_and_store
    (tmp_path / "alias").symlink_to(store.parent)
    before = store.read_bytes()
    result = _invoke("store", "pool", store, "--out", tmp_path / "alias")
    assert result.exit_code == 1 and "overwrite the store it reads" in result.output, result.output
    assert store.read_bytes() == before


# -- `mixmag tile --annotations`: a file in the wrong frame, a FIFO ----------------------------------------------------


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    """A real 384 x 384 um slide (768 px at 0.5 um/px), all tissue."""
    folder = tmp_path_factory.mktemp("annotated")
    image = tissue_like(768, 768, 0.5, seed=3, tissue_mask=np.ones((8, 8), bool))
    return write_slide(folder / "s.tiff", image, 0.5, downsamples=(1, 4))


def _tile_with(slide: Path, out: Path, annotations: Path):
    return _invoke("tile", slide, "--out", out, "--tile-px", 32, "--annotations", annotations)


def test_annotations_that_lie_outside_the_slide_are_said_not_blamed_on_the_tissue(slide, tmp_path):
    """Before: 'no tissue found; check the slide, or the tissue settings (--min-saturation)', for a slide all tissue
    whose annotations were drawn on another image."""
    square = [[[1e6, 1e6], [2e6, 1e6], [2e6, 2e6], [1e6, 2e6], [1e6, 1e6]]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square}, "properties": {}}
    path = tmp_path / "s.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    result = _tile_with(slide, tmp_path / "tiles", path)
    assert "Traceback" not in result.output
    said = " ".join(result.output.split())
    assert "lie outside this 768 x 768 px slide" in said and "another image" in said, result.output


@pytest.mark.parametrize("where", ["file", "folder"])
def test_an_annotation_fifo_is_said_to_be_a_fifo(slide, tmp_path, where):
    """Before: a FIFO given as the file was 'no such annotation file or folder', and one in the folder was not
    looked at ('no annotation file in ... looked for s.geojson') although s.geojson was there."""
    folder = tmp_path / "annotations"
    folder.mkdir()
    os.mkfifo(folder / "s.geojson")
    result = _tile_with(slide, tmp_path / "tiles", folder / "s.geojson" if where == "file" else folder)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "FIFO" in " ".join(result.output.split()), result.output


# -- predict with a cross-validated run folder whose folds were tampered with ------------------------------------------


@pytest.fixture(scope="module")
def cross_validated(small_cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cv") / "run"
    cv = CrossValConfig(folds=3, tune_fraction=0.34, group_by="specimen")
    run_cross_validation(train_config(small_cohort, out, epochs=1, cv=cv))
    return out


def _tampered(cross_validated: Path, tmp_path: Path, how: str) -> Path:
    run = tmp_path / "run"
    shutil.copytree(cross_validated, run, symlinks=True)
    shutil.rmtree(run / "fold-1")
    if how == "link":
        (run / "fold-1").symlink_to(run / "fold-0")
    else:
        shutil.copytree(run / "fold-0", run / "fold-1")
    return run


def _predict_one(run: Path, small_cohort: Path, tmp_path: Path):
    return _invoke(
        "predict", "--run", run, "--stores", small_cohort / "stores", "P000-S0", "--out", tmp_path / "p.csv",
        "--no-heatmaps",
    )  # fmt: skip


@pytest.mark.parametrize("how", ["link", "copy"])
def test_predict_refuses_a_fold_that_is_another_fold(cross_validated, small_cohort, tmp_path, how):
    """Before: a fold-1 that links to (or is a copy of) fold-0 was averaged in as 'an ensemble of 3 folds'."""
    run = _tampered(cross_validated, tmp_path, how)
    result = _predict_one(run, small_cohort, tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    said = " ".join(result.output.split())
    assert f"{run / 'fold-1'}: " in said and ("a link" in said if how == "link" else "fold-0 tests too" in said)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("command", ["predict", "report"])
def test_a_fold_folder_beyond_the_summarys_count_is_refused(cross_validated, small_cohort, tmp_path, command):
    """Before: a fold-3 beside cv.json's 3 folds (fold-0..2) was left out silently: predict averaged three folds and
    the report described three, with a fourth trained model in the folder."""
    run = tmp_path / "run"
    shutil.copytree(cross_validated, run)
    shutil.copytree(run / "fold-2", run / "fold-3")
    if command == "predict":
        result = _predict_one(run, small_cohort, tmp_path)
    else:
        result = _invoke("report", run, "--no-heatmaps")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    said = " ".join(result.output.split())
    assert f"{run / 'fold-3'}: a fold folder beyond the 3 folds cv.json lists" in said, said


def test_a_cross_validation_with_fewer_folds_removes_the_earlier_extra_folds(cross_validated, small_cohort, tmp_path):
    """Its own rerun never leaves a folder the refusal above would stop: the earlier run's fold-2 goes."""
    run = tmp_path / "run"
    shutil.copytree(cross_validated, run)
    cv = CrossValConfig(folds=2, tune_fraction=0.34, group_by="specimen")
    run_cross_validation(train_config(small_cohort, run, epochs=1, cv=cv))
    assert sorted(p.name for p in run.glob("fold-*")) == ["fold-0", "fold-1"]


@pytest.mark.parametrize("how", ["link", "huge", "fifo", "folder", "dangling"])
def test_plan_says_why_its_only_plan_cannot_be_read(slide, tmp_path, how):
    """Before: 'no readable tiling plan among 1: tile the slides first', for a plan.json that is there but is a link
    or 5 MB of brackets; and a plan.json that is a FIFO, a folder or a dangling link was warned about as 'no
    plan.json' (a folder as '.../plan.json/plan.json: no tiling plan')."""
    tiles = tmp_path / "tiles"
    assert _invoke("tile", slide, "--out", tiles, "--tile-px", 32).exit_code == 0
    plan = tiles / "s" / "plan.json"
    plan.unlink()
    if how == "link":
        plan.symlink_to(tmp_path / "elsewhere.json")
        (tmp_path / "elsewhere.json").write_text("{}")
    elif how == "fifo":
        os.mkfifo(plan)
    elif how == "folder":
        plan.mkdir()
    elif how == "dangling":
        plan.symlink_to(tmp_path / "nowhere.json")
    else:
        plan.write_bytes(b"[" * 5_000_000)
    result = _invoke("plan", tiles, "--encoder", "stats")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    said = " ".join(result.output.split())
    assert "slide s: " in said and f"{plan}: " in said and "no plan.json" not in said, result.output
    what = {"fifo": "is a FIFO", "folder": "is a folder", "dangling": "a link to a missing file"}.get(how, "")
    assert what in said, said


@pytest.mark.parametrize("url", ["https://127.0.0.1:99999/x.svs", "https://[::1/x.svs", "https:///x.svs"])
def test_a_malformed_slide_address_is_said_and_the_batch_goes_on(slide, tmp_path, url):
    """Before: a port past 65535 or an unclosed IPv6 bracket was 'no such object in the storage; check the URL (the
    key is case-sensitive)'."""
    result = _invoke("tile", url, slide, "--out", tmp_path / "tiles", "--tile-px", 32)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    said = " ".join(result.output.split())
    assert "no such object" not in said and ("not a valid address" in said or "names no host" in said), said
    assert (tmp_path / "tiles" / "s" / "plan.json").is_file()  # the good slide was tiled


def test_predict_refuses_folds_trained_differently(cross_validated, small_cohort, tmp_path):
    """Before: a fold-1 whose config.json says `bags: all` beside fold-0's 20x was averaged in silently."""
    run = tmp_path / "run"
    shutil.copytree(cross_validated, run)
    config = run / "fold-1" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"bags": "all"}))
    result = _predict_one(run, small_cohort, tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    said = " ".join(result.output.split())
    assert f"{config}: `bags` is 'all' but fold-0's is '20x'" in said, said
