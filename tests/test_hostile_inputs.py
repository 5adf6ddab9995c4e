"""Hostile and damaged inputs (issue 11 §1-4, §8): ids that would escape their folder, ambiguous tables, forged
stores, one bad store in a batch. Each failure is one sentence naming the input, never a traceback, and nothing is
written outside the output folder. The stores are made here, small: one real slide tiled and embedded once."""

from __future__ import annotations

import csv
import html
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_world import N_SLIDES, _box, _files, _invoke, _write_table, _written_outside, make_world

from mixmag.data.cohort import load_cohort
from mixmag.errors import CohortError
from mixmag.report.html import build_report
from mixmag.store import StoreError, read_index, read_store
from mixmag.synth.patterns import tissue_like
from mixmag.synth.slide_writer import write_slide


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return make_world(tmp_path_factory.mktemp("hostile"))


def _forge(path: Path, **changes) -> Path:
    """Rewrite a store's datasets or attributes in place: name=array for datasets, attrs={...} for attributes."""
    with h5py.File(path, "r+") as f:
        for key, value in changes.pop("attrs", {}).items():
            if value is None:
                del f.attrs[key]
            else:
                f.attrs[key] = value
        for name, data in changes.items():
            name = name.replace("__", "/")
            del f[name]
            if isinstance(data, tuple):  # a declared shape and dtype, no data
                f.create_dataset(name, shape=data[0], dtype=data[1])
            else:
                f.create_dataset(name, data=data)
    return path


# -- 1. Path safety ---------------------------------------------------------------------------------------------------


def test_store_validate_refuses_a_store_whose_slide_id_would_escape(tmp_path, world):
    store = _forge(
        shutil.copy(world["stores"] / "S00.h5", tmp_path / "S00.h5"), attrs={"slide_id": "/elsewhere/ESCAPED"}
    )
    result = _invoke("store", "validate", store, world["stores"] / "S01.h5")
    assert result.exit_code == 1
    assert "slide_id '/elsewhere/ESCAPED' is not a safe file name" in result.output
    assert "S01.h5: ok" in result.output  # the rest of the batch is still checked
    with pytest.raises(StoreError, match="not a safe file name"):
        read_store(store)
    with pytest.raises(StoreError, match="not a safe file name"):
        read_index(store)


@pytest.mark.parametrize("how", ["argument", "cohort"])
def test_predict_refuses_slide_ids_that_leave_the_stores_folder(tmp_path, world, how):
    stores = _box(tmp_path, world)
    shutil.copy(world["stores"] / "S12.h5", tmp_path / "ESC9.h5")  # what ../../ESC9 reaches from the stores folder
    before = _files(tmp_path)
    out = tmp_path / "a" / "out" / "p.csv"
    if how == "argument":
        ids = ["S12", "../../ESC9"]
    else:
        table = _write_table(tmp_path / "a" / "new.csv", ["specimen", "slide"], [["X", "S12"], ["Y", "../../ESC9"]])
        before = _files(tmp_path)
        ids = ["--cohort", table]
    result = _invoke("predict", "--run", world["run"], "--stores", stores, *ids, "--out", out)
    assert result.exit_code == 2, result.output
    assert "'../../ESC9' is not a safe file name" in result.output and "Traceback" not in result.output
    assert _written_outside(tmp_path, before, out, out.with_name("p_work")) == []  # the CSV and its work folder


def test_train_refuses_cohort_ids_that_tile_refuses(tmp_path, world):
    rows = [[*r[:4], str(world["stores"] / f"{r[1]}.h5")] for r in world["rows"]]
    rows[0][1], rows[1][1] = "../../../../ESC9", "/abs/ABS10"
    table = _write_table(tmp_path / "escape.csv", ["specimen", "slide", "label", "split", "store"], rows)
    with pytest.raises(
        CohortError,
        match=r"row 2: slide id '\.\./\.\./\.\./\.\./ESC9' is not a safe file name.*row 3: slide id '/abs/ABS10'",
    ):
        load_cohort(table)
    config = tmp_path / "train.yaml"
    config.write_text(
        f"cohort: {table}\nstores: {world['stores']}\nout: {tmp_path / 'run'}\nepochs: 1\nbootstrap: 100\n"
    )
    before = _files(tmp_path)
    result = _invoke("train", "--config", config)
    assert result.exit_code == 2 and "is not a safe file name" in result.output, result.output
    assert _written_outside(tmp_path, before, tmp_path / "run") == []


