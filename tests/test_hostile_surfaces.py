"""Hostile inputs to the newer surfaces: `store export --mixer` and `store pool` over damaged stores, annotation
files that are links or FIFOs, damaged `.mixmag` folders, cross-validated run folders with odd fold folders. One
bad slide is that slide's failure, said in one sentence; the rest of the batch is done."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_interop import make_store
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.models.mixer import RegionMixer, mixer_config
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


def test_a_pool_into_a_link_to_the_stores_folder_never_overwrites_a_store(mixer_and_store, tmp_path):
    _, store = mixer_and_store
    (tmp_path / "alias").symlink_to(store.parent)
    before = store.read_bytes()
    result = _invoke("store", "pool", store, "--out", tmp_path / "alias")
    assert result.exit_code == 1 and "overwrite the store it reads" in result.output, result.output
    assert store.read_bytes() == before
