"""Many workers, one cohort, no scheduler: `--shard i/N` (and Slurm arrays), claim files on the shared output
folder, per-slide state records and `mixmag status`. The workers are real `mixmag` processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tissue_slide
from typer.testing import CliRunner

from mixmag.claims import ClaimError, Holder, SlideClaims, inspect_claim, stage_folder
from mixmag.cli import app
from mixmag.encoders.model import build_encoder
from mixmag.errors import OptionError
from mixmag.slide_state import folder_status, write_state
from mixmag.slides.params import TilingParams
from mixmag.slides.sources import SlideSource
from mixmag.slides.tiling import load_plan
from mixmag.stages.bill import cohort_bill
from mixmag.stages.embed import find_plans, run_embed
from mixmag.stages.tile import tile_slides
from mixmag.store import read_store
from mixmag.workers import Shard, Worker, balanced_parts, parse_shard, resolve_shard

CPU = "cpu"
SLIDES = ("s0", "s1", "s2", "s3", "s4")
runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Five small slides tiled once (region side 1), and their stores made by one plain process (the reference)."""
    root = tmp_path_factory.mktemp("shards")
    sources = []
    (root / "slides").mkdir()
    for i, sid in enumerate(SLIDES):
        size = (4000, 3200) if i % 2 == 0 else (2400, 2400)
        sources.append(SlideSource(make_tissue_slide(root / "slides", f"{sid}.tiff", size=size, seed=10 + i), sid))
    results = tile_slides(sources, root / "tiles", TilingParams(region_size=1))
    assert all(r.outcome == "tiled" for r in results)
    run_embed(find_plans(root / "tiles"), root / "reference", build_encoder("stats"), device=_cpu(), workers=0)
    return root


def _cpu():
    import torch

    return torch.device("cpu")


