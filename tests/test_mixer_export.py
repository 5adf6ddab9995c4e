"""The mixer's tokens and region embeddings as TRIDENT and CLAM feature files (`mixmag store export --mixer`).

Checked the way tests/test_interop.py checks the tile-embedding exports: the datasets, dtypes and attributes TRIDENT's
and CLAM's own code read (TRIDENT a91fa84: IO.py, WSI.py, Processor.py; CLAM 53e2409: dataset_generic.py), TRIDENT's
patch reading arithmetic, and its slide encoders' grid (coords // patch_size_level0) giving every patch its own place.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from test_interop import MPP, TRIDENT_COORDS_ATTRS, TRIDENT_FEATURES_ATTRS, make_store
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.data.bags import region_bag
from mixmag.fileio import file_sha256
from mixmag.geometry import token_slots
from mixmag.interop.grid import rounded_origins
from mixmag.interop.mixer_tokens import token_tiles
from mixmag.models.mixer import RegionMixer, mixer_config
from mixmag.store import read_store
from mixmag.train.mixer_file import export_mixer, load_mixer

runner = CliRunner()
LEVELS = ("5x", "10x", "20x")


@pytest.fixture()
def exported(tmp_path, request):
    """A store (2 x 2 cells, one 2 x 2 region, 3 levels), a small random mixer for it, and the CLI's export."""
    fmt = request.param
    store_path, plan = make_store(tmp_path)
    cfg = mixer_config("tiny", in_dim=6, t=2, n_levels=3)
    torch.manual_seed(0)
    (tmp_path / "run").mkdir()
    weights = export_mixer(tmp_path / "run", RegionMixer(cfg), cfg, {"preset": "tiny"}, {})
    out = tmp_path / fmt
    result = runner.invoke(
        app, ["store", "export", str(store_path), "--mixer", str(tmp_path / "run"), "--format", fmt, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    mixer, digest = load_mixer(weights)
    with torch.no_grad():
        tokens, cls = mixer(torch.from_numpy(region_bag(store_path).astype(np.float32)))
    return store_path, plan, out, tokens.numpy(), cls.numpy(), digest


def test_tokens_sit_on_the_tiles_the_tile_export_names():
    """Token (level i, r, c) of the region at (row, col) is sub-tile (r mod 2^i, c mod 2^i) of cell
    (row + r div 2^i, col + c div 2^i): the same rounded top-left the tile-embedding export writes."""
    cell_px = 224 * 2.0 / MPP
    windows = np.array([[0, 0], [1, 2]])
    tiles = token_tiles(windows, 2, 3, cell_px)
    slots = token_slots(2, 3)
    for level, (positions, coords) in enumerate(tiles):
        per = 2**level
        for k, pos in enumerate(positions):
            w, s = divmod(int(pos), len(slots))
            lvl, r, c = slots[s]
            assert lvl == level
            cell = np.array([[windows[w, 0] + r // per, windows[w, 1] + c // per]])
            expected = rounded_origins(cell, cell_px, level)[(r % per) * per + c % per]
            np.testing.assert_array_equal(coords[k], expected)


@pytest.mark.parametrize("exported", ["trident"], indirect=True)
def test_trident_files_of_the_mixers_tokens_and_regions(exported):
    store_path, plan, out, tokens, cls, digest = exported
    store = read_store(store_path)
    flat = tokens.reshape(-1, tokens.shape[-1])
    tiles = token_tiles(store.windows["regions"], 2, 3, plan.cell_px)
    folders = [f"{name}_224px_0px_overlap" for name in LEVELS] + ["5x_448px_0px_overlap"]  # + the 2 x 2 regions
    for i, folder in enumerate(folders):
        with h5py.File(out / folder / "features_mixmag_mixer" / "s1.h5") as f:
            assert set(f) == {"features", "coords"}
            feats, coords = f["features"], f["coords"]
            assert feats.dtype == np.float32 and coords.dtype == np.int64 and coords.shape == (len(feats), 2)
            for attrs, spec in (
                (dict(coords.attrs), TRIDENT_COORDS_ATTRS),
                (dict(feats.attrs), TRIDENT_FEATURES_ATTRS),
            ):
                for key, kind in spec.items():
                    value = attrs[key].item() if isinstance(attrs[key], np.generic) else attrs[key]
                    assert isinstance(value, kind) and not isinstance(value, bool), (key, type(value))
                assert all(k.startswith("mixmag_") for k in attrs.keys() - spec.keys())
            a, fa = dict(coords.attrs), dict(feats.attrs)
            assert fa["encoder"] == "mixmag_mixer" and fa["mixmag_mixer_digest"] == digest
            assert fa["mixmag_store_sha256"] == file_sha256(store_path)
            # WSIPatcher.py l.135-147: TRIDENT reads round(patch_size * level0_mag / target_mag) level-0 px per patch
            read_px = a["patch_size"] * a["level0_magnification"] / a["target_magnification"]
            assert abs(read_px - a["mixmag_patch_size_level0"]) < 1e-6
            assert a["patch_size_level0"] == int(a["mixmag_patch_size_level0"])  # floor: the slide encoders' grid
            grid = coords[()] // a["patch_size_level0"]
            assert len(np.unique(grid, axis=0)) == len(grid)  # every patch its own grid position
            if i < 3:
                positions, expected_coords = tiles[i]
                np.testing.assert_allclose(feats[()], flat[positions], atol=1e-6)
                np.testing.assert_array_equal(coords[()], expected_coords)
                assert len(feats) == 4 * 4**i  # the one 2 x 2 region covers every cell here
            else:
                assert a["patch_size"] == 448 and a["mixmag_region_size"] == 2
                np.testing.assert_allclose(feats[()], cls, atol=1e-6)
                np.testing.assert_array_equal(coords[()], [[0, 0]])


@pytest.mark.parametrize("exported", ["clam"], indirect=True)
def test_clam_files_of_the_mixers_tokens_and_regions(exported):
    store_path, plan, out, tokens, cls, digest = exported
    flat = tokens.reshape(-1, tokens.shape[-1])
    tiles = token_tiles(read_store(store_path).windows["regions"], 2, 3, plan.cell_px)
    for name, (expected, coords) in [
        *((n, (flat[p], c)) for n, (p, c) in zip(LEVELS, tiles)),
        ("regions", (cls, np.zeros((1, 2), np.int64))),
    ]:
        with h5py.File(out / name / "h5_files" / "s1.h5") as f:  # dataset_generic.py l.346-353 reads both whole
            assert set(f) == {"features", "coords"} and not f.attrs.keys() and not f["coords"].attrs.keys()
            assert f["features"].dtype == np.float32 and f["coords"].dtype == np.int32
            np.testing.assert_allclose(f["features"][()], expected, atol=1e-6)
            np.testing.assert_array_equal(f["coords"][()], coords)
            assert f["features"].attrs["mixmag_mixer_digest"] == digest
        pt = torch.load(out / name / "pt_files" / "s1.pt", weights_only=True)  # dataset_generic.py l.339
        assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float32
        np.testing.assert_allclose(pt.numpy(), expected, atol=1e-6)


def test_a_store_the_mixer_does_not_fit_is_named_and_others_go_on(tmp_path):
    good, _ = make_store(tmp_path, "s1")
    cfg = mixer_config("tiny", in_dim=8, t=2, n_levels=3)  # 8-d tokens: the stores hold 6-d embeddings
    (tmp_path / "run").mkdir()
    export_mixer(tmp_path / "run", RegionMixer(cfg), cfg, {"preset": "tiny"}, {})
    result = runner.invoke(
        app, ["store", "export", str(good), "--mixer", str(tmp_path / "run"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "the mixer takes 8-d" in " ".join(result.output.split())
    assert not list(tmp_path.glob("o/**/*.h5"))
