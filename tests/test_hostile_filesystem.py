"""The filesystem is hostile too (issue 22): links, FIFOs, devices, huge files, unwritable outputs and what killed
processes leave behind. Each probe is run through the command a user would run; none may hang, print a traceback,
or change anything outside the output folder (least of all a file a link points to)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_world import _box, _files, _invoke, _written_outside, make_world
from train_runs import train_config

from mixmag.catalog import PARTS_NAME, CatalogWriter, refresh_catalog
from mixmag.fileio import (
    READ_LIMITS,
    FolderLock,
    UnsafePathError,
    open_lock_file,
    read_bytes_limited,
    remove_own_file,
    temporary_name,
)

PRECIOUS = "a user's file that mixmag must never touch\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return make_world(tmp_path_factory.mktemp("fsworld"))


@pytest.fixture(autouse=True)
def no_hang():
    """A probe that blocks (a FIFO opened for reading waits for a writer forever) fails here instead of hanging."""

    def hung(*_):
        raise TimeoutError("blocked: mixmag waited on a FIFO or a device")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(240)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _precious(folder: Path, name: str = "precious.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(PRECIOUS)
    return path


def _same(*paths: Path) -> None:
    for path in paths:
        assert path.read_text() == PRECIOUS, f"{path} was changed through a link"


def _said(result, *words: str) -> None:
    assert "Traceback" not in result.output, result.output
    for word in words:
        assert word in result.output, result.output


def _yaml(path: Path, config) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


# -- 1. Locks are never followed, never truncate someone else's file -------------------------------------------------


def test_a_train_lock_that_is_a_symlink_never_empties_its_target(tmp_path, small_cohort):
    victim = _precious(tmp_path / "mine")
    run = tmp_path / "out" / "run"
    run.mkdir(parents=True)
    (run / ".lock").symlink_to(victim)
    config = _yaml(tmp_path / "train.yaml", train_config(small_cohort, run))
    result = _invoke("train", "--config", config)
    assert result.exit_code == 2
    _said(result, "lock file is a symbolic link", "remove the link")
    _same(victim)


def _pretrain_yaml(stores: Path, out: Path, **extra) -> Path:
    config = out.parent / f"{out.name}.yaml"
    lines = dict(stores=str(stores), out=str(out), preset="tiny", batch_size=4, steps=2, warmup_steps=1)
    lines |= dict(precision="fp32", workers=0, per_slide=4, pool=2, log_every=1, checkpoint_every=2, tensorboard=False)
    lines |= extra
    config.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))
    return config


@pytest.mark.parametrize("refused_config", [False, True])
def test_a_pretrain_lock_that_is_a_symlink_never_empties_its_target(tmp_path, small_cohort, refused_config):
    victim = _precious(tmp_path / "mine")
    run = tmp_path / "out" / "run"
    run.mkdir(parents=True)
    (run / ".lock").symlink_to(victim)
    extra = {"per_slide": 0} if refused_config else {}
    result = _invoke("pretrain", "--config", _pretrain_yaml(small_cohort / "stores", run, **extra), "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    _same(victim)


def test_an_embed_claim_that_is_a_symlink_never_empties_its_target(tmp_path, world):
    victim = _precious(tmp_path / "mine")
    out = tmp_path / "stores"
    (out / ".mixmag" / "embed").mkdir(parents=True)
    (out / ".mixmag" / "embed" / "s.claim").symlink_to(victim)
    result = _invoke(
        "embed",
        "--plans",
        world["dir"] / "tiles",
        "--out",
        out,
        "--encoder",
        "stats",
        "--workers",
        0,
        "--device",
        "cpu",
    )
    assert result.exit_code == 1
    _said(result, "claim file of slide s is a symbolic link")
    _same(victim)
    assert not (out / "s.h5").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder", "device", "hard link", "huge"])
def test_a_lock_that_is_not_a_small_regular_file_is_one_sentence(tmp_path, kind):
    folder = tmp_path / "run"
    folder.mkdir()
    lock = folder / ".lock"
    victim = _precious(tmp_path / "mine")
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "folder":
        lock.mkdir()
    elif kind == "device":
        lock.symlink_to("/dev/null")  # a link is refused before it is followed; a real node needs mknod
    elif kind == "hard link":
        os.link(victim, lock)
    else:
        lock.write_bytes(b"x" * (50 << 20))
    with pytest.raises(UnsafePathError, match="lock file") as caught:
        FolderLock(folder, "test").acquire()
    assert len(str(caught.value)) < 300  # a 50 MB lock is never printed
    _same(victim)
    if kind == "huge":
        assert lock.stat().st_size == 50 << 20  # not truncated


def test_a_real_device_node_as_lock_is_refused(tmp_path):
    lock = tmp_path / ".lock"
    try:
        os.mknod(lock, 0o600 | 0o020000, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("creating a device node needs root")
    with pytest.raises(UnsafePathError, match="character device"):
        open_lock_file(lock)


def test_the_holder_of_a_lock_is_said_in_one_short_line(tmp_path):
    with FolderLock(tmp_path, "first"):
        lock = tmp_path / ".lock"
        with open(lock, "r+b") as fh:  # what a damaged or hostile holder line looks like
            fh.write(b"[/]\x1b[2J" + b"y" * 3000 + b"\nsecond line")
        with pytest.raises(Exception, match="in use by") as caught:
            FolderLock(tmp_path, "second").acquire()
    message = str(caught.value)
    assert "\x1b" not in message and "second line" not in message and len(message) < 400


# -- 2. The catalog's parts are never followed ------------------------------------------------------------------------


def _stores_copy(small_cohort: Path, tmp_path: Path, n: int = 3) -> Path:
    stores = tmp_path / "stores"
    stores.mkdir()
    for path in sorted((small_cohort / "stores").glob("*.h5"))[:n]:
        shutil.copy(path, stores / path.name)
    return stores


def test_a_symlinked_catalog_parts_folder_never_deletes_what_it_points_to(tmp_path, small_cohort):
    stores = _stores_copy(small_cohort, tmp_path)
    elsewhere = tmp_path / "mine"
    victims = [_precious(elsewhere, f"notes{i}.jsonl") for i in range(3)]
    (stores / PARTS_NAME).symlink_to(elsewhere, target_is_directory=True)
    result = _invoke("store", "index", stores)
    assert result.exit_code == 2
    _said(result, "parts folder is a symbolic link")
    _same(*victims)


def test_a_catalog_part_that_is_a_link_fifo_or_huge_is_skipped_not_followed_or_deleted(tmp_path, small_cohort):
    stores = _stores_copy(small_cohort, tmp_path)
    parts = stores / PARTS_NAME
    parts.mkdir()
    victim = _precious(tmp_path / "mine", "notes.jsonl")
    (parts / "a.jsonl").symlink_to(victim)
    os.mkfifo(parts / "b.jsonl")
    (parts / "c.jsonl").symlink_to("/dev/zero")
    result = _invoke("store", "index", stores)
    assert result.exit_code == 0, result.output
    assert "3 store(s) catalogued" in result.output
    _same(victim)
    assert (parts / "a.jsonl").is_symlink() and (parts / "b.jsonl").exists()  # not ours: left where they are


def test_entries_named_like_stores_that_are_not_files_are_named_once_and_never_opened(tmp_path, small_cohort):
    stores = _stores_copy(small_cohort, tmp_path)
    os.mkfifo(stores / "x.h5")  # opened for reading, it would block the command forever (no_hang fails it)
    (stores / "gone.h5").symlink_to(tmp_path / "nowhere.h5")
    (stores / "dir.h5").symlink_to(tmp_path, target_is_directory=True)
    result = _invoke("store", "index", stores)
    assert result.exit_code == 0, result.output
    _said(result, "3 store(s) catalogued", "3 entries named *.h5 left out, not regular files")
    _said(result, "x.h5 (a FIFO (named pipe))", "gone.h5 (a broken symbolic link)")
    _said(result, "dir.h5 (a symbolic link to a folder)")
    assert result.output.count("x.h5") == 1
    result = _invoke("encode", "--mixer", tmp_path / "no.safetensors", "--stores", stores, "--out", tmp_path / "e")
    _said(result, "x.h5 (a FIFO (named pipe))")  # a command that reads the folder names it too, then goes on
    assert result.output.count("x.h5") == 1


def test_a_killed_writers_open_part_is_folded_and_removed_and_a_live_ones_is_kept(tmp_path, small_cohort):
    stores = _stores_copy(small_cohort, tmp_path)
    first = sorted(stores.glob("*.h5"))[0]
    live = CatalogWriter(stores)
    live.record(first)
    code = (
        "import os, sys; from mixmag.catalog import CatalogWriter; w = CatalogWriter(sys.argv[1]); "
        "w.record(sys.argv[2]); os._exit(0)"  # dies without closing: a killed rank
    )
    subprocess.run(
        [sys.executable, "-c", code, str(stores), str(first)],
        check=True,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
    )
    parts = sorted(p.name for p in (stores / PARTS_NAME).iterdir())
    assert len(parts) == 2 and all(p.endswith(".jsonl.open") for p in parts)
    catalog, _ = refresh_catalog(stores)
    left = [p.name for p in (stores / PARTS_NAME).iterdir()]
    assert left == [live._part.name]  # the dead writer's part was folded, then removed; the live one is still open
    assert len(catalog) == 3
    live.close()


def test_a_catalog_row_through_a_linked_sub_folder_is_not_trusted(tmp_path, small_cohort):
    from mixmag.catalog import lookup_slides

    stores = _stores_copy(small_cohort, tmp_path, n=2)
    outside = tmp_path / "outside"
    outside.mkdir()
    store = sorted((small_cohort / "stores").glob("*.h5"))[5]
    shutil.copy(store, outside / store.name)
    (stores / "linked").symlink_to(outside, target_is_directory=True)
    writer = CatalogWriter(stores)  # what a hand-edited row looks like: a store "inside" through the link
    writer._open()
    from dataclasses import asdict, replace

    from mixmag.catalog import describe_store

    entry = replace(describe_store(outside, store.name), path=f"linked/{store.name}")
    os.write(writer._fd, (__import__("json").dumps(asdict(entry)) + "\n").encode())
    writer.close()
    assert lookup_slides(stores, [entry.slide_id]) == {}


# -- 3. Output sub-folders that are links -----------------------------------------------------------------------------


def test_report_never_writes_heatmaps_through_a_linked_heatmaps_folder(tmp_path, world):
    from mixmag.report.html import build_report

    run = tmp_path / "box" / "run"
    shutil.copytree(world["run"], run)
    config = run / "config.json"
    config.write_text(config.read_text().replace(str(world["dir"] / "no-stores-here"), str(world["stores"])))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "heatmaps").symlink_to(elsewhere, target_is_directory=True)
    before = _files(tmp_path)
    text = build_report(run).read_text()
    assert list(elsewhere.iterdir()) == []
    assert _written_outside(tmp_path, before, run) == []
    assert "resolves outside" in text  # said in the report, not silently dropped


def test_predict_never_writes_through_a_linked_work_sub_folder(tmp_path, world):
    stores = _box(tmp_path, world)
    work = tmp_path / "a" / "work"
    work.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (work / "heatmaps").symlink_to(elsewhere, target_is_directory=True)
    before = _files(tmp_path)
    out = tmp_path / "a" / "p.csv"
    result = _invoke("predict", "--run", world["run"], "--stores", stores, "--work", work, "--out", out)
    assert result.exit_code == 2
    _said(result, "resolves outside")
    assert list(elsewhere.iterdir()) == [] and _written_outside(tmp_path, before, work, stores) == []


def test_tile_never_writes_a_plan_through_a_linked_slide_folder(tmp_path, world):
    out = tmp_path / "tiles"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "s").symlink_to(elsewhere, target_is_directory=True)
    result = _invoke("tile", world["dir"] / "s.tiff", "--out", out, "--tile-px", 32)
    assert result.exit_code == 1
    _said(result, "resolves outside")
    assert list(elsewhere.iterdir()) == []


def test_an_output_folder_that_is_itself_a_link_keeps_working(tmp_path, world):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "tiles").symlink_to(scratch, target_is_directory=True)
    result = _invoke("tile", world["dir"] / "s.tiff", "--out", tmp_path / "tiles", "--tile-px", 32)
    assert result.exit_code == 0, result.output
    assert (scratch / "s" / "plan.json").is_file()


# -- 6, 7. Whole-file reads have a budget; FIFOs and devices never hang ------------------------------------------------


def test_a_huge_sparse_config_is_refused_before_it_is_read(tmp_path):
    config = tmp_path / "big.yaml"
    with open(config, "wb") as fh:
        fh.truncate(4 << 30)  # 4 GiB of holes: no disk used, but a whole-file read would take 4 GiB of memory
    result = _invoke("train", "--config", config)
    assert result.exit_code == 2
    _said(result, "big.yaml", "over the")


def test_a_huge_sparse_cohort_table_is_refused_before_it_is_read(tmp_path):
    table = tmp_path / "cohort.csv"
    with open(table, "wb") as fh:
        fh.write(b"path\n")
        fh.truncate(4 << 30)
    result = _invoke("tile", "--cohort", table, "--out", tmp_path / "tiles")
    assert result.exit_code == 2
    _said(result, "cohort.csv", "over the")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_plan_that_is_a_fifo_or_device_fails_its_slide_and_the_batch_goes_on(tmp_path, world, kind):
    plans = tmp_path / "tiles"
    shutil.copytree(world["dir"] / "tiles" / "s", plans / "s")
    (plans / "bad").mkdir()
    if kind == "fifo":
        os.mkfifo(plans / "bad" / "plan.json")
    else:
        (plans / "bad" / "plan.json").symlink_to("/dev/zero")
    out = tmp_path / "stores"
    result = _invoke("embed", "--plans", plans, "--out", out, "--encoder", "stats", "--workers", 0, "--device", "cpu")
    assert result.exit_code == 1, result.output
    _said(result, "plan.json")
    assert (out / "s.h5").is_file()


def test_a_slide_that_is_a_fifo_fails_alone_and_the_good_slides_are_tiled(tmp_path, world):
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(world["dir"] / "s.tiff", folder / "good.tiff")
    os.mkfifo(folder / "bad.tiff")
    result = _invoke("tile", folder / "good.tiff", folder / "bad.tiff", "--out", tmp_path / "tiles", "--tile-px", 32)
    assert result.exit_code == 1
    _said(result, "FIFO")
    assert (tmp_path / "tiles" / "good" / "plan.json").is_file()


def test_a_catalog_file_and_fold_lock_that_are_fifos_never_hang(tmp_path, small_cohort):
    stores = _stores_copy(small_cohort, tmp_path)
    os.mkfifo(stores / "mixmag-catalog.sqlite")
    os.mkfifo(stores / ".mixmag-catalog.lock")
    result = _invoke("store", "index", stores)
    assert "Traceback" not in result.output
    assert result.exit_code == 2 and "lock file is a FIFO" in result.output
    (stores / ".mixmag-catalog.lock").unlink()
    result = _invoke("store", "index", stores)
    assert result.exit_code == 0, result.output  # the FIFO catalog is replaced by a real one
    assert (stores / "mixmag-catalog.sqlite").is_file()


def test_a_store_whose_recorded_slide_is_a_fifo_fails_its_heatmaps_not_the_batch(tmp_path, world):
    import h5py

    stores = _box(tmp_path, world)
    fifo = tmp_path / "fifo.tiff"
    os.mkfifo(fifo)
    with h5py.File(stores / "S13.h5", "r+") as f:
        f.attrs["slide_path"] = str(fifo)
    out = tmp_path / "a" / "p.csv"
    result = _invoke("predict", "--run", world["run"], "--stores", stores, "--out", out)
    _said(result)
    assert out.is_file() and "S12" in out.read_text()


def test_read_bytes_limited_refuses_what_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for path, said in ((tmp_path / "fifo", "FIFO"), (tmp_path, "folder"), (Path("/dev/zero"), "character device")):
        with pytest.raises(UnsafePathError, match=said):
            read_bytes_limited(path, "json")


# -- 13, 17, 18. Two processes, unwritable outputs, what killed processes leave ----------------------------------------


def test_two_predicts_sharing_a_work_folder_are_refused_not_mixed(tmp_path, world):
    stores = _box(tmp_path, world)
    work = tmp_path / "work"
    with FolderLock(work, "mixmag predict"):
        result = _invoke(
            "predict", "--run", world["run"], "--stores", stores, "--work", work, "--out", tmp_path / "p.csv"
        )
    assert result.exit_code == 2
    _said(result, "in use by", "mixmag predict")
    assert not (tmp_path / "p.csv").exists()


@pytest.fixture
def read_only(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to make a read-only folder ({done.stderr.decode().strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_store_index_on_a_read_only_folder_says_it_wrote_nothing(read_only, small_cohort):
    for path in sorted((small_cohort / "stores").glob("*.h5"))[:2]:
        shutil.copy(path, read_only / path.name)
    subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
    result = _invoke("store", "index", read_only)
    assert result.exit_code == 2
    _said(result, "NOT written", "read-only")
    assert not (read_only / "mixmag-catalog.sqlite").exists()


def test_outputs_that_cannot_be_written_are_one_sentence(tmp_path, world, read_only):
    subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
    source = world["dir"] / "s.tiff"
    cases = {
        "read-only": (read_only / "tiles", "read-only"),
        "a file": (_precious(tmp_path, "tiles-file"), "a file is in the way"),
        "too long": (tmp_path / ("x" * 300), "too long"),
    }
    for name, (out, said) in cases.items():
        result = _invoke("tile", source, "--out", out, "--tile-px", 32)
        assert result.exit_code in (1, 2), name
        _said(result, said)
    result = _invoke("embed", "--plans", world["dir"] / "tiles", "--out", tmp_path / "x", "--workers", -1)
    assert result.exit_code == 2 and "Traceback" not in result.output
    _same(tmp_path / "tiles-file")


def test_a_csv_output_that_is_a_folder_is_one_sentence(tmp_path, world):
    stores = _box(tmp_path, world)
    out = tmp_path / "p.csv"
    out.mkdir()
    result = _invoke("predict", "--run", world["run"], "--stores", stores, "--out", out, "--no-heatmaps")
    assert result.exit_code == 2
    _said(result, "cannot write", "p.csv")


def test_partials_left_by_a_killed_writer_are_removed_by_the_next_run_only(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = temporary_name(run / "checkpoints" / "last.pt")
    stale.write_bytes(b"half a checkpoint")
    link = run / f".x.{os.getpid()}.0123abcd.partial"
    victim = _precious(tmp_path / "mine")
    link.symlink_to(victim)
    other = tmp_path / "run" / "nested"
    (other).mkdir()
    (other / ".lock").touch()  # another run's folder inside: its partials are its own
    theirs = temporary_name(other / "log.csv")
    theirs.write_text("x")
    with FolderLock(run, "test"):
        pass
    assert not stale.exists() and theirs.exists() and link.is_symlink()
    _same(victim)


def test_remove_own_file_never_removes_a_link_or_a_folder(tmp_path):
    victim = _precious(tmp_path / "mine")
    (tmp_path / "link").symlink_to(victim)
    (tmp_path / "dir").mkdir()
    assert not remove_own_file(tmp_path / "link") and not remove_own_file(tmp_path / "dir")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "dir").is_dir()
    _same(victim)


def test_read_limits_cover_every_kind_that_is_read_whole():
    assert {"config", "table", "plan", "json", "catalog part", "log", "lock"} <= set(READ_LIMITS)
    assert errno.ELOOP  # O_NOFOLLOW's refusal is what marks a link among mixmag's own files