def _embed_cmd(cohort: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mixmag.cli",
        "embed",
        "--plans",
        str(cohort / "tiles"),
        "--out",
        str(out),
        "--encoder",
        "stats",
        "--workers",
        "0",
        "--device",
        CPU,
        *extra,
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return env | {"OMP_NUM_THREADS": "1", "COLUMNS": "200"} | extra


def _run_together(commands: list[list[str]], env: dict[str, str] | None = None) -> list[str]:
    procs = [
        subprocess.Popen(c, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    outputs = []
    for p in procs:
        output = p.communicate(timeout=600)[0]
        assert p.returncode == 0, output
        outputs.append(output)
    return outputs


def _embedded(output: str) -> list[str]:
    return re.findall(r"^(\w+): embedded", output, re.M)


def _same_stores(out: Path, reference: Path) -> None:
    for sid in SLIDES:
        a, b = read_store(out / f"{sid}.h5"), read_store(reference / f"{sid}.h5")
        assert list(a.embeddings) == list(b.embeddings)
        for name in a.embeddings:
            np.testing.assert_array_equal(a.embeddings[name], b.embeddings[name])


def _status(out: Path, *extra) -> dict:
    result = _invoke("status", out, "--json", *extra)
    assert result.exit_code == 0, result.output
    return {s["stage"]: s for s in json.loads(result.output)["stages"]}


def _claims(out: Path, stage: str = "embed") -> list[Path]:
    return sorted((out / ".mixmag" / stage).glob("*.claim"))


# ---------------------------------------------------------------------------------------------------------------------
# Two real processes on one cohort


def test_two_shards_embed_a_cohort_with_each_slide_once(cohort, tmp_path):
    out = tmp_path / "stores"
    outputs = _run_together([_embed_cmd(cohort, out, "--shard", f"{i}/2") for i in range(2)])
    done = [_embedded(o) for o in outputs]
    assert sorted(done[0] + done[1]) == list(SLIDES) and done[0] and done[1]  # each slide once, both worked
    assert "this is shard 0/2 (--shard)" in outputs[0]
    _same_stores(out, cohort / "reference")
    status = _status(out)["embed"]
    assert status["counts"] == {
        "slides": 5,
        "done": 5,
        "failed": 0,
        "claimed": 0,
        "stale claims": 0,
        "pending": 0,
    }
    workers = {s: r["worker"] for s, r in status["done"].items()}
    assert {workers[s] for s in done[0]} == {"shard 0/2"} and {workers[s] for s in done[1]} == {"shard 1/2"}
    assert all(r["outcome"] == "embedded" and r["seconds"] > 0 for r in status["done"].values())
    assert not _claims(out)


def test_two_workers_on_the_same_shard_compete_and_each_slide_is_embedded_once(cohort, tmp_path):
    out = tmp_path / "stores"
    outputs = _run_together([_embed_cmd(cohort, out, "--batch-cells", "1") for _ in range(2)])
    done = _embedded(outputs[0]) + _embedded(outputs[1])
    assert sorted(done) == list(SLIDES), outputs
    for output in outputs:  # what one did, the other skipped: current already, or in use by the other
        for sid in SLIDES:
            assert len(re.findall(rf"^{sid}: (embedded|skipped)", output, re.M)) == 1, output
    _same_stores(out, cohort / "reference")
    assert _status(out)["embed"]["counts"]["done"] == 5 and not _claims(out)


def test_a_killed_worker_leaves_claims_that_a_rerun_takes_over(cohort, tmp_path):
    out = tmp_path / "stores"
    worker = subprocess.Popen(
        _embed_cmd(cohort, out, "--batch-cells", "1"), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 300
        while not _claims(out) and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(worker.pid, signal.SIGSTOP)  # frozen mid-slide, then killed: no cleanup can run
        held = _claims(out)
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait(60)
    assert held, "the worker finished before it could be stopped: the cohort is too small for this machine"
    left = _claims(out)
    assert left == held
    stale = _status(out)["embed"]["stale_claims"]
    assert set(stale) == {p.name.removesuffix(".claim") for p in left}
    assert all(f"pid {worker.pid} on this host is gone" == c["stale"] for c in stale.values())

    rerun = subprocess.run(_embed_cmd(cohort, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    for claim in left:
        sid = claim.name.removesuffix(".claim")
        assert re.search(rf"{sid}: taking over the claim of pid {worker.pid} on \S+ \(embedding {sid}\)", rerun.stdout)
        assert f"{sid}: embedded" in rerun.stdout
    _same_stores(out, cohort / "reference")
    assert _status(out)["embed"]["counts"]["done"] == 5 and not _claims(out)


def test_tile_shards_split_a_cohort_and_keep_their_own_summaries(cohort, tmp_path):
    out = tmp_path / "tiles"
    slides = [str(cohort / "slides" / f"{s}.tiff") for s in SLIDES]
    base = [sys.executable, "-m", "mixmag.cli", "tile", *slides, "--out", str(out), "--region-size", "1"]
    outputs = _run_together([base + ["--shard", f"{i}/2"] for i in range(2)])
    tiled = [re.findall(r"^(\w+): tiled", o, re.M) for o in outputs]
    assert sorted(tiled[0] + tiled[1]) == list(SLIDES) and len(tiled[0]) == 3 and len(tiled[1]) == 2
    assert "Tiling 3 of 5 slide(s) (shard 0/2, --shard)" in outputs[0]
    for i in range(2):
        summary = json.loads((out / f"tiling_summary.shard-{i}-of-2.json").read_text())
        assert sorted(r["slide"] for r in summary["slides"]) == sorted(tiled[i])
    assert not (out / "tiling_summary.json").exists()
    status = _status(out)["tile"]
    assert status["counts"]["done"] == 5 and status["counts"]["pending"] == 0


def test_a_slurm_array_task_takes_its_share_and_says_so(cohort, tmp_path):
    out = tmp_path / "tiles"
    slides = [str(cohort / "slides" / f"{s}.tiff") for s in SLIDES]
    env = _env(SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_COUNT="3")
    cmd = [sys.executable, "-m", "mixmag.cli", "tile", *slides, "--out", str(out), "--region-size", "1"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Tiling 1 of 5 slide(s) (shard 2/3, Slurm array task 3)" in result.stdout
    assert re.findall(r"^(\w+): tiled", result.stdout, re.M) == ["s2"]  # every third slide from the third
    status = _status(out)["tile"]
    assert status["counts"]["done"] == 1 and status["pending"] == ["s0", "s1", "s3", "s4"]


# ---------------------------------------------------------------------------------------------------------------------
# Claims of other machines, and claim files that are not mixmag's


def _plant_claim(out: Path, sid: str, content: bytes, age: float = 0.0) -> Path:
    path = stage_folder(out, "embed") / f"{sid}.claim"
    path.write_bytes(content)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def _elsewhere(sid: str) -> bytes:
    holder = Holder(host="node-elsewhere", boot="x", pid=4242, started=time.time() - 60, purpose=f"embedding {sid}")
    return holder.model_dump_json().encode()


def _embed_cli(cohort: Path, out: Path, *extra):
    return _invoke(
        "embed",
        "--plans",
        cohort / "tiles",
        "--out",
        out,
        "--encoder",
        "stats",
        "--workers",
        0,
        "--device",
        CPU,
        *extra,
    )


def test_another_machines_claim_is_left_alone_while_it_beats_and_taken_over_when_it_stops(cohort, tmp_path):
    out = tmp_path / "stores"
    claim = _plant_claim(out, "s1", _elsewhere("s1"))
    result = _embed_cli(cohort, out, "--claim-timeout", 30)
    assert result.exit_code == 0, result.output
    assert re.search(r"s1: skipped .*in use by pid 4242 on node-elsewhere \(embedding s1\) since", result.output)
    assert not (out / "s1.h5").exists() and Holder.model_validate_json(claim.read_bytes()).host == "node-elsewhere"
    status = _status(out, "--claim-timeout", 30)["embed"]
    assert list(status["claimed"]) == ["s1"] and status["claimed"]["s1"]["holder"]["host"] == "node-elsewhere"

    then = time.time() - 120
    os.utime(claim, (then, then))  # its machine died two minutes ago
    again = _embed_cli(cohort, out, "--claim-timeout", 30)
    assert again.exit_code == 0, again.output
    assert re.search(
        r"s1: taking over the claim of pid 4242 on node-elsewhere .*: no heartbeat for 1\d\d s", again.output
    )
    assert "s1: embedded" in again.output and not _claims(out)
    _same_stores(out, cohort / "reference")


def _precious(path: Path) -> Path:
    path.write_bytes(b"precious data\n")
    return path


@pytest.mark.parametrize("kind", ["link", "fifo", "huge", "folder"])
def test_a_claim_file_that_is_not_mixmags_fails_its_slide_alone_and_is_left_as_it_is(cohort, tmp_path, kind):
    out = tmp_path / "stores"
    path = stage_folder(out, "embed") / "s2.claim"
    victim = _precious(tmp_path / "victim")
    if kind == "link":
        path.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        path.write_bytes(b"x" * (1 << 20))
    else:
        path.mkdir()
    result = _embed_cli(cohort, out)
    assert result.exit_code == 1
    said = {"link": "a symbolic link", "fifo": "a FIFO", "huge": "far more than a claim", "folder": "a folder"}[kind]
    assert re.search(
        rf"s2: failed .*s2\.claim: the claim file of slide s2 (is|holds) .*{said}.*move it away", result.output
    )
    assert "Traceback" not in result.output
    assert sorted(_embedded(result.output)) == ["s0", "s1", "s3", "s4"]  # the others go on
    assert victim.read_bytes() == b"precious data\n" and not (out / "s2.h5").exists()
    assert os.path.lexists(path)  # left for the user to see
    status = _status(out)["embed"]
    assert "s2" in status["unreadable"] and status["counts"]["done"] == 4


@pytest.mark.parametrize("age", [0.0, 3600.0])
def test_a_claim_with_garbage_inside_is_live_while_fresh_and_taken_over_when_old(cohort, tmp_path, age):
    out = tmp_path / "stores"
    _plant_claim(out, "s3", b"\x00\xff garbage {not json", age=age)
    result = _embed_cli(cohort, out)
    assert result.exit_code == 0, result.output
    if age:
        assert re.search(r"s3: taking over the claim of an unknown worker: no heartbeat for 3\d\d\d s", result.output)
        assert "s3: embedded" in result.output and not _claims(out)
    else:  # a claim being written looks like this for an instant: it is somebody's until its heartbeat stops
        assert re.search(r"s3: skipped .*in use by an unknown worker \(unreadable claim\)", result.output)
        assert not (out / "s3.h5").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The pieces


def test_of_many_takers_of_one_stale_claim_exactly_one_wins(tmp_path):
    path = stage_folder(tmp_path, "tile") / "s.claim"
    for _round in range(20):
        path.write_bytes(_elsewhere("s"))
        os.utime(path, (1.0, 1.0))
        barrier, wins, errors = threading.Barrier(6), [], []
        sets = [SlideClaims(tmp_path, "tile", timeout=60) for _ in range(6)]

        def take(claims: SlideClaims, barrier=barrier, wins=wins, errors=errors) -> None:
            barrier.wait()
            try:
                if claims.claim("s") is None:
                    wins.append(claims)
            except ClaimError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=take, args=(c,)) for c in sets]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(wins) == 1 and not errors
        assert Holder.model_validate_json(path.read_bytes()).pid == os.getpid()
        wins[0].release_all()
        assert not path.exists()
        assert not [p for p in path.parent.iterdir() if p.name != "s.claim"]  # nothing left aside


@pytest.mark.parametrize("marker_age", [0.0, 3600.0])
def test_a_takeover_in_progress_is_left_alone_and_one_whose_taker_died_is_cleared(tmp_path, marker_age):
    folder = stage_folder(tmp_path, "tile")
    path, marker = folder / "s.claim", folder / ".s.claim.takeover"
    path.write_bytes(_elsewhere("s"))
    os.utime(path, (1.0, 1.0))
    marker.write_bytes(_elsewhere("s"))  # another machine's taker, mid-takeover (or dead, when old)
    os.utime(marker, (time.time() - marker_age,) * 2)
    claims = SlideClaims(tmp_path, "tile", timeout=60)
    found = claims.claim("s")
    if marker_age:
        assert found is None and Holder.model_validate_json(path.read_bytes()).pid == os.getpid()
        assert not marker.exists()
    else:
        assert found is not None and not found.stale and found.holder.host == "node-elsewhere"
        assert Holder.model_validate_json(path.read_bytes()).host == "node-elsewhere"  # untouched
        assert marker.exists()
    claims.release_all()


def test_a_worker_that_stalled_past_the_timeout_learns_that_its_claim_was_taken_over(tmp_path):
    slow = SlideClaims(tmp_path, "tile", timeout=0.5)
    assert slow.claim("s") is None and slow.still_ours("s")
    path = slow.path("s")
    fresh = SlideClaims(tmp_path, "tile", timeout=0.5)
    slow._stop.set()  # its heartbeat stalls (a frozen machine)
    slow._beat.join(5)
    os.utime(path, (1.0, 1.0))
    info = inspect_claim(path, "s", timeout=0.5, now=time.time())
    assert info is not None and info.stale.startswith("no heartbeat")
    assert fresh.claim("s") is None and fresh.still_ours("s")
    assert not slow.still_ours("s")
    slow.release("s")  # never removes the claim that is no longer its own
    assert fresh.still_ours("s") and path.exists()
    fresh.release_all()


def test_a_state_record_that_is_not_a_record_is_reported_not_trusted(tmp_path):
    assert write_state(tmp_path, "embed", "a", "done", outcome="embedded", seconds=1.5)
    assert write_state(tmp_path, "embed", "b", "failed", reason="unreadable slide")
    folder = stage_folder(tmp_path, "embed")
    (folder / "c.state.json").symlink_to(_precious(tmp_path / "victim"))
    (folder / "d.state.json").write_text('{"slide": "d", "state": "maybe"}')
    [status] = folder_status(tmp_path)
    assert list(status.done) == ["a"] and status.failed["b"].reason == "unreadable slide"
    assert set(status.unreadable) == {"c", "d"} and "symbolic link" in status.unreadable["c"]
    text = _invoke("status", tmp_path)
    assert text.exit_code == 0 and "embed: 2 slides, 1 done, 1 failed" in text.output
    assert "unreadable slide" in text.output


def test_status_of_a_folder_without_records_says_what_to_give(tmp_path):
    result = _invoke("status", tmp_path)
    assert result.exit_code == 2 and "no state records" in result.output


@pytest.mark.parametrize("kind", ["fifo", "file", "link", "work-fifo"])
def test_status_names_a_work_folder_that_is_not_a_folder(tmp_path, kind):
    """Before: a `.mixmag/tile` that is a FIFO (a file, a link to a folder) was 'no state records', as if the
    folder had never been tiled into; a link was followed."""
    work = tmp_path / ".mixmag"
    work.mkdir()
    path = work / "tile"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "file":
        path.write_text("x")
    elif kind == "link":
        (tmp_path / "elsewhere").mkdir()
        path.symlink_to(tmp_path / "elsewhere")
    else:
        work.rmdir()
        os.mkfifo(work)
        path = work
    result = _invoke("status", tmp_path)
    said = " ".join(result.output.split())
    fifo = "a FIFO (named pipe)"
    what = {"fifo": fifo, "file": "a regular file", "link": "a symbolic link", "work-fifo": fifo}[kind]
    assert result.exit_code == 2 and "no state records" not in said, result.output
    assert f"{path}: mixmag's work folder is {what}, not a folder" in said, said


def test_shards_parse_and_slurm_arrays_map_to_shards():
    assert parse_shard("3/4") == Shard(3, 4, "--shard")
    for bad in ("4/4", "1/0", "a/b", "-1/3", "2"):
        with pytest.raises(OptionError, match="--shard"):
            parse_shard(bad)
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_shard(None, env | {"SLURM_ARRAY_TASK_STEP": "2"}) == Shard(3, 4, "Slurm array task 7")
    assert resolve_shard("0/2", env) == Shard(0, 2, "--shard")  # the option wins
    assert resolve_shard(None, {}) == Shard()
    with pytest.raises(OptionError, match="SLURM_ARRAY_TASK_COUNT"):
        resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "1"})
    with pytest.raises(OptionError, match="not one of 4 tasks"):
        resolve_shard(None, env | {"SLURM_ARRAY_TASK_ID": "9"})


def test_ranks_split_each_shard_and_every_worker_gets_a_disjoint_balanced_share():
    from mixmag.devices import DistInfo

    sizes = [int(x) for x in np.random.default_rng(0).integers(1, 1000, 200)]
    workers = [Worker(Shard(i, 3, "--shard"), DistInfo(r, 2)) for i in range(3) for r in range(2)]
    assert [w.slot for w in workers] == list(range(6)) and {w.slots for w in workers} == {6}
    parts = balanced_parts(sizes, 6)
    assert sorted(i for p in parts for i in p) == list(range(200))
    loads = [sum(sizes[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(sizes)
    assert workers[3].describe() == "shard 1/3, rank 1/2"
    assert socket.gethostname()  # the claims name the host; it must have one


# ---------------------------------------------------------------------------------------------------------------------
# The bill: `mixmag plan`


def test_the_bill_counts_the_plans_and_its_store_bytes_are_the_stores_written(cohort, tmp_path):
    plans = [load_plan(p) for p in find_plans(cohort / "tiles")]
    bill = cohort_bill(find_plans(cohort / "tiles"), encoder="stats", tiles_per_second=100.0, samples_per_second=10.0)
    cells = sum(len(p.cells) for p in plans)
    assert bill.slides == 5 and bill.cells == cells > 0 and bill.regions == sum(len(p.regions) for p in plans)
    assert bill.tiles == {"5x": cells, "10x": 4 * cells, "20x": 16 * cells} and bill.dim == 34
    written = sum((cohort / "reference" / f"{s}.h5").stat().st_size for s in SLIDES)
    assert abs(bill.store_bytes - written) <= 0.02 * written, (bill.store_bytes, written)
    assert bill.embedding_bytes == cells * 21 * 34 * 2
    assert bill.embed_seconds == pytest.approx(21 * cells / 100.0)
    assert bill.pretrain_seconds == pytest.approx(48_828 * 4096 / 10.0)
    big = cohort_bill(find_plans(cohort / "tiles"), encoder="virchow2", output="cls+mean")
    assert big.dim == 2560 and big.embedding_bytes == cells * 21 * 2560 * 2
    assert big.store_bytes - bill.store_bytes == pytest.approx(cells * 21 * (2560 - 34) * 2, rel=0.01)


def test_plan_reads_what_bench_measured_and_says_so(cohort, tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    runs = [{"tiles_per_s": 900.0, "compiled": False}, {"tiles_per_s": 1200.0, "compiled": True}]
    (bench / "bench_embed.json").write_text(json.dumps({"gpu": {"name": "NVIDIA H200", "runs": runs}}))
    training = [{"preset": "paper", "batch": 1024, "samples_per_s": 2000.0}]
    (bench / "bench_pretrain.json").write_text(json.dumps({"training": training}))
    result = _invoke("plan", cohort / "tiles", "--encoder", "stats", "--bench", bench, "--gpus", 8, "--json")
    assert result.exit_code == 0, result.output
    bill = json.loads(result.output)
    assert bill["embed_rate"]["value"] == 1200.0 and "best NVIDIA H200 run" in bill["embed_rate"]["source"]
    assert bill["pretrain_rate"]["value"] == 2000.0 and bill["gpus"] == 8
    assert bill["embed_seconds"] == pytest.approx(bill["total_tiles"] / 1200.0)
    table = _invoke("plan", cohort / "tiles", "--encoder", "stats", "--bench", tmp_path / "none")
    assert table.exit_code == 0, table.output
    assert "5 slide(s)" in table.output and "give --tiles-per-second" in table.output
    (bench / "bench_embed.json").write_text("{not json")
    damaged = _invoke("plan", cohort / "tiles", "--encoder", "stats", "--bench", bench)
    assert damaged.exit_code == 2 and "bench_embed.json" in damaged.output and "Traceback" not in damaged.output


def test_torchrun_ranks_inside_two_shards_split_each_shard_by_cell_count(cohort, tmp_path):
    """Two array tasks of two torchrun ranks each: four workers, each slide embedded once, by the worker the
    balanced split over shards x ranks names."""
    out = tmp_path / "stores"
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    commands = [run + _embed_cmd(cohort, out, "--shard", f"{i}/2")[1:] for i in range(2)]
    outputs = _run_together(commands)
    assert "x 2 ranks" in outputs[0] and "this is shard 0/2 (--shard), its ranks share it by cell count" in outputs[0]
    assert sorted(_embedded(outputs[0]) + _embedded(outputs[1])) == list(SLIDES)
    _same_stores(out, cohort / "reference")
    plans = {p.parent.name: len(load_plan(p).cells) for p in find_plans(cohort / "tiles")}
    ids = sorted(plans)
    parts = balanced_parts([plans[s] for s in ids], 4)
    done = _status(out)["embed"]["done"]
    for slot, part in enumerate(parts):
        for i in part:
            assert done[ids[i]]["worker"] == f"shard {slot // 2}/2, rank {slot % 2}/2"


def test_the_bill_of_a_slide_of_more_than_one_chunk_counts_hdf5s_whole_chunks(tmp_path):
    """65 cells: HDF5 keeps the second chunk of 64 cells whole on disk, and the bill says so."""
    slide = make_tissue_slide(tmp_path, "b.tiff", size=(14000, 10000), seed=6)
    tile_slides([SlideSource(slide, "b")], tmp_path / "tiles", TilingParams(region_size=1))
    plans = find_plans(tmp_path / "tiles")
    run_embed(plans, tmp_path / "stores", build_encoder("stats"), device=_cpu(), workers=0)
    bill = cohort_bill(plans, encoder="stats")
    assert bill.cells > 64
    written = (tmp_path / "stores" / "b.h5").stat().st_size
    assert abs(bill.store_bytes - written) <= 0.02 * written, (bill.store_bytes, written)
    assert bill.store_bytes > bill.embedding_bytes * 1.5  # 65 cells take 128 cells' room


def test_temporaries_left_by_a_killed_worker_are_swept_once_old_and_never_through_a_link(tmp_path):
    folder = stage_folder(tmp_path, "tile")
    old = [folder / ".s.claim.4242.deadbeef.partial", folder / ".s.claim.4242.cafe0000.stale"]
    fresh = folder / ".t.claim.4243.beef0000.partial"  # a worker writing its claim this instant
    for path in [*old, fresh]:
        path.write_bytes(_elsewhere("s"))
    for path in old:
        os.utime(path, (1.0, 1.0))
    victim = tmp_path / "precious.partial"
    victim.write_bytes(b"keep")
    link = folder / ".u.claim.1.00000000.partial"
    link.symlink_to(victim)
    os.utime(link, (1.0, 1.0), follow_symlinks=False)
    SlideClaims(tmp_path, "tile", timeout=60)
    assert not any(p.exists() for p in old) and fresh.exists()
    assert os.path.lexists(link) and victim.read_bytes() == b"keep"
