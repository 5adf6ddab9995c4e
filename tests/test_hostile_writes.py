"""Hostile conditions for writers (issue 11 §5-6): a disk that fills up, and two processes writing one folder.

A full disk is one line naming the file, never a traceback or a crash; what was finished stays intact, nothing partial
is left, the batch goes on where a smaller output may still fit, and the same command completes once space is freed.
Two processes never share a temporary name; a pretraining run folder and a store being made are locked.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tissue_slide
from small_disk import open_small_disk
from typer.testing import CliRunner

from mixmag.catalog import refresh_catalog
from mixmag.cli import app
from mixmag.encoders.model import build_encoder
from mixmag.slides.sources import SlideSource
from mixmag.slides.tiling import TilingParams, load_plan, save_plan
from mixmag.stages.embed import find_plans, run_embed
from mixmag.stages.predict import SlideOutcome, write_outcomes
from mixmag.stages.tile import tile_slides, write_summary
from mixmag.store import read_store, write_store
from mixmag.synth.slide_writer import write_slide
from mixmag.synth.stores import synthetic_store
from mixmag.train.mixer_file import export_mixer
from mixmag.train.pretrain import PretrainConfig, build_model, load_config, run_pretraining, save_checkpoint

CPU = torch.device("cpu")
TESTS = Path(__file__).resolve().parent
PARAMS = TilingParams(region_size=1)
runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".partial" in p.name]


@pytest.fixture
def disk(tmp_path, monkeypatch):
    small = open_small_disk(tmp_path / "disk", monkeypatch.setattr)
    yield small
    small.close()


@pytest.fixture(scope="module")
def slides(tissue_slide, tmp_path_factory) -> list[Path]:
    """A large slide first, a small one after it: a disk with room for the small one only shows the batch go on."""
    folder = tmp_path_factory.mktemp("wslides")
    big = folder / "big.tiff"
    big.symlink_to(tissue_slide)
    return [big, make_tissue_slide(folder, "small.tiff", size=(1000, 1000), seed=2, tissue_mask=np.ones((4, 4), bool))]


def _sources(slides):
    return [SlideSource(p, p.stem) for p in slides]


@pytest.fixture(scope="module")
def reference(slides, tmp_path_factory) -> Path:
    """Tiles and stores of both slides made on a roomy disk."""
    d = tmp_path_factory.mktemp("wref")
    tile_slides(_sources(slides), d / "tiles", PARAMS)
    run_embed(find_plans(d / "tiles"), d / "stores", build_encoder("stats"), device=CPU, workers=0)
    return d


def _same_tiling(folder: Path, ref: Path) -> None:
    plans = [load_plan(f / "plan.json").model_dump(exclude={"created"}) for f in (folder, ref)]
    assert plans[0] == plans[1]
    for name in ("tissue_mask.png", "qc_tissue.png", "qc_regions.png"):
        assert (folder / name).read_bytes() == (ref / name).read_bytes()


def _tile_cli(slides, out: Path, *extra):
    return _invoke("tile", *slides, "--out", out, "--region-size", "1", *extra)


def test_tile_on_a_full_disk_fails_only_what_does_not_fit_and_completes_when_space_is_freed(slides, reference, disk):
    ref = reference / "tiles"
    need = {sid: sum(f.stat().st_size for f in (ref / sid).iterdir()) for sid in ("big", "small")}
    disk.leave((need["big"] + need["small"]) // 2)
    out = disk.root / "tiles"
    result = _tile_cli(slides, out)
    assert result.exit_code == 1, result.output
    assert re.search(r"big: FAILED - no space left on device writing \S+big \(needs at least [\d.]+ kB", result.output)
    assert "small: tiled" in result.output  # the batch went on, and the small slide fitted
    assert not (out / "big").exists() or not list((out / "big").iterdir())  # nothing of the slide that did not fit
    _same_tiling(out / "small", ref / "small")
    assert not _partials(disk.root)

    disk.unlimit()
    again = _tile_cli(slides, out)
    assert again.exit_code == 0, again.output
    assert "big: tiled" in again.output and "small: skipped (plan is current)" in again.output
    _same_tiling(out / "big", ref / "big")


def test_a_full_disk_at_the_tiling_summary_is_one_line(slides, reference, disk):
    out = disk.root / "tiles"
    tile_slides(_sources(slides), out, PARAMS)
    before = (out / "tiling_summary.json").read_bytes()
    disk.leave(0)
    result = _tile_cli(slides, out, "--force")  # every slide fails, then the summary cannot be written either
    assert result.exit_code == 2, result.output
    assert re.search(r"error: no space left on device writing \S+tiling_summary\.json", result.output)
    assert (out / "tiling_summary.json").read_bytes() == before and not _partials(disk.root)
    _same_tiling(out / "small", reference / "tiles" / "small")  # finished outputs intact


def _embed_cli(reference: Path, out: Path):
    return _invoke("embed", "--plans", reference / "tiles", "--out", out, "--encoder", "stats", "--workers", "0")


def _same_store(path: Path, ref: Path) -> None:
    a, b = read_store(path), read_store(ref)
    assert a.attrs == b.attrs and list(a.embeddings) == list(b.embeddings)
    for name in a.embeddings:
        np.testing.assert_array_equal(a.embeddings[name], b.embeddings[name])


def test_embed_on_a_full_disk_fails_the_store_that_does_not_fit_and_goes_on(reference, disk):
    ref = reference / "stores"
    big, small = ((ref / f"{s}.h5").stat().st_size for s in ("big", "small"))
    # a small page each: the cohort list, the claim held while a store is made, the failed big slide's state record;
    # the room is halfway between what the small slide needs (3 pages) and what the big one would (2 pages)
    page = disk.footprint(64)
    disk.leave(disk.footprint(small) + 3 * page + (disk.footprint(big) - disk.footprint(small) - page) // 2)
    out = disk.root / "stores"
    result = _embed_cli(reference, out)  # HDF5 writing to a full disk itself crashed the process at exit (139)
    assert result.exit_code == 1, result.output
    assert re.search(r"big: failed .*no space left on device writing \S+big\.h5", result.output)
    assert "small: embedded" in result.output
    assert not (out / "big.h5").exists() and not _partials(disk.root)
    _same_store(out / "small.h5", ref / "small.h5")

    disk.unlimit()
    again = _embed_cli(reference, out)
    assert again.exit_code == 0, again.output
    assert "big: embedded" in again.output and "small: skipped" in again.output
    _same_store(out / "big.h5", ref / "big.h5")


def test_embed_refuses_a_store_that_cannot_fit_before_embedding_its_tiles(reference, disk):
    encoder = build_encoder("stats")
    calls = []
    encoder.register_forward_hook(lambda *_: calls.append(1))
    disk.leave(1000)  # less than the float16 embeddings of one cell
    results = run_embed(find_plans(reference / "tiles"), disk.root / "stores", encoder, device=CPU, workers=0)
    assert [r.outcome for r in results] == ["failed", "failed"]
    refused = r"no space left on device writing \S+\.h5 \(needs at least [\d.]+ kB, [\d.]+ (bytes|kB) free\)"
    assert all(re.search(refused, r.error) for r in results)
    assert not calls  # no encoder time spent on stores that cannot be written


_WRITE_A_STORE = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from mixmag.fileio import DiskFullError
from mixmag.store import write_store
from mixmag.synth.stores import synthetic_store
folder = Path({folder!r})
if {injected!r}:  # no small file system here: the child fills an injected disk of its own
    from small_disk import InjectedDisk
    InjectedDisk(folder, setattr).leave(0)
try:
    write_store(folder / "s.h5", synthetic_store("s", n_rows=12, n_cols=12))
except DiskFullError as exc:
    print(exc)
"""


