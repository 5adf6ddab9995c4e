"""What a newcomer meets first (issue 30): `mixmag --version`, random weights that are seeded and said so in the
store, the licence file the package metadata names, and the test command that installs Chromium where it can."""

from __future__ import annotations

import tomllib
from pathlib import Path

import torch
from typer.testing import CliRunner

from mixmag import __version__
from mixmag.cli import app
from mixmag.encoders.model import RANDOM_INIT_SEED, build_encoder
from mixmag.encoders.registry import EncoderPreset, InputTransform, register_preset

ROOT = Path(__file__).resolve().parents[1]

register_preset(
    EncoderPreset(
        name="random-vit-test",
        description="a small timm ViT that needs weights, for --random-init",
        dim=192,
        timm_name="vit_tiny_patch16_224",
        transform=InputTransform(224, None, "bilinear"),
    )
)


def test_version_prints_and_exits():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mixmag {__version__}"


def test_random_init_is_seeded_and_recorded():
    torch.manual_seed(123)  # the global stream does not decide the weights
    first = build_encoder("random-vit-test", random_init=True)
    torch.manual_seed(456)
    second = build_encoder("random-vit-test", random_init=True)
    assert first.weights_digest == second.weights_digest
    assert first.provenance()["encoder_weights_random"] is True
    assert first.provenance()["encoder_weights_seed"] == RANDOM_INIT_SEED
    assert "encoder_weights_random" not in build_encoder("stats").provenance()  # real or built-in weights: no flag


def test_the_licence_named_in_pyproject_is_in_the_repository():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache" in str(project.get("license")) and "Apache License" in licence and "Version 2.0" in licence


def test_the_test_command_installs_chromium_where_it_can():
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert "chromium" in script and "apt-get install" in script
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
