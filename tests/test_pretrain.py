import csv
import math
import os
import subprocess
import sys

import pytest
import torch

from mixmag.errors import ConfigError
from mixmag.store import write_store
from mixmag.synth.stores import synthetic_store
from mixmag.train.pretrain import PretrainConfig, load_config, run_pretraining

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("pstores")
    for i in range(6):
        write_store(d / f"s{i}.h5", synthetic_store(f"s{i}", seed=i, n_rows=10, n_cols=10, context=5))
    return d


def tiny(stores, out, **kw) -> PretrainConfig:
    base = dict(
        stores=str(stores),
        out=str(out),
        preset="tiny",
        batch_size=32,
        steps=200,
        warmup_steps=10,
        base_lr=8e-3,
        precision="fp32",
        workers=0,
        per_slide=32,
        pool=4,
        log_every=10,
        checkpoint_every=50,
        tensorboard=False,
    )
    return PretrainConfig(**(base | kw))


def rows(out):
    with open(out / "log.csv") as fh:
        return list(csv.DictReader(fh))


def test_mem_learns_beyond_its_start_and_the_mean_baseline(stores, tmp_path):
    run_pretraining(tiny(stores, tmp_path), device=CPU)
    log = rows(tmp_path)
    first, last = float(log[0]["mem"]), sum(float(r["mem"]) for r in log[-3:]) / 3
    baseline = sum(float(r["baseline_loss"]) for r in log[-3:]) / 3
    assert last < first - 0.15
    assert last < baseline - 0.03
    assert (tmp_path / "mixer.safetensors").is_file() and (tmp_path / "checkpoints" / "last.pt").is_file()
    assert {"cos_level0", "cos_level2", "baseline_cos_level1", "lr", "samples_per_s", "mfu"} <= set(log[0])


def test_resume_continues_step_for_step(stores, tmp_path, monkeypatch):
    import mixmag.train.pretrain as engine

    straight = tmp_path / "straight"
    run_pretraining(tiny(stores, straight, steps=24, checkpoint_every=8, log_every=1), device=CPU)
    # the same run, killed after its step-16 checkpoint
    killed = tmp_path / "killed"
    real_save = engine.save_checkpoint

    def save_then_die(path, model, optimizer, scaler, step, *args):
        real_save(path, model, optimizer, scaler, step, *args)
        if step == 16:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(tiny(stores, killed, steps=24, checkpoint_every=8, log_every=1), device=CPU)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    run_pretraining(tiny(stores, killed, steps=24, checkpoint_every=8, log_every=1), device=CPU)
    a, b = rows(straight), rows(killed)
    assert [r["step"] for r in b] == [str(s) for s in range(1, 25)]
    for ra, rb in zip(a, b):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), abs=1e-5), ra["step"]
    wa = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_cmem_runs_on_context_crops_and_lowers_its_contrastive_term(stores, tmp_path):
    """The loss formula itself is pinned by known answers (test_optim.py); here the engine feeds CMEM two crops of one
    context, and the two crops of a region become easier to tell apart from the other regions' crops."""
    run_pretraining(tiny(stores, tmp_path, steps=30, context=5, log_every=1, warmup_steps=3), device=CPU)
    log = rows(tmp_path)
    contrastive = [float(r["contrastive"]) for r in log]
    first, last = sum(contrastive[:5]) / 5, sum(contrastive[-5:]) / 5
    assert first < math.log(32 - 1)  # both crops come from one context: already closer than chance
    assert last < first - 0.25


def test_bad_configs_are_clear_errors(stores, tmp_path):
    with pytest.raises(ValueError, match=r"mask_ratio r must be in \(0, 1\)"):
        tiny(stores, tmp_path, mask_ratio=1.2)
    with pytest.raises(ValueError, match="larger than the context"):
        tiny(stores, tmp_path, t=5, context=3)
    with pytest.raises(ConfigError, match="unknown mixer preset"):
        run_pretraining(tiny(stores, tmp_path, preset="gigantic"), device=CPU)
    with pytest.raises(ConfigError, match="does not match the stores' embedding dimension 32"):
        run_pretraining(tiny(stores, tmp_path, mixer={"in_dim": 1280}), device=CPU)
    with pytest.raises(ConfigError, match="no stores"):
        run_pretraining(tiny(tmp_path / "empty", tmp_path), device=CPU)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stores: x\nout: y\nmask_ratoi: 0.5\n")
    with pytest.raises(ConfigError, match="mask_ratoi"):
        load_config(bad)