def test_embed_refuses_cohort_slide_ids_that_leave_the_plans_folder(tmp_path, world):
    table = _write_table(tmp_path / "some.csv", ["slide"], [["s"], ["../../ESC"]])
    result = _invoke(
        "embed", "--cohort", table, "--plans", world["dir"] / "tiles", "--out", tmp_path / "out", "--encoder", "stats"
    )
    assert result.exit_code == 2 and "row 3: slide id '../../ESC' is not a safe file name" in result.output, (
        result.output
    )
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def world_report(world) -> str:
    """The world run's report, words only (the pictures' bytes left out)."""
    return re.sub(r"src='[^']*'", "", html.unescape(build_report(world["run"]).read_text()))


def test_report_finds_stores_through_the_cohort_store_column(world_report):
    """The run's stores folder holds no store: the table's `store` column says where they are."""
    text = world_report
    assert "Heatmaps not drawn" not in text, text[text.find("Heatmaps not drawn") :][:400]
    assert text.count("alt='heatmaps of") >= 6


def test_report_never_writes_outside_the_run_folder(tmp_path, world):
    """A run folder is a file a user may be handed: a slide id in its predictions must not place heatmaps elsewhere."""
    run = tmp_path / "box" / "run"
    shutil.copytree(world["run"], run)
    with (run / "predictions_test.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    top = max((r for r in rows if r["label"] == "1"), key=lambda r: float(r["score"]))
    top["slides"] = "../../ESC"
    with (run / "predictions_test.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    stores = tmp_path / "box" / "run-stores"
    shutil.copytree(world["stores"], stores)
    shutil.copy(world["stores"] / "S00.h5", tmp_path / "ESC.h5")  # where run-stores/../../ESC.h5 points
    config = run / "config.json"
    config.write_text(config.read_text().replace(str(world["dir"] / "no-stores-here"), str(stores)))
    before = _files(tmp_path)
    text = html.unescape(build_report(run).read_text())
    assert _written_outside(tmp_path, before, run) == []
    assert "'../../ESC'" in text and "not a safe file name" in text
    assert text.count("alt='heatmaps of") >= 3  # the other chosen slides are still drawn


def test_embed_refuses_a_plan_whose_slide_id_would_escape(tmp_path, world):
    plans = tmp_path / "tiles"
    shutil.copytree(world["dir"] / "tiles" / "s", plans / "s")
    plan = plans / "s" / "plan.json"
    plan.write_text(plan.read_text().replace('"slide_id": "s"', '"slide_id": "../../ESC"'))
    before = _files(tmp_path)
    out = tmp_path / "x" / "out"  # ../../ESC.h5 from there is tmp_path/ESC.h5
    result = _invoke("embed", "--plans", plans, "--out", out, "--encoder", "stats", "--workers", 0, "--device", "cpu")
    assert result.exit_code == 1 and "not a safe file name" in result.output and "Traceback" not in result.output
    assert _written_outside(tmp_path, before, out) == []


# -- 2. Tables ---------------------------------------------------------------------------------------------------------


def test_a_column_named_twice_is_an_error_naming_it(tmp_path, world):
    rows = [[*r, 1 - r[2]] for r in world["rows"]]  # a second 'label', flipped
    table = _write_table(tmp_path / "twice.csv", ["specimen", "slide", "label", "split", "store", "label"], rows)
    with pytest.raises(CohortError, match="'label' appear more than once"):
        load_cohort(table, require_stores=False)
    slides = _write_table(
        tmp_path / "slides.csv", ["slide", "path", "slide"], [["a", str(world["dir"] / "s.tiff"), "b"]]
    )
    result = _invoke("tile", "--cohort", slides, "--out", tmp_path / "tiles")
    assert result.exit_code == 2 and "'slide' appear more than once" in result.output
    result = _invoke(
        "embed", "--cohort", slides, "--plans", world["dir"] / "tiles", "--out", tmp_path / "o", "--encoder", "stats"
    )
    assert result.exit_code == 2 and "'slide' appear more than once" in result.output
    result = _invoke(
        "predict", "--run", world["run"], "--stores", world["stores"], "--cohort", slides, "--out", tmp_path / "p.csv"
    )
    assert result.exit_code == 2 and "'slide' appear more than once" in result.output


def test_a_utf8_byte_order_mark_is_read(tmp_path, world):
    """Excel's 'CSV UTF-8' starts with a BOM: every table reader takes it."""
    table = _write_table(
        tmp_path / "excel.csv",
        ["specimen", "slide", "label", "split", "store"],
        [[*r[:4], str(world["stores"] / f"{r[1]}.h5")] for r in world["rows"]],
        bom=True,
    )
    assert len(load_cohort(table).specimens) == N_SLIDES
    slides = _write_table(tmp_path / "slides.csv", ["path", "slide"], [[str(world["dir"] / "s.tiff"), "s"]], bom=True)
    result = _invoke("tile", "--cohort", slides, "--out", tmp_path / "tiles", "--tile-px", 32)
    assert result.exit_code == 0, result.output
    scored = _write_table(tmp_path / "new.csv", ["slide", "specimen"], [["S12", "X"]], bom=True)
    result = _invoke(
        "predict",
        "--run",
        world["run"],
        "--stores",
        world["stores"],
        "--cohort",
        scored,
        "--out",
        tmp_path / "p.csv",
        "--no-heatmaps",
    )
    assert result.exit_code == 0, result.output
    with (tmp_path / "p.csv").open() as fh:
        assert next(csv.DictReader(fh))["specimen"] == "X"


def test_a_row_with_more_values_than_columns_is_an_error(tmp_path, world):
    rows = [[*r[:4], str(world["stores"] / f"{r[1]}.h5")] for r in world["rows"]]
    rows[3].append("surplus")
    table = _write_table(tmp_path / "wide.csv", ["specimen", "slide", "label", "split", "store"], rows)
    with pytest.raises(CohortError, match="row 5 has 6 values but the header names 5 columns"):
        load_cohort(table)


# -- 3. Stores are untrusted -------------------------------------------------------------------------------------------


def test_a_store_declaring_terabytes_is_one_sentence_and_the_batch_goes_on(tmp_path, world):
    n = len(read_index(world["stores"] / "S00.h5").rc)
    huge = _forge(shutil.copy(world["stores"] / "S00.h5", tmp_path / "huge.h5"), emb__20x=((n, 16, 2**33), "f2"))
    assert huge.stat().st_size < 200_000  # a small file that declares 2.25 TiB
    result = _invoke("store", "validate", huge, world["stores"] / "S01.h5")
    assert result.exit_code == 1 and "Traceback" not in result.output and "MemoryError" not in result.output
    assert "emb/20x declares shape" in result.output and "S01.h5: ok" in result.output
    for read in (read_store, read_index):
        with pytest.raises(StoreError, match="emb/20x declares shape"):
            read(huge)


def test_a_store_declaring_more_than_it_holds_is_refused(tmp_path, world):
    n = len(read_index(world["stores"] / "S00.h5").rc)
    empty = _forge(shutil.copy(world["stores"] / "S00.h5", tmp_path / "empty.h5"), emb__20x=((n, 16, 34), "f2"))
    with pytest.raises(StoreError, match="emb/20x declares .* bytes but the file holds 0"):
        read_store(empty)  # HDF5 would hand back zeros: a model would score a blank slide


@pytest.mark.parametrize(
    "change, said",
    [
        ({"windows": np.arange(3)}, "windows is not a group"),
        ({"attrs": {"level_names": '{"5x": 1}'}}, "level_names is {'5x': 1}, not a list"),
        ({"attrs": {"level_names": '["5x", "10x", "40x"]'}}, "no dataset emb/40x"),
        ({"cells__tissue": np.zeros((3, 3), np.float32)}, "cells/tissue is float32 (3, 3)"),
    ],
)
def test_a_store_of_the_wrong_structure_is_one_sentence(tmp_path, world, change, said):
    path = shutil.copy(world["stores"] / "S00.h5", tmp_path / "odd.h5")
    if "windows" in change:
        with h5py.File(path, "r+") as f:
            del f["windows"]
            f["windows"] = change["windows"]
    else:
        _forge(path, **change)
    for read in (read_store, read_index):
        with pytest.raises(StoreError, match=re.escape(said)):
            read(path)


def test_cells_outside_the_slide_grid_are_refused(tmp_path, world):
    n = len(read_index(world["stores"] / "S00.h5").rc)
    rc = np.zeros((n, 2), np.int32)
    rc[:, 1] = np.arange(n)
    rc[0] = (-5, 1_000_000)
    bad = _forge(shutil.copy(world["stores"] / "S00.h5", tmp_path / "bad.h5"), cells__rc=rc)
    result = _invoke("store", "validate", bad)
    assert result.exit_code == 1 and "cells/rc holds cells outside the slide's 6 x 6 grid" in result.output
    with pytest.raises(StoreError, match="outside the slide's 6 x 6 grid"):
        read_index(bad)


def test_embeddings_are_float16_or_float32_never_float64(tmp_path, world):
    store = read_store(world["stores"] / "S00.h5")
    wide = _forge(
        shutil.copy(world["stores"] / "S00.h5", tmp_path / "f8.h5"), emb__10x=store.embeddings["10x"].astype(np.float64)
    )
    result = _invoke("store", "validate", wide)
    assert result.exit_code == 1 and "emb/10x is float64; embeddings are float16 (or float32)" in result.output
    single = _forge(
        shutil.copy(world["stores"] / "S00.h5", tmp_path / "f4.h5"), emb__10x=store.embeddings["10x"].astype(np.float32)
    )
    assert _invoke("store", "validate", single).exit_code == 0


# -- 4. One bad store never stops a predict batch ----------------------------------------------------------------------


def test_one_bad_store_never_stops_a_predict_batch(tmp_path, world):
    bad = {
        "S14": {"attrs": {"encoder": None}},
        "S15": {"attrs": {"embedding_dim": 99}},
        "S18": {"attrs": {"slide_id": "../../ESC"}},
        "S16": {"emb__20x": ((36, 16, 2**33), "f2")},
        "S17": {"cells__rc": np.array([(-5, 1_000_000)] + [(0, k) for k in range(1, 36)], np.int32)},
    }
    stores = _box(tmp_path, world, ["S12", "S13", *bad])
    for slide, change in bad.items():
        _forge(stores / f"{slide}.h5", **change)
    out = tmp_path / "a" / "out" / "p.csv"
    result = _invoke("predict", "--run", world["run"], "--stores", stores, "--out", out)
    assert result.exit_code == 1, result.output
    with out.open() as fh:
        rows = {r["slide"]: r for r in csv.DictReader(fh)}
    rows["S18"] = rows.pop("../../ESC")  # every store of the folder is scored under its own slide_id attribute
    assert set(rows) == {"S12", "S13", *bad}
    assert rows["S12"]["slide_score"] and rows["S13"]["slide_score"] and not rows["S12"]["problem"]
    assert all(rows[s]["slide_score"] == "" for s in bad)
    assert "encoder" in rows["S14"]["problem"] and "embedding_dim" in rows["S15"]["problem"]
    assert (
        "emb/20x declares shape" in rows["S16"]["problem"]
        and "outside the slide's 6 x 6 grid" in rows["S17"]["problem"]
    )
    assert "'../../ESC', not a safe file name" in rows["S18"]["problem"]


# -- 8. Small ones -----------------------------------------------------------------------------------------------------


def test_a_slide_smaller_than_one_cell_is_too_small_with_no_impossible_advice(tmp_path):
    write_slide(tmp_path / "tiny.tiff", tissue_like(224, 224, 0.5, seed=1), 0.5, downsamples=(1,))
    result = _invoke("tile", tmp_path / "tiny.tiff", "--out", tmp_path / "t", "--region-size", 1)
    assert "too_small" in result.output and "no_tissue" not in result.output, result.output
    assert "--region-size 1" not in result.output and "smaller than one 448 um cell" in result.output
    write_slide(tmp_path / "two.tiff", tissue_like(1800, 1800, 0.5, seed=1), 0.5, downsamples=(1, 4))  # 2 x 2 cells
    result = _invoke("tile", tmp_path / "two.tiff", "--out", tmp_path / "t", "--region-size", 3)
    assert "too_small" in result.output and "Use --region-size 1 or 2" in result.output


def test_embed_says_which_slide_folders_have_no_plan(tmp_path, world):
    plans = tmp_path / "tiles"
    shutil.copytree(world["dir"] / "tiles" / "s", plans / "s")
    shutil.copytree(world["dir"] / "tiles" / "s", plans / "interrupted")
    (plans / "interrupted" / "plan.json").unlink()
    from mixmag.stages.embed import UnfinishedTilingWarning, find_plans

    with pytest.warns(UnfinishedTilingWarning, match=r"no plan.json in 1 slide folder\(s\) \(interrupted\)"):
        assert find_plans(plans) == [plans / "s" / "plan.json"]


def test_the_report_never_prints_nan_for_levels_the_model_does_not_see(world_report):
    text = world_report
    assert "alt='heatmaps of" in text
    assert "nanx" not in text and "nan%" not in text
    assert "5x 0% (not in its bags)" in text


def test_tifffile_complaints_are_said_once_in_the_slide_error(tmp_path, capfd):
    import struct

    from mixmag.errors import SlideUnreadableError
    from mixmag.slides.reader import Slide

    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"II*\x00" + struct.pack("<I", 10**6) + b"\x00" * 100)  # first page offset beyond the end
    with pytest.raises(SlideUnreadableError, match="invalid offset to first page") as error:
        Slide(broken)
    assert str(error.value).count("invalid offset") == 1
    assert "invalid offset" not in capfd.readouterr().err


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_semicolon_or_tab_separated_table_is_read_like_a_comma_separated_one(tmp_path, world, delimiter):
    """Spreadsheets in languages with decimal commas save ';'-separated CSV; some tools write TSV."""
    rows = [[*r[:4], str(world["stores"] / f"{r[1]}.h5")] for r in world["rows"]]
    table = tmp_path / "semi.csv"
    with table.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(["specimen", "slide", "label", "split", "store"])
        w.writerows(rows)
    cohort = load_cohort(table)
    commas = load_cohort(_write_table(tmp_path / "comma.csv", ["specimen", "slide", "label", "split", "store"], rows))
    assert cohort.specimens == commas.specimens and len(cohort.specimens) == N_SLIDES
