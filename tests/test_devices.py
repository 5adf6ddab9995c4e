"""Device names are checked when a command starts: a typo or a GPU the machine lacks is one clear error."""

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
