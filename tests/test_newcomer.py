"""What a newcomer meets first (issue 30): `mixmag --version`, random weights that are seeded and said so in the
store, the licence file the package metadata names, and the test command that installs Chromium where it can."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import torch
from rich.console import Console
from typer.testing import CliRunner

from mixmag import __version__
from mixmag.cli import app
from mixmag.encoders.model import RANDOM_INIT_SEED, build_encoder
from mixmag.encoders.registry import EncoderPreset, InputTransform, register_preset
from mixmag.stages.progress import work_progress

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


def test_progress_off_a_terminal_prints_lines_with_counts_rate_and_time_left():
    """A log (CI, a file) cannot redraw a bar: the demo printed nothing for 38 minutes of embedding (issue 30)."""
    out = io.StringIO()
    with work_progress(Console(file=out, width=120), log_every=0) as progress:
        task = progress.add_task("tiles embedded", total=63, unit="tiles")
        for _ in range(3):
            progress.advance(task, 21)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("tiles embedded: 21/63 tiles (") and lines[1].startswith("tiles embedded: 42/63 tiles (")
    assert "tiles/s)" in lines[1] and lines[1].endswith(" left")
    assert "63/63" in lines[-1]  # the bar's own last line when the display stops
    quiet = io.StringIO()
    with work_progress(Console(file=quiet, width=120)) as progress:  # 30 s between lines by default
        task = progress.add_task("steps", total=5, unit="steps")
        progress.advance(task)
    assert "1/5" in quiet.getvalue() and quiet.getvalue().count("\n") == 1


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
