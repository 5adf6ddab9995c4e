"""TRIDENT and CLAM files as those tools' own code reads and writes them, strict imports, QuPath GeoJSON.

The expected fields below were written from the peers' code (TRIDENT a91fa84, CLAM 53e2409), not from mixmag's
modules, so a wrong spec in mixmag fails here. Plans are built in memory (no slide) except in the round trip.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.errors import MixmagError
from mixmag.geometry import Box
from mixmag.interop import clam, qupath, trident
from mixmag.interop.assemble import InteropError
from mixmag.interop.grid import tile_origins, whole_pixel_footprints
from mixmag.slides.tiling import SlideRecord, TilingParams, TilingPlan, load_plan, save_plan
from mixmag.store import plan_provenance, read_store, store_from_plan, write_store

MPP = 0.2631  # a 40x-style scan: mixmag's grid is not integer in level-0 px
CELLS = [(0, 0), (0, 1), (1, 0), (1, 1)]
runner = CliRunner()

# TRIDENT's coords attributes and their types: trident/IO.py coords_to_h5 l.671-681 (written), WSI.py l.930-946 and
# l.775-782 (patch_size, level0_magnification, target_magnification read back), l.1105 + l.1140 (patch_size_level0 read
# and cast to int for the slide encoders); features attributes: WSI.py l.1032.
TRIDENT_COORDS_ATTRS = {
    "patch_size": int,
    "patch_size_level0": int,
    "level0_magnification": float,
    "target_magnification": float,
    "overlap": int,
    "name": str,
    "savetodir": str,
    "level0_width": int,
    "level0_height": int,
}
TRIDENT_FEATURES_ATTRS = {"name": str, "savetodir": str, "encoder": str}


def make_plan(
    folder: Path, slide_id: str = "s1", *, n_levels: int = 3, mpp: float = MPP, cells=CELLS
) -> tuple[Path, TilingPlan]:
    params = TilingParams(n_levels=n_levels, region_size=2)
    cell_px = params.levels.cell_um / mpp
    width, height = int(cell_px * 2.6), int(cell_px * 2.3)
    plan = TilingPlan(
        slide=SlideRecord(
            slide_id=slide_id,
            path=f"/data/{slide_id}.svs",
            size_bytes=1,
            mtime=0.0,
            backend="tiffslide",
            mpp=mpp,
            mpp_source="test",
            width=width,
            height=height,
            level_dimensions=[(width, height)],
            level_downsamples=[1.0],
        ),
        params=params,
        cell_px=cell_px,
        n_rows=2,
        n_cols=2,
        tissue_grid=[[0.5, 0.6], [0.7, 0.8]],
        cells=cells,
        cell_tissue=[0.5, 0.6, 0.7, 0.8][: len(cells)],
        regions=[(0, 0)],
        region_tissue=[0.65],
        status="ok",
    )
    path = save_plan(plan, folder / slide_id / "plan.json")
    return path, plan


def make_store(tmp_path: Path, slide_id: str = "s1", dim: int = 6, seed: int = 0, **plan_kw) -> tuple[Path, TilingPlan]:
    plan_path, plan = make_plan(tmp_path / "plans", slide_id, **plan_kw)
    rng = np.random.default_rng(seed)
    levels = [
        rng.normal(size=(len(plan.cells), 4**i, dim)).astype(np.float16).astype(np.float32)
        for i in range(plan.levels.n_levels)
    ]
    attrs = plan_provenance(plan_path, plan) | {
        "encoder": "stats",
        "encoder_weights_digest": "built-in",
        "encoder_output": "cls",
        "embedding_dim": dim,
        "compute_dtype": "float32",
        "read_mode": "derive",
    }
    return write_store(tmp_path / "stores" / f"{slide_id}.h5", store_from_plan(plan, levels, attrs)), plan


def assert_same_store(a, b, encoder_too: bool = True) -> None:
    np.testing.assert_array_equal(a.rc, b.rc)
    np.testing.assert_array_equal(a.tissue, b.tissue)
    assert list(a.embeddings) == list(b.embeddings)
    for name in a.embeddings:
        np.testing.assert_array_equal(a.embeddings[name], b.embeddings[name])
    if encoder_too:
        for key in (
            "encoder",
            "encoder_weights_digest",
            "encoder_output",
            "embedding_dim",
            "plan_digest",
            "level_mpps",
            "slide_id",
        ):
            assert a.attrs[key] == b.attrs[key], key


def trident_file(out: Path, level_name: str, slide: str = "s1", encoder: str = "stats") -> Path:
    return out / f"{level_name}_224px_0px_overlap" / f"features_{encoder}" / f"{slide}.h5"


def _export_with_the_cli(tmp_path: Path, fmt: str):
    store_path, plan = make_store(tmp_path)
    result = runner.invoke(app, ["store", "export", str(store_path), "--format", fmt, "--out", str(tmp_path / fmt)])
    assert result.exit_code == 0, result.output
    return read_store(store_path), plan, tmp_path / fmt


def test_trident_export_is_tridents_own_format(tmp_path):
    store, plan, out = _export_with_the_cli(tmp_path, "trident")
    for i, name in enumerate(("5x", "10x", "20x")):
        # Processor.py l.529 and l.763: <mag>x_<px>px_<overlap>px_overlap/features_<enc>
        path = trident_file(out, name)
        with h5py.File(path) as f:
            assert set(f) == {"features", "coords"}
            feats, coords = f["features"], f["coords"]
            assert feats.dtype == np.float32 and feats.shape == (4 * 4**i, 6)  # WSI.py l.1020-1034: float32 (M, D)
            assert coords.dtype == np.int64 and coords.shape == (4 * 4**i, 2)  # IO.py l.659: int64 (M, 2)
            for attrs, spec in (
                (dict(coords.attrs), TRIDENT_COORDS_ATTRS),
                (dict(feats.attrs), TRIDENT_FEATURES_ATTRS),
            ):
                assert spec.keys() <= attrs.keys()
                for key, kind in spec.items():
                    value = attrs[key].item() if isinstance(attrs[key], np.generic) else attrs[key]
                    assert isinstance(value, kind) and not isinstance(value, bool), (key, type(value))
                assert all(k.startswith("mixmag_") for k in attrs.keys() - spec.keys())
            a = dict(coords.attrs)
            level_mpp = 2.0 / 2**i
            exact = 224 * level_mpp / MPP
            assert a["target_magnification"] == pytest.approx(10 / level_mpp) and a["patch_size"] == 224
            assert a["overlap"] == 0
            assert (a["level0_width"], a["level0_height"]) == (plan.slide.width, plan.slide.height)
            # floor, not round: the peers' grid (coords // patch_size_level0) must give every patch its own position
            assert a["patch_size_level0"] == int(exact) and a["mixmag_patch_size_level0"] == pytest.approx(exact)
            assert int(a["patch_size_level0"]) == int(exact)  # what extract_slide_features hands the slide encoders
            # WSIPatcher.py l.135-147: TRIDENT reads round(patch_size * (10/target) / (10/level0)) level-0 px per patch
            read_px = round(a["patch_size"] * (10 / a["target_magnification"]) / (10 / a["level0_magnification"]))
            assert abs(read_px - exact) <= 1
            assert feats.attrs["encoder"] == "stats" and feats.attrs["name"] == "s1"
            grid = tile_origins(np.array(CELLS), plan.cell_px, i)
            assert np.abs(coords[()] - grid).max() <= 0.5  # mixmag's float grid, rounded once
            np.testing.assert_array_equal(feats[()], store.embeddings[name].reshape(-1, 6))


def test_clam_export_is_clams_own_format(tmp_path):
    store, plan, out = _export_with_the_cli(tmp_path, "clam")
    for i, name in enumerate(("5x", "10x", "20x")):
        data_dir = out / name  # dataset_generic.py l.338 / l.346: <data_dir>/pt_files, <data_dir>/h5_files
        with h5py.File(data_dir / "h5_files" / "s1.h5") as f:
            assert set(f) == {"features", "coords"}
            assert f["features"].dtype == np.float32
            assert f["features"].shape == (4 * 4**i, 6)  # extract_features_fp.py l.42
            assert f["coords"].dtype == np.int32 and f["coords"].shape == (4 * 4**i, 2)  # l.38
            assert not f.attrs.keys() and not f["coords"].attrs.keys()  # save_hdf5(attr_dict=None), l.45
            assert all(k.startswith("mixmag_") for k in f["features"].attrs)
            h5_features = f["features"][()]
            assert np.abs(f["coords"][()] - tile_origins(np.array(CELLS), plan.cell_px, i)).max() <= 0.5
        pt = torch.load(data_dir / "pt_files" / "s1.pt", weights_only=True)  # dataset_generic.py l.339 loads one tensor
        assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float32 and pt.shape == (4 * 4**i, 6)
        np.testing.assert_array_equal(pt.numpy(), h5_features)
        np.testing.assert_array_equal(h5_features, store.embeddings[name].reshape(-1, 6))


@pytest.mark.parametrize("fmt", ["trident", "clam"])
def test_export_refuses_a_slide_id_that_escapes_the_output_folder(tmp_path, fmt):
    store_path, plan = make_store(tmp_path)
    with h5py.File(store_path, "r+") as f:
        f.attrs["slide_id"] = "/elsewhere/ESCAPED"
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["store", "export", str(store_path), "--format", fmt, "--out", str(out), "--plans", str(tmp_path / "plans")],
    )
    assert result.exit_code == 1 and "'/elsewhere/ESCAPED' is not a safe file name" in result.output
    assert not list(out.rglob("*.h5")) and not list(out.rglob("*.pt")) and not Path("/elsewhere").exists()


@pytest.mark.parametrize("fmt", ["trident", "clam"])
def test_export_then_import_gives_the_same_store(tmp_path, fmt):
    store_path, _ = make_store(tmp_path)
    assert (
        runner.invoke(
            app, ["store", "export", str(store_path), "--format", fmt, "--out", str(tmp_path / "x")]
        ).exit_code
        == 0
    )
    result = runner.invoke(
        app,
        [
            "store",
            "import",
            str(tmp_path / "x"),
            "--format",
            fmt,
            "--plans",
            str(tmp_path / "plans"),
            "--out",
            str(tmp_path / "back"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert_same_store(read_store(store_path), read_store(tmp_path / "back" / "s1.h5"))


def test_the_level_is_the_files_own_never_its_folders(tmp_path):
    store_path, plan = make_store(tmp_path)
    trident.export_store(read_store(store_path), plan, tmp_path / "tri")
    ten, twenty = tmp_path / "tri" / "10x_224px_0px_overlap", tmp_path / "tri" / "20x_224px_0px_overlap"
    ten.rename(tmp_path / "tri" / "tmp"), twenty.rename(ten), (tmp_path / "tri" / "tmp").rename(twenty)
    assert_same_store(
        read_store(store_path), trident.import_slide(tmp_path / "tri", plan, tmp_path / "plans" / "s1" / "plan.json")
    )
    clam.export_store(read_store(store_path), tmp_path / "clam")
    (tmp_path / "clam" / "5x").rename(tmp_path / "clam" / "zz")  # CLAM files name no level: their tile count does
    assert_same_store(
        read_store(store_path), clam.import_slide(tmp_path / "clam", plan, tmp_path / "plans" / "s1" / "plan.json")
    )


def _exported(tmp_path, **kw) -> tuple[Path, TilingPlan, Path]:
    store_path, plan = make_store(tmp_path, **kw)
    trident.export_store(read_store(store_path), plan, tmp_path / "tri")
    return tmp_path / "tri", plan, tmp_path / "plans" / "s1" / "plan.json"


def _rewrite(path: Path, **datasets) -> None:
    """Replace datasets of an h5 file, keeping their attributes (what a hand edit or another tool might do)."""
    with h5py.File(path, "r+") as f:
        for key, data in datasets.items():
            attrs = dict(f[key].attrs)
            del f[key]
            f.create_dataset(key, data=data)
            f[key].attrs.update(attrs)


def _strip_mixmag_record(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        for key in [k for k in f["features"].attrs if k.startswith("mixmag_")]:
            del f["features"].attrs[key]


def _drop_13_rows(coords, feats):
    keep = np.sort(np.random.default_rng(1).choice(len(coords), len(coords) - 13, replace=False))
    return coords[keep], feats[keep]


def _repeat_a_tile(coords, feats):
    coords[3] = coords[7]
    return coords, feats


def _shift_100_px(coords, feats):
    return coords + 100, feats


@pytest.mark.parametrize(
    "level, edit, message",
    [
        ("20x", _drop_13_rows, r"s1: level 20x: 51 tiles, but the plan's 4 cells have 64 at 20x"),
        ("10x", _repeat_a_tile, r"s1: level 10x: 1 coordinates repeat a tile, e\.g\. \(\d+, \d+\) appears 2 times"),
        ("5x", _shift_100_px, r"s1: level 5x: 4 of 4 coordinates lie off mixmag's grid.*100\.\d px from"),
    ],
)
def test_import_refuses_edited_coordinates(tmp_path, level, edit, message):
    job, plan, plan_path = _exported(tmp_path)
    path = trident_file(job, level)
    with h5py.File(path) as f:
        coords, feats = edit(f["coords"][()], f["features"][()])
    _rewrite(path, coords=coords, features=feats)
    with pytest.raises(InteropError, match=message):
        trident.import_slide(job, plan, plan_path)


def test_coordinates_within_one_pixel_of_the_grid_are_accepted(tmp_path):
    job, plan, plan_path = _exported(tmp_path)
    path = trident_file(job, "5x")
    grid = tile_origins(np.array(CELLS), plan.cell_px, 0)
    for within in (np.floor(grid) + 1, np.ceil(grid) - 1):  # up to 1 px from the float grid, either way: accepted
        _rewrite(path, coords=within.astype(np.int64))
        assert trident.import_slide(job, plan, plan_path).embeddings["5x"].shape == (4, 1, 6)


def test_import_refuses_a_stale_level_from_an_earlier_export(tmp_path):
    job, plan, _ = _exported(tmp_path)  # a 3-level export, then the slide is re-planned with 2 levels
    plan_path, two_levels = make_plan(tmp_path / "plans2", n_levels=2)
    with pytest.raises(
        InteropError,
        match=r"s1: level 20x: the file is at 20x \(0.5 um/px\), which is not one of the plan's levels 5x, 10x",
    ):
        trident.import_slide(job, two_levels, plan_path)


def test_import_refuses_features_changed_after_export(tmp_path):
    job, plan, plan_path = _exported(tmp_path)
    path = trident_file(job, "10x")
    with h5py.File(path) as f:
        feats = f["features"][()]
    _rewrite(path, features=feats[::-1].copy())
    with pytest.raises(
        InteropError,
        match=r"s1: level 10x: the features differ from the ones mixmag exported, so the "
        r"recorded encoder provenance \(stats, weights built-in\) no longer describes them",
    ):
        trident.import_slide(job, plan, plan_path)


def test_import_refuses_missing_levels_mixed_encoders_and_dimensions(tmp_path):
    job, plan, plan_path = _exported(tmp_path)
    trident_file(job, "10x").unlink()
    with pytest.raises(InteropError, match=r"s1: level 10x: no features for level\(s\) 10x"):
        trident.import_slide(job, plan, plan_path)
    job, plan, plan_path = _exported(tmp_path / "b")
    for name in ("5x", "10x", "20x"):
        _strip_mixmag_record(trident_file(job, name))
    store = trident.import_slide(job, plan, plan_path)  # TRIDENT's own files: the encoder is the name they record
    assert store.attrs["encoder"] == "stats" and store.attrs["encoder_weights_digest"] == "trident:stats"
    with h5py.File(trident_file(job, "20x"), "r+") as f:
        f["features"].attrs["encoder"] = "uni_v1"
    with pytest.raises(InteropError, match=r"s1: level 20x: the file was made with encoder 'uni_v1', not 'stats'"):
        trident.import_slide(job, plan, plan_path)
    with h5py.File(trident_file(job, "20x"), "r+") as f:
        f["features"].attrs["encoder"] = "stats"
        wider = np.zeros((64, 8), np.float32)
    _rewrite(trident_file(job, "20x"), features=wider)
    with pytest.raises(
        InteropError, match=r"s1: level 20x: made differently from level 5x .*'embedding_dim': \(6, 8\)"
    ):
        trident.import_slide(job, plan, plan_path)


def test_import_refuses_features_of_another_slide_and_clam_files_of_no_level(tmp_path):
    job, plan, plan_path = _exported(tmp_path)
    with h5py.File(trident_file(job, "5x"), "r+") as f:
        f["coords"].attrs["level0_width"] = 99999
    with pytest.raises(
        InteropError, match=r"s1: level 5x: not extracted at mixmag's tiles of this slide: a slide of 99999 x"
    ):
        trident.import_slide(job, plan, plan_path)
    store_path, plan = make_store(tmp_path / "c")
    clam.export_store(read_store(store_path), tmp_path / "clam")
    path = tmp_path / "clam" / "20x" / "h5_files" / "s1.h5"
    with h5py.File(path) as f:
        coords, feats = f["coords"][()][:51], f["features"][()][:51]
    _rewrite(path, coords=coords, features=feats)
    with pytest.raises(
        InteropError, match=r"the file holds 51 tiles, which is no level's count for the plan's 4 cells"
    ):
        clam.import_slide(tmp_path / "clam", plan, tmp_path / "c" / "plans" / "s1" / "plan.json")


def test_clam_files_without_a_record_need_the_encoder_named(tmp_path):
    store_path, plan = make_store(tmp_path)
    clam.export_store(read_store(store_path), tmp_path / "clam")
    for path in (tmp_path / "clam").glob("*/h5_files/s1.h5"):
        _strip_mixmag_record(path)
    plan_path = tmp_path / "plans" / "s1" / "plan.json"
    with pytest.raises(InteropError, match=r"does not record its encoder .*pass --encoder NAME"):
        clam.import_slide(tmp_path / "clam", plan, plan_path)
    store = clam.import_slide(tmp_path / "clam", plan, plan_path, encoder="uni_v1")
    assert store.attrs["encoder"] == "uni_v1" and store.attrs["read_mode"] == "clam"
    assert_same_store(read_store(store_path), store, encoder_too=False)


def test_coords_are_tridents_patch_files_at_mixmags_tiles(tmp_path):
    plan_path, plan = make_plan(tmp_path / "plans")
    result = runner.invoke(app, ["store", "coords", "--plans", str(tmp_path / "plans"), "--out", str(tmp_path / "job")])
    assert result.exit_code == 0, result.output
    assert "--mag M --patch_size 224" in result.output
    for i, name in enumerate(("5x", "10x", "20x")):
        path = tmp_path / "job" / f"{name}_224px_0px_overlap" / "patches" / "s1_patches.h5"  # WSI.py l.747
        with h5py.File(path) as f:
            assert set(f) == {"coords"} and f["coords"].dtype == np.int64
            attrs = dict(f["coords"].attrs)
            assert TRIDENT_COORDS_ATTRS.keys() <= attrs.keys() and attrs["name"] == "s1"
            np.testing.assert_array_equal(f["coords"][()], np.rint(tile_origins(np.array(CELLS), plan.cell_px, i)))


def test_coords_files_are_named_as_trident_names_the_slide(tmp_path):
    _, plan = make_plan(tmp_path / "plans", "case7")
    plan.slide.path = "/data/Scan 7.ome.tiff"
    with pytest.raises(
        MixmagError, match="TRIDENT slide name 'Scan 7' is not a safe file name"
    ):  # a space: refused, not written under another name
        trident.write_coords(plan, tmp_path / "job")
    plan.slide.path = "/data/scan7.ome.tiff"
    assert trident.write_coords(plan, tmp_path / "job")[0].name == "scan7_patches.h5"  # IO.py l.17-26: one extension


@pytest.mark.parametrize("mpp", [0.5, 0.499])
def test_round_trip_through_trident_format_equals_mixmags_own_store(tmp_path, slide_dir, mpp):
    """plan -> TRIDENT coords -> features in TRIDENT's format, read and encoded as TRIDENT would at those coords with
    the same built-in encoder -> `mixmag store import`: the store `mixmag embed` makes, cell for cell, and value for
    value where every tile's footprint is a whole number of level-0 px (0.5 um/px: 224, 448, 896 px). At 0.499 um/px
    the footprints are 224.4-897.8 px: TRIDENT reads the rounded footprint at the rounded origin, mixmag resamples the
    exact box, so the cells match and the values only approximately (the README says which)."""
    from conftest import make_tissue_slide

    from mixmag.encoders.model import build_encoder
    from mixmag.slides.reader import Slide
    from mixmag.slides.sources import SlideSource
    from mixmag.stages.embed import find_plans, run_embed
    from mixmag.stages.tile import tile_slides

    folder = slide_dir / f"roundtrip-{mpp}"
    folder.mkdir(exist_ok=True)
    source = make_tissue_slide(folder, "roundtrip.tiff", mpp=mpp, size=(1900, 1900), seed=5, downsamples=(1, 4))
    plans = tmp_path / "tiles"
    tile_slides([SlideSource(source, "roundtrip")], plans, TilingParams(region_size=1, tissue_threshold=0.05))
    encoder = build_encoder("stats")
    run_embed(find_plans(plans), tmp_path / "mixmag", encoder, device=torch.device("cpu"), workers=0, mode="pyramid")
    own = read_store(tmp_path / "mixmag" / "roundtrip.h5")
    assert len(own) >= 2
    assert runner.invoke(app, ["store", "coords", "--plans", str(plans), "--out", str(tmp_path / "job")]).exit_code == 0
    with Slide(source) as slide:
        for patches in sorted((tmp_path / "job").glob("*/patches/roundtrip_patches.h5")):
            with h5py.File(patches) as f:
                coords, attrs = f["coords"][()], dict(f["coords"].attrs)
            # as WSIPatcher (l.135-147) reads: round(patch_size * dst/src pixel size) level-0 px at (x, y), resized
            side = round(
                attrs["patch_size"] * (10 / attrs["target_magnification"]) / (10 / attrs["level0_magnification"])
            )
            tiles = np.stack(
                [
                    slide.read_box(
                        Box(x, y, x + side, y + side),
                        10 / attrs["target_magnification"],
                        (attrs["patch_size"], attrs["patch_size"]),
                    )
                    for x, y in coords
                ]
            )
            with torch.inference_mode():
                features = encoder(torch.from_numpy(tiles)).float().numpy()
            order = np.random.default_rng(0).permutation(len(coords))  # TRIDENT's row order is its own business
            out = patches.parent.parent / "features_stats" / "roundtrip.h5"
            out.parent.mkdir(exist_ok=True)
            with h5py.File(out, "w") as f:  # WSI.py l.1026-1034
                f.create_dataset("features", data=features[order])
                f.create_dataset("coords", data=coords[order])
                f["features"].attrs.update({"name": "roundtrip", "savetodir": str(out.parent), "encoder": "stats"})
                f["coords"].attrs.update(attrs)
    result = runner.invoke(
        app,
        [
            "store",
            "import",
            str(tmp_path / "job"),
            "--format",
            "trident",
            "--plans",
            str(plans),
            "--out",
            str(tmp_path / "imported"),
        ],
    )
    assert result.exit_code == 0, result.output
    imported = read_store(tmp_path / "imported" / "roundtrip.h5")
    assert imported.attrs["encoder"] == "stats" and imported.attrs["plan_digest"] == own.attrs["plan_digest"]
    plan = load_plan(plans / "roundtrip" / "plan.json")
    if whole_pixel_footprints(plan.cell_px, plan.levels.n_levels):
        assert mpp == 0.5
        assert_same_store(own, imported, encoder_too=False)
        return
    assert mpp == 0.499
    np.testing.assert_array_equal(own.rc, imported.rc)  # the same cells, tiles and layout ...
    np.testing.assert_array_equal(own.tissue, imported.tissue)
    for name in own.embeddings:  # ... and features of the same tissue, resampled from boxes up to 0.5 px apart
        a, b = own.embeddings[name].astype(np.float64), imported.embeddings[name].astype(np.float64)
        assert a.shape == b.shape and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99  # measured: >= 0.9996
    finest = plan.levels.names[-1]  # 20x: 224.45 px boxes read as 224 px ones; measured up to 6.8% of the largest value
    assert not np.array_equal(own.embeddings[finest], imported.embeddings[finest])


def _mask_plan(tmp_path) -> tuple[Path, TilingPlan, np.ndarray]:
    import cv2

    plan_path, plan = make_plan(tmp_path / "plans")
    mask = np.zeros((60, 70), np.uint8)
    cv2.circle(mask, (30, 28), 18, 255, -1)
    cv2.circle(mask, (30, 28), 5, 0, -1)  # a hole
    mask[5:12, 55:65] = 255  # a second piece
    cv2.imwrite(str(plan_path.parent / "tissue_mask.png"), np.dstack([mask] * 3))
    return plan_path, plan, mask > 0


def test_qupath_geojson_has_valid_tissue_and_the_plans_regions(tmp_path):
    from shapely.geometry import shape

    plan_path, plan, mask = _mask_plan(tmp_path)
    result = runner.invoke(app, ["export", "qupath", "--plans", str(tmp_path / "plans"), "--out", str(tmp_path / "qp")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "qp" / "s1.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and all(f["type"] == "Feature" for f in doc["features"])
    tissue = [f for f in doc["features"] if f["properties"]["objectType"] == "annotation"]
    tiles = [f for f in doc["features"] if f["properties"]["objectType"] == "tile"]
    assert len(tissue) == 2 and len(tiles) == len(plan.regions) == 1
    shapes = [shape(f["geometry"]) for f in tissue]
    assert all(s.is_valid for s in shapes) and any(len(s.interiors) == 1 for s in shapes)
    px_area = plan.slide.width * plan.slide.height / mask.size
    assert sum(s.area for s in shapes) == pytest.approx(mask.sum() * px_area, rel=0.2)  # traced through pixel centres
    x0, y0, x1, y1 = np.array([s.bounds for s in shapes]).T
    assert x0.min() >= 0 and y0.min() >= 0 and x1.max() <= plan.slide.width and y1.max() <= plan.slide.height
    box = plan.grid.window_box(0, 0, plan.params.region_size)
    assert tiles[0]["geometry"]["coordinates"][0] == [
        [box.x0, box.y0],
        [box.x1, box.y0],
        [box.x1, box.y1],
        [box.x0, box.y1],
        [box.x0, box.y0],
    ]
    assert shape(tiles[0]["geometry"]).is_valid
    assert tiles[0]["properties"]["measurements"]["tissue fraction"] == plan.region_tissue[0]


def test_qupath_geojson_carries_the_predictions_attribution(tmp_path):
    plan_path, plan, _ = _mask_plan(tmp_path)
    from mixmag.eval.explain import SlideAttribution, save_attribution

    heat = tmp_path / "work" / "heatmaps"
    levels = {
        name: np.arange((2 * 2**i) ** 2, dtype=np.float32).reshape(2 * 2**i, 2 * 2**i)
        for i, name in enumerate(plan.levels.names)
    }
    maps = {f"map_{name}": m for name, m in levels.items()}
    save_attribution(
        SlideAttribution(
            slide_id="s1",
            score=0.73,
            method="AB-MIL attention",
            level_names=list(levels),
            level_maps=levels,
            region_size=2,
            regions=np.array([[0, 0]]),
            region_weight=np.array([0.8]),
            region_contribution=np.array([-1.25]),
        ),
        heat / "s1.npz",
    )  # what `mixmag predict` writes
    path = qupath.write_slide(plan_path, plan, tmp_path / "qp", heat)
    doc = json.loads(path.read_text())
    region = next(f for f in doc["features"] if f["properties"]["objectType"] == "tile")["properties"]["measurements"]
    assert region["AB-MIL attention"] == pytest.approx(0.8) and region["score contribution"] == pytest.approx(-1.25)
    assert region["attribution 20x"] == pytest.approx(maps["map_20x"].sum())  # the 2x2-cell region covers the whole map
    assert sum(region[f"attribution share {n}"] for n in plan.levels.names) == pytest.approx(1.0)
    tissue = next(f for f in doc["features"] if f["properties"]["objectType"] == "annotation")
    assert tissue["properties"]["measurements"]["slide score"] == pytest.approx(0.73)
    np.savez(heat / "s1.npz", **maps, regions=np.array([[1, 1]]), region_weight=np.array([0.8]), summary=np.array("{}"))
    with pytest.raises(InteropError, match="made on other regions than plan s1's"):
        qupath.write_slide(plan_path, plan, tmp_path / "qp", heat)
    np.savez(heat / "s1.npz", **maps, regions=np.array([[0, 0]]), region_weight=np.array([0.8]), summary="{}")
    old = json.loads(qupath.write_slide(plan_path, plan, tmp_path / "qp", heat).read_text())  # older predict output
    tile = next(f for f in old["features"] if f["properties"]["objectType"] == "tile")["properties"]["measurements"]
    assert "score contribution" not in tile and tile["AB-MIL attention"] == pytest.approx(0.8)
    small = {k: v[:, :1] for k, v in maps.items()}  # maps that do not reach the region's right-hand column
    np.savez(heat / "s1.npz", **small, regions=np.array([[0, 0]]), region_weight=np.array([0.8]), summary="{}")
    with pytest.raises(InteropError, match="made on other regions than plan s1's"):
        qupath.write_slide(plan_path, plan, tmp_path / "qp", heat)


def test_import_cli_names_the_refused_slide_and_builds_the_others(tmp_path):
    for slide in ("a1", "b2"):
        store_path, plan = make_store(tmp_path, slide)
        trident.export_store(read_store(store_path), plan, tmp_path / "tri")
    trident_file(tmp_path / "tri", "10x", "a1").unlink()
    result = runner.invoke(
        app,
        ["store", "import", str(tmp_path / "tri"), "--plans", str(tmp_path / "plans"), "--out", str(tmp_path / "back")],
    )
    assert result.exit_code == 1 and "a1: level 10x: no features for level(s) 10x" in result.output
    assert not (tmp_path / "back" / "a1.h5").exists() and read_store(tmp_path / "back" / "b2.h5").dim == 6
    result = runner.invoke(app, ["store", "import", str(tmp_path / "tri"), "--plans", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no tiling plans" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "hostile",
    [
        {"region_weight": np.array(["heavy"])},  # text where numbers belong
        {"region_contribution": np.array([["a", "b"]])},
        {"regions": np.array([["x", "y"]])},
    ],
)
def test_qupath_export_refuses_a_hostile_attribution_file_with_one_sentence(tmp_path, hostile):
    plan_path, plan, _ = _mask_plan(tmp_path)
    heat = tmp_path / "heatmaps"
    heat.mkdir()
    maps = {f"map_{n}": np.ones((2 * 2**i, 2 * 2**i)) for i, n in enumerate(plan.levels.names)}
    fields = {"regions": np.array([[0, 0]]), "region_weight": np.array([0.8]), "summary": np.array("{}"), **hostile}
    np.savez(heat / "s1.npz", **maps, **fields)
    with pytest.raises(InteropError, match="not a readable attribution file"):
        qupath.write_slide(plan_path, plan, tmp_path / "qp", heat)


def test_qupath_export_leaves_out_a_score_that_is_not_a_number(tmp_path):
    plan_path, plan, _ = _mask_plan(tmp_path)
    heat = tmp_path / "heatmaps"
    heat.mkdir()
    maps = {f"map_{n}": np.ones((2 * 2**i, 2 * 2**i)) for i, n in enumerate(plan.levels.names)}
    summary = json.dumps({"score": "0.9; drop table"})
    np.savez(heat / "s1.npz", **maps, regions=np.array([[0, 0]]), region_weight=np.array([0.8]), summary=summary)
    doc = json.loads(qupath.write_slide(plan_path, plan, tmp_path / "qp", heat).read_text())
    tissue = next(f for f in doc["features"] if f["properties"]["objectType"] == "annotation")
    assert "slide score" not in tissue["properties"].get("measurements", {})


def test_import_names_the_plans_with_no_tissue_it_builds_no_store_for(tmp_path):
    store_path, plan = make_store(tmp_path, "a1")
    trident.export_store(read_store(store_path), plan, tmp_path / "tri")
    make_plan(tmp_path / "plans", "blank", cells=[])
    args = ["store", "import", str(tmp_path / "tri"), "--plans", str(tmp_path / "plans"), "--out", str(tmp_path / "b")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 plan(s) with no tissue cells, no store built: blank" in result.output
    assert (tmp_path / "b" / "a1.h5").exists() and not (tmp_path / "b" / "blank.h5").exists()


@pytest.mark.parametrize("mpp", [0.2202, 0.2431, 0.25, 0.2631, 0.2765, 0.3, 0.345, 0.4606, 0.499, 0.5, 0.5034])
def test_trident_slide_encoders_grid_gives_every_patch_its_own_position(mpp):
    """TRIDENT's CARE / Prov-GigaPath put patch (x, y) at grid (x // patch_size_level0, y // patch_size_level0): over a
    whole 75 mm slide, at every level, no two of mixmag's exported patches may share a position."""
    from types import SimpleNamespace

    from mixmag.geometry import LevelSpec
    from mixmag.interop.grid import rounded_origins
    from mixmag.interop.trident import coords_attrs

    levels = LevelSpec()
    cell_px = levels.cell_um / mpp
    n = int(75_000 / levels.cell_um)  # cells along a 75 mm slide
    cells = np.stack(np.meshgrid(np.arange(n), np.arange(2)), -1).reshape(-1, 2)  # two rows, every column
    plan = SimpleNamespace(
        levels=levels,
        params=SimpleNamespace(tile_px=224),
        cell_px=cell_px,
        slide=SimpleNamespace(mpp=mpp, width=10**6, height=10**6, slide_id="s"),
    )
    for level in range(levels.n_levels):
        size = coords_attrs(plan, level, "s", Path("."))["patch_size_level0"]
        grid = rounded_origins(cells, cell_px, level) // size
        assert len(np.unique(grid, axis=0)) == len(grid), (mpp, level, size)
