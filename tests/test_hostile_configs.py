"""Hostile configs, checkpoints and options (issue 11 §7): every one ends in one sentence naming the file, never a
traceback, and a file that is not plain weights is never unpickled."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from train_runs import train_config
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.config import load_config
from mixmag.errors import ConfigError
from mixmag.models.mixer import mixer_config
from mixmag.store import write_store
from mixmag.synth.embedding_cohort import write_embedding_cohort
from mixmag.synth.stores import synthetic_store
from mixmag.train.finetune import MixerSetting, TrainConfig, build_mixer, run_training
from mixmag.train.pretrain import PretrainConfig
from mixmag.weights_io import WeightsFileError

BROKEN_YAML = {
    "syntax": ("stores: s\nout: [unclosed\n", "line 2"),
    "tab": ("stores: s\n\tout: o\n", "line 2"),
    "list": ("- stores\n- out\n", "found a list"),
    "empty": ("", "empty"),
    "string": ("just words\n", "found a single string"),
    "duplicate": ("stores: s\nout: o\nstores: t\n", "line 3: `stores` is given twice"),
}
COMMANDS = {  # each command that takes a --config (or a grid file)
    "pretrain": lambda f: ["pretrain", "--config", str(f)],
    "train": lambda f: ["train", "--config", str(f)],
    "experiment": lambda f: ["experiment", str(f)],
    "demo": lambda f: ["demo", "--config", str(f)],
    "tile": lambda f: ["tile", "--config", str(f), "--out", str(f.parent / "tiles"), str(f)],
}


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def _one_sentence(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.output and len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], (needle, result.output)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_invalid_yaml_in_any_config_is_one_sentence_with_the_line(command, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stores: s\nout: [unclosed\n")
    _one_sentence(_invoke(COMMANDS[command](path)), str(path), "line 2", "not valid YAML")


@pytest.mark.parametrize("kind", sorted(BROKEN_YAML))
def test_every_broken_file_names_itself_and_what_is_wrong(kind, tmp_path):
    text, expected = BROKEN_YAML[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(PretrainConfig, path)
    message = str(caught.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message, message
    if kind == "tab":
        assert "tabs" in message


def test_alias_bombs_deep_nesting_and_python_tags_are_refused_quickly(tmp_path):
    path = tmp_path / "bomb.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)
    ]  # 10^9 values
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="expands to more than 100,000 values through YAML aliases"):
        load_config(PretrainConfig, path)
    path.write_text("stores: " + "[" * 2000 + "]" * 2000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(PretrainConfig, path)
    path.write_text("stores: !!python/object/apply:os.system ['echo owned']\nout: o\n")
    with pytest.raises(ConfigError, match=r"line 1, column 9: not valid YAML: could not determine a constructor"):
        load_config(PretrainConfig, path)
    path.write_text("stores: &s here\nout: o\nexclude_test_of: [*s]\n")  # ordinary anchors still work
    assert load_config(PretrainConfig, path).exclude_test_of == ["here"]


def test_a_binary_file_or_a_folder_as_config(tmp_path):
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(b"\x80\x81\xff\x00" * 8)
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(PretrainConfig, binary)
    with pytest.raises(ConfigError, match="not a file"):
        load_config(PretrainConfig, tmp_path)


def test_a_mixer_key_typo_names_the_key_and_its_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("stores: s\nout: o\npreset: tiny\nmixer:\n  depth: 2\n  dpth: 4\n")
    with pytest.raises(ConfigError) as caught:
        load_config(PretrainConfig, path)
    message = str(caught.value)
    assert f"{path} line 6: unknown setting `mixer.dpth` (did you mean `depth`?)" in message
    path.write_text("cohort: c.csv\nstores: s\nout: o\nbags: regions\nmixer: {init: random, overrides: {hedas: 2}}\n")
    with pytest.raises(
        ConfigError, match=r"line 5: unknown setting `mixer.overrides.hedas` \(did you mean `heads`\?\)"
    ):
        load_config(TrainConfig, path)


def test_a_typo_in_set_is_reported_as_the_set_not_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"stores: {tmp_path}\nout: {tmp_path / 'run'}\n")
    result = _invoke(["pretrain", "--config", str(path), "--set", "stepz=5"])
    _one_sentence(result, "--set stepz=5: unknown setting `stepz` (did you mean `steps`?)")
    assert str(path) not in result.output
    result = _invoke(["pretrain", "--config", str(path), "--set", "steps=many"])
    _one_sentence(result, "--set steps=many: `steps` = 'many'")
    result = _invoke(["pretrain", "--config", str(path), "--set", "steps"])
    _one_sentence(result, "--set 'steps': expected key=value")
    cfg = load_config(PretrainConfig, path, ["mixer.depth=2", "steps=7"])  # dotted keys reach into sections
    assert cfg.mixer.depth == 2 and cfg.steps == 7


def test_an_unknown_backend_fails_once_before_any_slide(real_svs, real_pyramid, tmp_path):
    result = _invoke(["tile", str(real_svs), str(real_pyramid), "--backend", "foo", "--out", str(tmp_path / "t")])
    _one_sentence(result, "--backend foo: unknown slide reader backend")
    assert result.output.count("foo") == 1 and not (tmp_path / "t").exists()


def _pickle_bomb(path: Path, marker: Path) -> Path:
    """A checkpoint that runs code when unpickled (it would create `marker`)."""

    class Bomb:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": Bomb()}, path)
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_run")
    write_embedding_cohort(d, n_specimens=16, seed=3, signal=2.5)
    run_training(train_config(d, d / "run", epochs=1))
    return d


@pytest.mark.parametrize("command", ["predict", "report"])
def test_a_pickled_best_pt_is_not_a_safe_checkpoint(command, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run / "run", run)
    marker = tmp_path / "EXECUTED"
    _pickle_bomb(run / "best.pt", marker)
    if command == "predict":
        args = ["predict", "--run", str(run), "--stores", str(trained_run / "stores"), "--out", str(tmp_path / "p.csv")]
    else:
        args = ["report", str(run)]
    result = _invoke(args)
    _one_sentence(result, f"{run / 'best.pt'} is not a safe checkpoint")
    assert "weights_only" not in result.output and not marker.exists()


def test_a_pickled_last_pt_stops_a_resume_in_one_sentence(tmp_path):
    stores = tmp_path / "stores"
    stores.mkdir()
    write_store(stores / "s0.h5", synthetic_store("s0", seed=0, n_rows=6, n_cols=6))
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "EXECUTED"
    _pickle_bomb(out / "checkpoints" / "last.pt", marker)
    config = tmp_path / "p.yaml"
    config.write_text(
        f"stores: {stores}\nout: {out}\npreset: tiny\nbatch_size: 4\nsteps: 2\nprecision: fp32\nworkers: 0\n"
        "tensorboard: false\npeak_tflops: 1.0\n"
    )
    result = _invoke(["pretrain", "--config", str(config), "--device", "cpu"])
    _one_sentence(result, f"{out / 'checkpoints' / 'last.pt'} is not a safe checkpoint")
    assert "weights_only" not in result.output and not marker.exists()


def test_encoder_weights_that_are_a_pickle_never_suggest_weights_only_false(tmp_path):
    from mixmag.encoders.model import EncoderWeightsError, build_encoder

    marker = tmp_path / "EXECUTED"
    path = _pickle_bomb(tmp_path / "evil.pt", marker)
    with pytest.raises(EncoderWeightsError) as caught:
        build_encoder("tiny-vit", weights=path)
    assert "is not a safe checkpoint" in str(caught.value) and "weights_only" not in str(caught.value)
    assert not marker.exists()


def _fake_mixer(folder: Path) -> Path:
    """mixer.json as `mixmag pretrain` writes it, beside a mixer.safetensors that is not one."""
    folder.mkdir()
    (folder / "mixer.json").write_text(json.dumps({"mixer": asdict(mixer_config("tiny", in_dim=32)), "stores": {}}))
    weights = folder / "mixer.safetensors"
    weights.write_bytes(b"\xff" * 64)
    return weights


def test_a_mixer_that_is_not_safetensors_is_one_sentence_in_encode_and_train(tmp_path):
    weights = _fake_mixer(tmp_path / "mixer")
    stores = tmp_path / "stores"
    stores.mkdir()
    write_store(stores / "s0.h5", synthetic_store("s0", seed=0, n_rows=6, n_cols=6))
    result = _invoke(
        ["encode", "--mixer", str(weights), "--stores", str(stores), "--out", str(tmp_path / "enc"), "--device", "cpu"]
    )
    _one_sentence(result, f"{weights} is not a safetensors file")
    with pytest.raises(
        WeightsFileError, match="is not a safetensors file"
    ):  # what `mixmag train` builds its mixer with
        build_mixer(MixerSetting(init="pretrained", weights=str(weights)), 32, 3, 3)
    (tmp_path / "mixer" / "mixer.json").write_text("[1, 2]")
    with pytest.raises(WeightsFileError, match="mixer.json: not a mixer description"):
        build_mixer(MixerSetting(init="pretrained", weights=str(weights)), 32, 3, 3)


def test_damaged_or_foreign_checkpoints_are_refused_in_one_sentence(tmp_path):
    from mixmag.train.pretrain import load_checkpoint
    from mixmag.weights_io import UnsafeCheckpointError, load_state_dict_file, load_torch_weights

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    with pytest.raises(
        UnsafeCheckpointError, match="garbage.pt is not a safe checkpoint: it cannot be read as PyTorch weights"
    ):
        load_torch_weights(garbage, fix="retrain")
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.zeros(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(UnsafeCheckpointError, match="truncated.pt is not a safe checkpoint"):
        load_torch_weights(truncated, fix="retrain")
    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(WeightsFileError, match="expected a dictionary of named tensors, found list"):
        load_state_dict_file(a_list, fix="retrain")
    with pytest.raises(UnsafeCheckpointError, match="is not a mixmag pretraining checkpoint"):
        load_checkpoint(a_list, torch.device("cpu"))


def test_an_unknown_read_mode_fails_once_before_any_slide(tmp_path):
    result = _invoke(
        [
            "embed",
            "--plans",
            str(tmp_path),
            "--out",
            str(tmp_path / "stores"),
            "--encoder",
            "stats",
            "--read-mode",
            "mosaic",
            "--device",
            "cpu",
        ]
    )
    _one_sentence(result, "--read-mode mosaic: unknown read mode; use derive or pyramid")