def test_a_store_on_a_full_disk_never_crashes_the_process(disk):
    disk.leave(0)
    injected = disk.kind == "injected"
    folder = disk.root / "child" if injected else disk.root
    script = _WRITE_A_STORE.format(tests=str(TESTS), folder=str(folder), injected=injected)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]  # HDF5 meeting the full disk itself: segfault (-11) at exit
    assert re.search(r"no space left on device writing \S+s\.h5", done.stdout) and "Traceback" not in done.stderr
    assert not _partials(disk.root)


def test_a_full_disk_leaves_the_store_catalog_in_memory(disk):
    folder = disk.root / "stores"
    for i in range(2):
        write_store(folder / f"s{i}.h5", synthetic_store(f"s{i}", seed=i))
    disk.leave(0)  # SQLite says "database or disk is full" where the OS says ENOSPC
    catalog, _ = refresh_catalog(folder)
    assert len(catalog) == 2 and not _partials(disk.root)


@pytest.fixture(scope="module")
def pretrain_stores(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wpstores")
    for i in range(3):
        write_store(d / f"s{i}.h5", synthetic_store(f"s{i}", seed=i, n_rows=8, n_cols=8))
    return d


def _pretrain_config(stores: Path, out: Path, steps: int) -> Path:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(
        f"stores: {stores}\nout: {out}\npreset: tiny\nbatch_size: 8\nsteps: {steps}\nwarmup_steps: 2\n"
        "precision: fp32\nworkers: 0\nper_slide: 8\npool: 2\nlog_every: 5\ncheckpoint_every: 10\n"
        "tensorboard: false\npeak_tflops: 1.0\n"
    )
    return config


def _pretrain_cli(stores: Path, out: Path, steps: int):
    return _invoke("pretrain", "--config", _pretrain_config(stores, out, steps), "--device", "cpu")


def _log(run: Path) -> tuple[list[str], list[int]]:
    lines = (run / "log.csv").read_text().splitlines()
    return [line for line in lines if line.startswith("step,")], [int(r["step"]) for r in csv.DictReader(lines)]


def test_pretrain_on_a_full_disk_keeps_its_last_checkpoint_and_resumes(pretrain_stores, disk):
    run = disk.root / "run"
    assert _pretrain_cli(pretrain_stores, run, 10).exit_code == 0
    checkpoint = run / "checkpoints" / "last.pt"
    disk.leave(checkpoint.stat().st_size // 2)  # room for the log, not for a second checkpoint beside the first
    result = _pretrain_cli(pretrain_stores, run, 20)
    assert "Resuming from step 10 of 20" in result.output
    assert result.exit_code == 2, result.output
    assert re.search(r"error: no space left on device writing \S+checkpoints/last\.pt", result.output)
    assert torch.load(checkpoint, weights_only=True)["step"] == 10 and not _partials(disk.root)
    headers, steps = _log(run)
    assert len(headers) == 1 and steps == [5, 10, 15, 20]  # whole rows only

    disk.unlimit()
    again = _pretrain_cli(pretrain_stores, run, 20)
    assert again.exit_code == 0, again.output
    assert "Resuming from step 10 of 20" in again.output
    headers, steps = _log(run)
    assert len(headers) == 1 and steps == [5, 10, 15, 20]  # the rows after the checkpoint were done once more
    assert torch.load(checkpoint, weights_only=True)["step"] == 20 and (run / "mixer.safetensors").is_file()


@contextmanager
def _claimed(folder: Path, stage: str, slide: str, purpose: str):
    """Another process holding a slide's claim (as a second `mixmag` worker would); yields its pid."""
    code = (
        "import sys; from mixmag.claims import SlideClaims; "
        f"claims = SlideClaims({str(folder)!r}, {stage!r}); claims.claim({slide!r}, {purpose!r}); "
        "print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(60)


def test_a_second_pretraining_on_a_run_folder_in_use_is_refused_and_the_first_finishes_clean(pretrain_stores, tmp_path):
    """The first run is paused at its first log row (holding the folder) while a second `mixmag pretrain` starts;
    flock locks belong to open files, so a thread stands in for a second process and the test needs no timing."""
    run = tmp_path / "run"
    config = load_config(_pretrain_config(pretrain_stores, run, 10))
    holding, go_on, errors = threading.Event(), threading.Event(), []

    def pause_once(row: dict) -> None:
        holding.set()
        go_on.wait(120)

    def train() -> None:
        try:
            run_pretraining(config, device=CPU, on_log=pause_once)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
            holding.set()

    first = threading.Thread(target=train)
    first.start()
    try:
        assert holding.wait(120)
        second = _pretrain_cli(pretrain_stores, run, 10)
    finally:
        go_on.set()
        first.join(120)
    assert not errors and second.exit_code == 2
    assert re.search(
        rf"error: \S+run is in use by pid {os.getpid()} on \S+ \(pretraining\): wait for it", second.output
    )
    headers, steps = _log(run)
    assert len(headers) == 1 and steps == [5, 10]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 10


def test_embed_leaves_a_store_another_process_is_making_to_it(reference, tmp_path):
    out = tmp_path / "stores"
    with _claimed(out, "embed", "big", "embedding big") as pid:
        result = _embed_cli(reference, out)
        assert result.exit_code == 0, result.output
        assert re.search(rf"big: skipped .*in use by pid {pid} on \S+ \(embedding big\)", result.output)
        assert "small: embedded" in result.output and not (out / "big.h5").exists()
    again = _embed_cli(reference, out)
    assert "big: embedded" in again.output and "small: skipped" in again.output
    _same_store(out / "big.h5", reference / "stores" / "big.h5")


def test_two_tile_processes_on_one_folder_both_succeed(slides, reference, tmp_path):
    out = tmp_path / "tiles"
    cmd = [
        sys.executable,
        "-m",
        "mixmag.cli",
        "tile",
        *map(str, slides),
        "--out",
        str(out),
        "--region-size",
        "1",
        "--force",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    both = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    for process in both:
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, output
    for sid in ("big", "small"):
        _same_tiling(out / sid, reference / "tiles" / sid)
    assert not _partials(out)


def _checkpoint(path: Path) -> None:
    config = PretrainConfig(stores="-", out="-", preset="tiny", precision="fp32")
    model, mixer_cfg = build_model(config, 8, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(path, model, optimizer, torch.amp.GradScaler("cpu", enabled=False), 1, config, mixer_cfg, 1, CPU)


def _mixer(path: Path) -> None:
    config = PretrainConfig(stores="-", out="-", preset="tiny", precision="fp32")
    model, mixer_cfg = build_model(config, 8, 3)
    export_mixer(path.parent, model.mixer, mixer_cfg, {}, {})


WRITERS = {
    "plan": lambda path, ref: save_plan(load_plan(ref / "tiles" / "small" / "plan.json"), path),
    "tiling summary": lambda path, ref: write_summary(path.parent, PARAMS, []),
    "store": lambda path, ref: write_store(path, synthetic_store("s")),
    "predictions": lambda path, ref: write_outcomes(path, [SlideOutcome("s", 0.5)], None, []),
    "checkpoint": lambda path, ref: _checkpoint(path),
    "mixer": lambda path, ref: _mixer(path),
    "slide": lambda path, ref: write_slide(path, np.full((64, 64, 3), 200, np.uint8), 0.5, tile=32),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_two_writers_of_one_file_never_share_a_temporary_name(writer, reference, tmp_path, monkeypatch):
    """A second writer of the same file runs start to end while the first is between writing and renaming
    (as a second process would): with a shared temporary name the first one's rename finds nothing."""
    folder = tmp_path / "out"
    path = folder / ("tiling_summary.json" if writer == "tiling summary" else "x")
    real_replace, nested = os.replace, []

    def replace(src, dst):
        if not nested:
            nested.append(dst)
            WRITERS[writer](path, reference)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    WRITERS[writer](path, reference)
    assert nested and all(Path(p).stat().st_size > 0 for p in folder.iterdir())
    assert not _partials(folder)
