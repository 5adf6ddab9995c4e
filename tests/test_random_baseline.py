"""The random baseline is the pretrained mixer's architecture with fresh weights (issue 13)."""

import pytest

from mixmag.errors import ConfigError
from mixmag.models.mixer import RegionMixer, mixer_config
from mixmag.stages.experiments import GridConfig, Task, method_config
from mixmag.train.finetune import build_mixer
from mixmag.train.mixer_file import export_mixer


def _mixer(folder, preset, **overrides):
    folder.mkdir()
    cfg = mixer_config(preset, in_dim=8, **overrides)
    return str(export_mixer(folder, RegionMixer(cfg), cfg, {"preset": preset}, {}))


def _grid(tmp_path, methods, pretrained, **kw):
    return GridConfig(
        out=str(tmp_path / "exp"),
        tasks=[Task(name="A", cohort="c.csv", stores="s")],
        methods=methods,
        pretrained=pretrained,
        **kw,
    )


def test_random_rows_take_the_pretrained_mixers_architecture(tmp_path):
    small = _mixer(tmp_path / "small", "small", depth=1)
    grid = _grid(tmp_path, ["random-patch"], {"MEM": small})
    cfg = method_config(grid, grid.tasks[0], "random-patch", 0)
    mixer = build_mixer(cfg.mixer, in_dim=8, t=3, n_levels=3)
    assert cfg.mixer.init == "random"
    assert (mixer.config.dim, mixer.config.depth, mixer.config.heads) == (384, 1, 6)  # not the tiny preset's 64 / 2 / 4


def test_a_mismatched_random_preset_is_refused(tmp_path):
    small = _mixer(tmp_path / "small", "small", depth=1)
    with pytest.raises(ConfigError, match="initialisation only"):
        method_config(
            _grid(tmp_path, ["random-cls"], {"MEM": small}, random_preset="tiny"),
            Task(name="A", cohort="c", stores="s"),
            "random-cls",
            0,
        )


def test_two_architectures_need_one_random_row_each(tmp_path):
    grid = _grid(
        tmp_path,
        ["random-patch"],
        {"MEM-tiny": _mixer(tmp_path / "t", "tiny"), "MEM-small": _mixer(tmp_path / "s", "small", depth=1)},
    )
    with pytest.raises(ConfigError, match="random-MEM-small-patch"):
        method_config(grid, grid.tasks[0], "random-patch", 0)
    tiny = build_mixer(method_config(grid, grid.tasks[0], "random-MEM-tiny-cls", 0).mixer, 8, 3, 3)
    small = build_mixer(method_config(grid, grid.tasks[0], "random-MEM-small-patch", 0).mixer, 8, 3, 3)
    assert (tiny.config.dim, small.config.dim) == (64, 384)


def test_without_a_pretrained_mixer_the_random_preset_applies(tmp_path):
    grid = _grid(tmp_path, ["random-patch"], {}, random_preset="small")
    assert method_config(grid, grid.tasks[0], "random-patch", 0).mixer.preset == "small"
    assert method_config(_grid(tmp_path, ["random-patch"], {}), grid.tasks[0], "random-patch", 0).mixer.preset == "tiny"
