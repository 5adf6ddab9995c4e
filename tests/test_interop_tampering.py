"""Peer files tampered with after export (or made for another slide) are refused with the slide, the level and the
reason, never imported into a store that trains without an error (issue 27's tamperings, one test each)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from test_interop import _exported, _rewrite, _strip_mixmag_record, assert_same_store, make_store, runner, trident_file

from mixmag.cli import app
from mixmag.interop import clam, trident
from mixmag.interop.assemble import InteropError
from mixmag.interop.files import DIGEST_ATTR, TILES_DIGEST_ATTR, features_digest
from mixmag.store import read_store


def _two_slides(tmp_path, fmt: str):
    """Slides a1 and b2 (same size, same cells, other features), exported to `tmp_path/fmt`."""
    for seed, slide in enumerate(("a1", "b2")):
        store_path, plan = make_store(tmp_path, slide, seed=seed)
        if fmt == "trident":
            trident.export_store(read_store(store_path), plan, tmp_path / fmt)
        else:
            clam.export_store(read_store(store_path), tmp_path / fmt)
    return tmp_path / fmt


def _plan(tmp_path, slide="a1"):
    from mixmag.slides.tiling import load_plan

    path = tmp_path / "plans" / slide / "plan.json"
    return load_plan(path), path


def test_trident_files_of_another_slide_are_refused_by_their_own_name(tmp_path):
    job = _two_slides(tmp_path, "trident")
    for level in ("5x", "10x", "20x"):
        shutil.copy(trident_file(job, level, "b2"), trident_file(job, level, "a1"))  # same size, same tissue
    plan, plan_path = _plan(tmp_path)
    with pytest.raises(
        InteropError, match=r"a1: level 5x: the file is slide 'b2''s \(its features\.name attribute\), not this slide's"
    ):
        trident.import_slide(job, plan, plan_path)
    for level in ("5x", "10x", "20x"):  # TRIDENT's own files (no mixmag record): the name TRIDENT wrote says it too
        _strip_mixmag_record(trident_file(job, level, "a1"))
    with pytest.raises(InteropError, match=r"a1: level 5x: the file is slide 'b2''s"):
        trident.import_slide(job, plan, plan_path)


def test_clam_files_of_another_slide_are_refused_by_their_mixmag_slide_id(tmp_path):
    out = _two_slides(tmp_path, "clam")
    for level in ("5x", "10x", "20x"):
        shutil.copy(out / level / "h5_files" / "b2.h5", out / level / "h5_files" / "a1.h5")
        shutil.copy(out / level / "pt_files" / "b2.pt", out / level / "pt_files" / "a1.pt")
    plan, plan_path = _plan(tmp_path)
    with pytest.raises(
        InteropError,
        match=r"a1: level 5x: the file is slide 'b2''s \(its features\.mixmag_slide_id attribute\), not this slide's",
    ):
        clam.import_slide(out, plan, plan_path)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda c: c[np.random.default_rng(3).permutation(len(c))], id="rows-permuted"),
        pytest.param(lambda c: c[:, ::-1].copy(), id="transposed"),
    ],
)
def test_coordinates_permuted_or_transposed_against_the_features_are_refused(tmp_path, edit):
    job, plan, plan_path = _exported(tmp_path)  # 2 x 2 cells: transposed coordinates still lie on the plan's tiles
    path = trident_file(job, "20x")
    with h5py.File(path) as f:
        coords = f["coords"][()]
    _rewrite(path, coords=edit(coords))
    with pytest.raises(
        InteropError,
        match=r"s1: level 20x: the coordinates no longer match the features row for row as mixmag exported them",
    ):
        trident.import_slide(job, plan, plan_path)


@pytest.mark.parametrize("older", [False, True])
def test_rows_reordered_together_with_their_coordinates_still_import(tmp_path, older):
    """Row order is a file's own business: coordinates moved with their features keep every tile's features."""
    job, plan, plan_path = _exported(tmp_path)
    for level in ("5x", "10x", "20x"):
        path = trident_file(job, level)
        if older:
            _as_older_export(path)
        with h5py.File(path) as f:
            coords, feats = f["coords"][()], f["features"][()]
        order = np.random.default_rng(7).permutation(len(coords))
        _rewrite(path, coords=coords[order], features=feats[order])
    assert_same_store(read_store(tmp_path / "stores" / "s1.h5"), trident.import_slide(job, plan, plan_path))


def _as_older_export(path) -> None:
    """An export of the previous version: its digest covers the features alone."""
    with h5py.File(path, "r+") as f:
        attrs = f["features"].attrs
        del attrs[TILES_DIGEST_ATTR]
        attrs[DIGEST_ATTR] = features_digest(f["features"][()])


def test_older_exports_still_import_and_their_permuted_coordinates_are_refused(tmp_path):
    job, plan, plan_path = _exported(tmp_path)
    for level in ("5x", "10x", "20x"):
        _as_older_export(trident_file(job, level))
    store = trident.import_slide(job, plan, plan_path)
    assert_same_store(read_store(tmp_path / "stores" / "s1.h5"), store)
    path = trident_file(job, "10x")
    with h5py.File(path) as f:
        coords = f["coords"][()]
    _rewrite(path, coords=coords[::-1].copy())
    with pytest.raises(InteropError, match=r"s1: level 10x: the coordinates no longer match the features row for row"):
        trident.import_slide(job, plan, plan_path)


def test_clam_import_compares_the_pt_file_clam_trains_on(tmp_path):
    store_path, plan = make_store(tmp_path)
    out = tmp_path / "clam"
    clam.export_store(read_store(store_path), out)
    plan_path = tmp_path / "plans" / "s1" / "plan.json"
    pt = out / "10x" / "pt_files" / "s1.pt"
    torch.save(torch.load(pt, weights_only=True) + 1, pt)  # a stale .pt: CLAM would train on other features
    with pytest.raises(
        InteropError, match=r"s1: level 10x: the pt file CLAM trains on holds other values than the \.h5 beside it"
    ):
        clam.import_slide(out, plan, plan_path)
    torch.save(torch.zeros(3, 6), pt)
    with pytest.raises(InteropError, match=r"s1: level 10x: the pt file CLAM trains on holds \(3, 6\), the \.h5"):
        clam.import_slide(out, plan, plan_path)
    pt.write_bytes(b"not a tensor")
    with pytest.raises(InteropError, match=r"s1: level 10x: not a readable tensor file"):
        clam.import_slide(out, plan, plan_path)
    pt.unlink()  # h5 alone (CLAM's load_from_h5(True)): imported from the h5
    assert_same_store(read_store(store_path), clam.import_slide(out, plan, plan_path))


def test_features_beyond_float16_range_are_refused_not_stored_as_inf(tmp_path):
    job, plan, plan_path = _exported(tmp_path)
    for level in ("5x", "10x", "20x"):
        _strip_mixmag_record(trident_file(job, level))  # another tool's features, at mixmag's tiles
    path = trident_file(job, "5x")
    with h5py.File(path) as f:
        feats = f["features"][()]
    feats[2, 1] = 70000.0
    _rewrite(path, features=feats)
    with pytest.raises(
        InteropError, match=r"s1: level 5x: 1 feature rows hold values beyond float16's range \(e\.g\. 70000 in row 2"
    ):
        trident.import_slide(job, plan, plan_path)
    result = runner.invoke(
        app,
        ["store", "import", str(job), "--plans", str(tmp_path / "plans"), "--out", str(tmp_path / "back")],
    )
    assert result.exit_code == 1 and "beyond float16's range" in result.output
    assert not (tmp_path / "back" / "s1.h5").exists()


def test_a_nan_coordinate_is_named_as_such(tmp_path):
    job, plan, plan_path = _exported(tmp_path)
    path = trident_file(job, "10x")
    with h5py.File(path) as f:
        coords = f["coords"][()].astype(np.float64)
    coords[5, 1] = np.nan
    _rewrite(path, coords=coords)
    with pytest.raises(InteropError, match=r"s1: level 10x: 1 coordinates are not numbers \(NaN or Inf\), e\.g\. row"):
        trident.import_slide(job, plan, plan_path)
    coords[5, 1] = 1e300
    _rewrite(path, coords=coords)
    with pytest.raises(InteropError, match=r"s1: level 10x: 1 coordinates lie outside the \d+ x \d+ px slide"):
        trident.import_slide(job, plan, plan_path)


def test_a_file_that_declares_its_level_is_named_by_it(tmp_path):
    job, plan, plan_path = _exported(tmp_path)
    path = trident_file(job, "10x")
    with h5py.File(path) as f:
        feats = f["features"][()]
    _rewrite(path, features=np.zeros((feats.shape[0], feats.shape[1], 2), np.float32))  # a 3-D features dataset
    with pytest.raises(InteropError, match=r"s1: level 10x: features \(16, 6, 2\) and coords \(16, 2\) do not fit"):
        trident.import_slide(job, plan, plan_path)
