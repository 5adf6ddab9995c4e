"""The store catalog (mixmag.catalog): built, repaired, shared by concurrent writers, read instead of store headers."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import mixmag.catalog as catalog_module
from mixmag.bench.scale import _cohort, _first_batch, catalog_from_template, make_corpus, write_cohort
from mixmag.catalog import (
    CATALOG_NAME,
    PARTS_NAME,
    CatalogError,
    CatalogWarning,
    CatalogWriter,
    load_catalog,
    lookup_slides,
    refresh_catalog,
)
from mixmag.cli import app
from mixmag.data.cohort import load_cohort
from mixmag.data.regions import RegionSamplingConfig, RegionStream, StoreEntry, catalog_stores, index_stores
from mixmag.stages.predict import read_inputs
from mixmag.store import StoreError, read_store, shared_settings, write_store
from mixmag.synth.stores import synthetic_store


def _store(folder: Path, slide: str, *, rows: int = 5, cols: int = 5, seed: int = 0, **kw) -> Path:
    return write_store(folder / f"{slide}.h5", synthetic_store(slide, n_rows=rows, n_cols=cols, dim=8, seed=seed, **kw))


@pytest.fixture()
def sharded(tmp_path) -> Path:
    """Six stores: two flat, four in sub-folders by slide-id prefix (two levels deep)."""
    d = tmp_path / "stores"
    _store(d, "a0")
    _store(d, "a1", rows=6)
    for i, slide in enumerate(["b0", "b1", "c0", "c1"]):
        _store(d / slide[0] / slide[:2], slide, seed=i, rows=4 + i, context=4)
    return d


def test_catalog_finds_sharded_stores_with_their_counts_and_settings(sharded):
    catalog, report = refresh_catalog(sharded)
    assert (sharded / CATALOG_NAME).is_file() and report.new == [] and not report.changed
    assert [e.path for e in catalog.entries] == [
        "a0.h5",
        "a1.h5",
        "b/b0/b0.h5",
        "b/b1/b1.h5",
        "c/c0/c0.h5",
        "c/c1/c1.h5",
    ]
    c1 = catalog.by_slide()["c1"]
    assert (c1.cells, c1.regions, c1.contexts, c1.dim, c1.levels) == (7 * 5, 5 * 3, 4 * 2, 8, 3)
    assert catalog.shared_settings() == shared_settings(catalog.paths())
    again, report = refresh_catalog(sharded)  # read back from the file, nothing re-read
    assert again.entries == catalog.entries and not report.changed


def test_stale_missing_and_new_stores_are_named_and_repaired(sharded):
    refresh_catalog(sharded)
    _store(sharded / "b" / "b0", "b0", rows=9)  # rewritten: another size
    (sharded / "a1.h5").unlink()
    _store(sharded / "d", "d0")
    _, report = refresh_catalog(sharded, write=False)
    assert (report.stale, report.missing, report.new) == (["b/b0/b0.h5"], ["a1.h5"], ["d/d0.h5"])
    with pytest.warns(CatalogWarning, match=r"1 store\(s\) changed since they were catalogued .*b/b0/b0.h5"):
        catalog = load_catalog(sharded)
    assert catalog.by_slide()["b0"].cells == 9 * 5 and "a1" not in catalog.by_slide()
    assert not refresh_catalog(sharded)[1].changed  # the repair was written back
    result = CliRunner().invoke(app, ["store", "index", str(sharded), "--check"])
    assert result.exit_code == 0, result.output
    os.utime(sharded / "a0.h5", ns=(1, 1))  # same size, other mtime: stale too
    result = CliRunner().invoke(app, ["store", "index", str(sharded), "--check"])
    assert result.exit_code == 1 and "a0.h5" in result.output and "changed since" in result.output


@pytest.mark.parametrize("damage", ["garbage", "foreign", "bad row", "count"])
def test_a_damaged_or_foreign_catalog_is_rebuilt_with_one_warning(sharded, damage):
    refresh_catalog(sharded)
    path = sharded / CATALOG_NAME
    if damage == "garbage":
        path.write_bytes(b"not a database at all" * 50)
    elif damage == "foreign":
        path.unlink()
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        con.execute("INSERT INTO meta VALUES ('format', 'something-else')")
        con.commit()
        con.close()
    else:
        con = sqlite3.connect(path)
        if damage == "bad row":  # a path that would escape the folder
            con.execute("UPDATE stores SET path = '../../etc/x.h5' WHERE slide_id = 'a0'")
        else:
            con.execute("DELETE FROM stores WHERE slide_id = 'a0'")
        con.commit()
        con.close()
    with pytest.warns(CatalogWarning, match=f"{CATALOG_NAME}: .*rebuilt from the stores"):
        catalog = load_catalog(sharded)
    assert len(catalog) == 6 and all(not e.path.startswith("..") for e in catalog.entries)
    assert not refresh_catalog(sharded)[1].changed


def test_a_catalog_of_a_newer_mixmag_is_refused_not_overwritten(sharded):
    refresh_catalog(sharded)
    con = sqlite3.connect(sharded / CATALOG_NAME)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    con.commit()
    con.close()
    with pytest.raises(CatalogError, match="newer mixmag"):
        load_catalog(sharded)


def _write_many(folder: str, prefix: str, n: int, start) -> None:
    start.wait()
    with CatalogWriter(folder) as writer:
        for i in range(n):
            writer.record(_store(Path(folder) / prefix, f"{prefix}{i}", rows=4, cols=4, seed=i))
    refresh_catalog(folder)  # both processes fold the parts at about the same time too


def test_two_processes_writing_at_once_lose_no_store(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), p, 12, start)) for p in ("x", "y")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    catalog, report = refresh_catalog(tmp_path, write=False)
    assert len(catalog) == 24 and not report.changed, report
    assert not list((tmp_path / PARTS_NAME).glob("*.open"))


def test_parts_are_read_before_they_are_folded(tmp_path):
    writer = CatalogWriter(tmp_path)
    writer.record(_store(tmp_path, "p0"))
    with open(next((tmp_path / PARTS_NAME).iterdir()), "a") as fh:
        fh.write('{"path": "p1.h5", "slide_id": "p1", "si')  # a writer died mid-line
    catalog, report = refresh_catalog(tmp_path, write=False)
    assert [e.slide_id for e in catalog.entries] == ["p0"] and report.new == []  # found through the part, not re-read
    assert lookup_slides(tmp_path, ["p0"]) == {"p0": tmp_path / "p0.h5"}


def test_runs_read_the_catalog_not_the_store_headers(sharded, monkeypatch):
    refresh_catalog(sharded)
    cfg = RegionSamplingConfig(t=3, per_slide=4, pool=2, batch_size=4)

    def no_header(*a, **k):
        raise AssertionError("a store header was opened")

    monkeypatch.setattr(catalog_module, "describe_store", no_header)
    monkeypatch.setattr(catalog_module, "read_attrs", no_header)
    catalog = load_catalog(sharded)
    entries, dim, levels = catalog_stores(catalog, cfg)
    by_headers, dim_h, levels_h = index_stores(catalog.paths(), cfg)
    assert [(str(e.path), e.n_windows) for e in entries] == [(str(e.path), e.n_windows) for e in by_headers]
    assert (dim, levels) == (dim_h, levels_h)
    catalog.shared_settings()
    opened = []
    monkeypatch.setattr(
        "mixmag.data.regions.read_store", lambda p, validate: opened.append(p) or read_store(p, validate=False)
    )
    stream = RegionStream(entries, levels, cfg)
    next(iter(stream))
    assert len(opened) == 2  # the first chunk's two stores, not the folder


def test_cohort_stores_are_found_in_a_sharded_folder(sharded, tmp_path):
    table = tmp_path / "cohort.csv"
    rows = [
        ("s1", "a0", 0, "train"),
        ("s2", "b0", 1, "train"),
        ("s3", "b1", 0, "tune"),
        ("s4", "c0", 1, "tune"),
        ("s5", "c1", 0, "test"),
        ("s6", "a1", 1, "test"),
    ]
    table.write_text("specimen,slide,label,split\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in rows))
    cohort = load_cohort(table, sharded)  # no catalog yet: built on the way
    assert cohort.stores["b1"] == sharded / "b" / "b1" / "b1.h5" and cohort.stores["a0"] == sharded / "a0.h5"


def test_region_weighted_sampling_visits_slides_in_proportion_and_is_deterministic(tmp_path):
    entries = [StoreEntry(tmp_path / f"{i}.h5", n) for i, n in enumerate([1, 9, 90])]
    cfg = RegionSamplingConfig(t=3, per_slide=4, pool=2, batch_size=4, slide_sampling="regions")
    visits = np.bincount(sum((sum(RegionStream(entries, 3, cfg).chunks(e), []) for e in range(300)), []), minlength=3)
    assert visits[2] > 5 * visits[1] and visits[1] > 3 * visits[0] and visits.sum() == 900
    ranks = [RegionStream(entries, 3, cfg, rank=r, world_size=2).chunks(7) for r in (0, 1)]
    assert ranks == [RegionStream(entries, 3, cfg, rank=r, world_size=2).chunks(7) for r in (0, 1)]
    uniform = RegionStream(entries, 3, RegionSamplingConfig(t=3, per_slide=4, pool=2, batch_size=4))
    assert sorted(sum(uniform.chunks(0), [])) == [0, 1, 2]


def test_a_folder_mixing_encoders_is_refused_from_the_catalog(tmp_path):
    _store(tmp_path, "a")
    store = synthetic_store("b", n_rows=5, n_cols=5, dim=8, projection_seed=7)
    write_store(tmp_path / "sub" / "b.h5", store)
    with pytest.raises(StoreError, match=r"encoder_weights_digest: .* in 1 store\(s\)"):
        load_catalog(tmp_path).shared_settings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refresh_catalog(tmp_path)


def test_bench_scale_corpus_is_sharded_and_read_the_same_with_and_without_the_catalog(tmp_path):
    folder = tmp_path / "scale-40"
    make_corpus(folder, 40, 1, Console(quiet=True))
    catalog, _ = refresh_catalog(folder)
    assert len(catalog) == 40 and all(e.path.count("/") == 1 for e in catalog.entries)
    assert len(catalog.by_slide()) == 40  # the slide ids were written into each copy
    catalog_from_template(folder)  # the shortcut for very large N gives the catalog a build gives
    again, report = refresh_catalog(folder, write=False)
    assert again.entries == catalog.entries and not report.changed
    table = write_cohort(folder, 40, 12, 1)
    assert _cohort(str(folder), True, str(table))["slides"] == _cohort(str(folder), False, str(table))["slides"] == 12
    assert _first_batch(str(folder), True)["seconds"] > 0 and _first_batch(str(folder), False)["seconds"] > 0


def test_predict_finds_every_store_of_a_sharded_folder(sharded):
    inputs = read_inputs(None, None, sharded)
    assert inputs.stores["c0"] == sharded / "c" / "c0" / "c0.h5" and inputs.stores["a0"] == sharded / "a0.h5"
    assert len(inputs.stores) == 6 and all(p.is_file() for p in inputs.stores.values())
    assert read_inputs(["b1"], None, sharded).stores == {"b1": sharded / "b" / "b1" / "b1.h5"}


def test_a_store_whose_header_read_store_refuses_never_enters_the_catalog(sharded):
    import h5py

    forged = sharded / "f" / "f0.h5"
    _store(forged.parent, "f0")
    with h5py.File(forged, "a") as f:  # a level declaring a shape the file does not hold data for
        del f["emb/20x"]
        f.create_dataset("emb/20x", shape=(25, 16, 8), dtype="float16")
    with pytest.raises(StoreError):
        read_store(forged)
    catalog, report = refresh_catalog(sharded)
    assert "f0" not in catalog.by_slide() and "invalid store" in report.unreadable["f/f0.h5"]