def test_two_ranks_under_torchrun_keep_identical_weights(stores, tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(
        f"stores: {stores}\nout: {tmp_path / 'run'}\npreset: tiny\nbatch_size: 16\nsteps: 8\nwarmup_steps: 2\nbase_lr: "
        "8.0e-3\n"
        "precision: fp32\nworkers: 0\nper_slide: 16\npool: 2\nlog_every: 1\ncheckpoint_every: 4\ntensorboard: "
        "false\ncheck_replicas: true\n"
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mixmag.cli",
        "pretrain",
        "--config",
        str(config),
        "--device",
        "cpu",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 ranks" in result.stdout
    log = rows(tmp_path / "run")
    assert [int(r["step"]) for r in log] == list(range(1, 9))
    assert all(float(r["replica_max_diff"]) == 0.0 for r in log)


def test_a_mixer_reads_only_the_embedding_space_it_was_pretrained_in(stores, tmp_path):
    import json

    from mixmag.stages.encode import encode_stores
    from mixmag.store import StoreError
    from mixmag.train.finetune import MixerSetting, build_mixer

    run_pretraining(tiny(stores, tmp_path / "run", steps=2, log_every=1), device=CPU)
    weights = tmp_path / "run" / "mixer.safetensors"
    assert (
        json.loads((tmp_path / "run" / "mixer.json").read_text())["stores"]["encoder_weights_digest"]
        == "projection-1234"
    )
    same = encode_stores(sorted(stores.glob("*.h5"))[:1], weights, tmp_path / "encoded")
    assert len(same) == 1
    other = tmp_path / "other"
    other.mkdir()
    write_store(other / "x.h5", synthetic_store("x", seed=1, n_rows=10, n_cols=10, context=5, projection_seed=7))
    with pytest.raises(
        ConfigError,
        match=r"mixer.safetensors: pretrained on stores made differently .*encoder_weights_digest: "
        r"mixer 'projection-1234' vs stores 'projection-7'",
    ):
        encode_stores([other / "x.h5"], weights, tmp_path / "encoded2")
    with pytest.raises(ConfigError, match="projection-7"):  # fine-tuning from it: the same refusal
        build_mixer(
            MixerSetting(init="pretrained", weights=str(weights)), 32, 3, 3, {"encoder_weights_digest": "projection-7"}
        )
    write_store(other / "y.h5", synthetic_store("y", seed=2, n_rows=10, n_cols=10, context=5))  # the first space
    with pytest.raises(
        StoreError, match="encoder_weights_digest.*y.h5"
    ):  # a folder mixing two spaces: refused before training
        run_pretraining(tiny(other, tmp_path / "run2", steps=2), device=CPU)


def test_a_process_group_ends_with_its_threads(tmp_path):
    """destroy_process_group() must stop gloo's threads: one that is still releasing a tensor when the
    interpreter finalises aborts the process (seen as a rare SIGABRT of a finished rank)."""
    script = tmp_path / "rank.py"
    script.write_text(
        "import os, torch\n"
        "from mixmag.devices import start_distributed\n"
        "start_distributed('cpu')\n"
        "import timm  # noqa: F401 - imports torch._dynamo after the group exists, as the stages do\n"
        "out = [None, None]\n"
        "torch.distributed.all_gather_object(out, os.environ['RANK'])\n"
        "torch.distributed.destroy_process_group()\n"
        "names = {open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')}\n"
        "left = sorted(n for n in names if 'gloo' in n)\n"
        "os.write(1, f'gathered {out} gloo threads left {left}\\n'.encode())  # one write: ranks share the pipe\n"
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("gathered ['0', '1'] gloo threads left []") == 2, result.stdout


def test_resume_refuses_stores_re_embedded_with_another_encoder(tmp_path):
    folder = tmp_path / "stores"
    folder.mkdir()
    for i in range(3):
        write_store(folder / f"s{i}.h5", synthetic_store(f"s{i}", seed=i, n_rows=10, n_cols=10, context=5))
    run_pretraining(tiny(folder, tmp_path / "run", steps=2, checkpoint_every=1, log_every=1), device=CPU)
    for i in range(3):  # the same files, now from another "foundation model" of the same width
        write_store(
            folder / f"s{i}.h5", synthetic_store(f"s{i}", seed=i, n_rows=10, n_cols=10, context=5, projection_seed=7)
        )
    with pytest.raises(ConfigError, match="re-embedded differently .*projection-1234.*projection-7"):
        run_pretraining(tiny(folder, tmp_path / "run", steps=4, checkpoint_every=1, log_every=1), device=CPU)


def test_cmem_settings_reach_the_model(stores, tmp_path):
    from mixmag.train.pretrain import build_model

    cfg = tiny(stores, tmp_path, context=5, mem_reduction="sum", contrastive="symmetric")
    model, _ = build_model(cfg, 16, 3)
    assert (model.mem_reduction, model.contrastive_form) == ("sum", "symmetric")
    with pytest.raises(ValueError):
        tiny(stores, tmp_path, context=5, contrastive="one-way")
