"""Device names and benchmark settings are checked when a command starts: a typo, a GPU the machine lacks or an
impossible cohort is one clear error before any work."""

import pytest
import torch
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.devices import choose_device
from mixmag.errors import ConfigError


def test_a_device_name_torch_does_not_know_is_a_config_error():
    with pytest.raises(ConfigError, match="'gpu' is not a device name; use cpu, cuda or cuda:N"):
        choose_device("gpu")
    assert choose_device("cpu") == torch.device("cpu")


def test_a_gpu_the_machine_does_not_have_is_a_config_error():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=f"has {count} usable CUDA GPU"):
        choose_device(f"cuda:{count}")


def test_mixmag_train_names_a_bad_device_before_any_work(tmp_path):
    config = tmp_path / "mil.yaml"
    config.write_text(f"cohort: {tmp_path / 'missing.csv'}\nstores: {tmp_path}\nout: {tmp_path / 'run'}\n")
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--device", "gpu"])
    assert result.exit_code != 0 and "'gpu' is not a device name" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mil-device", "cuda:99"], "usable CUDA GPU"),
        (["--mil-storage", "tape"], "--mil-storage tape"),
        (["--mil-cohort", "3"], "at least 10 slides"),
    ],
)
def test_bench_scale_refuses_bad_cohort_settings_before_writing_anything(tmp_path, args, message):
    base = ["bench", "scale", "--workdir", str(tmp_path / "w"), "--mil-cohort", "20", "--n", "10"]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "w").exists()


def test_keeping_freed_memory_is_set_once_and_changes_no_number():
    import torch

    from mixmag.devices import keep_freed_memory
    from mixmag.encoders.model import build_encoder

    tiles = torch.randint(0, 255, (4, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    encoder = build_encoder("stats")
    with torch.inference_mode():
        before = encoder(tiles)
        assert keep_freed_memory() and keep_freed_memory()  # glibc here; the second call is a no-op
        assert torch.equal(encoder(tiles), before)
