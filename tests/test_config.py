"""The typed configs: every shipped file loads into its model, shipped recipes equal the models' defaults, sections are
typed, the command line shows the models' defaults, and a resume checks every field that is not listed as free."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.config import load_config
from mixmag.errors import ConfigError
from mixmag.models.mixer import MixerConfig, MixerOverrides
from mixmag.slides.params import TilingParams
from mixmag.studies.benchmark import BenchmarkConfig
from mixmag.studies.demo import DemoConfig
from mixmag.studies.design_space import DesignSpaceConfig
from mixmag.studies.experiments import GridConfig
from mixmag.studies.label_efficiency import LabelEfficiencyConfig
from mixmag.studies.structure_sweep import StructureSweepConfig
from mixmag.train.finetune import TrainConfig
from mixmag.train.pretrain import PretrainConfig, PretrainSettings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODEL_OF = {
    "demo.yaml": DemoConfig,
    "demo-small.yaml": DemoConfig,
    "pretrain.yaml": PretrainConfig,
    "pretrain-tiny.yaml": PretrainConfig,
    "mil.yaml": TrainConfig,
    "grid.yaml": GridConfig,
    "tiling.yaml": TilingParams,
    "benchmark.yaml": BenchmarkConfig,
    "replicates.yaml": BenchmarkConfig,
    "benchmark-pixels.yaml": DemoConfig,
    "design-space-small.yaml": DesignSpaceConfig,
    "label-efficiency-small.yaml": LabelEfficiencyConfig,
    "structure-sweep-small.yaml": StructureSweepConfig,
    "structure-sweep-replicates.yaml": StructureSweepConfig,
    "replicates-small.yaml": BenchmarkConfig,
    "replicates-rival-small.yaml": BenchmarkConfig,
    "design-space-replicates.yaml": DesignSpaceConfig,
    "label-efficiency-replicates.yaml": LabelEfficiencyConfig,
}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert path.name in MODEL_OF, f"{path.name}: say which model reads it (MODEL_OF)"
    load_config(MODEL_OF[path.name], path)


def test_the_shipped_pretraining_recipe_is_the_default():
    """configs/pretrain.yaml and PretrainConfig agree on the paper's recipe (batch 4096, 48,828 steps, ...); only its
    run settings for a GPU node (loader workers, shuffle pool, compile, log and checkpoint intervals) differ."""
    shipped = load_config(PretrainConfig, CONFIGS / "pretrain.yaml")
    default = PretrainConfig(stores=shipped.stores, out=shipped.out)
    different = {k for k, v in shipped.model_dump().items() if default.model_dump()[k] != v}
    assert different == {"workers", "pool", "compile", "log_every", "checkpoint_every"}
    assert default.batch_size == 4096 and default.steps == 48828 and default.lr == pytest.approx(1.5e-4 * 16)


def test_the_demo_defaults_are_configs_demo_yaml():
    assert load_config(DemoConfig, CONFIGS / "demo.yaml") == DemoConfig()


def test_mixer_sections_list_the_architecture_fields():
    """The `mixer:` overrides are MixerConfig's fields less t and n_levels (those come from the config and the
    stores)."""
    assert set(MixerOverrides.model_fields) == {f.name for f in fields(MixerConfig)} - {"t", "n_levels"}


def test_sections_are_typed_and_their_defaults_kept_apart(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "out: o\ntasks: [{name: a, cohort: c.csv, stores: s}]\nmethods: [abmil-5x]\n"
        "train: {epochs: 3}\ntrain_by_method: {abmil: {lr: 0.01}}\n"
    )
    cfg = load_config(GridConfig, grid)
    assert cfg.train.given() == {"epochs": 3} and cfg.train_by_method["abmil"].given() == {"lr": 0.01}
    grid.write_text(grid.read_text().replace("{lr: 0.01}", "{lr: 0.01, epocs: 2}"))
    with pytest.raises(
        ConfigError, match=r"line 5: unknown setting `train_by_method.abmil.epocs` \(did you mean `epochs`\?\)"
    ):
        load_config(GridConfig, grid)
    demo = tmp_path / "demo.yaml"
    demo.write_text("cohort: {n_specimens: 10, slides: 2}\n")
    with pytest.raises(ConfigError, match=r"line 1: unknown setting `cohort.slides`.*known: n_specimens, max_slides"):
        load_config(DemoConfig, demo)
    demo.write_text("tiling: {region_size: 2, tissue: {thumbnail_mpp: 4}}\npretrain: {steps: 5}\n")
    cfg = load_config(DemoConfig, demo)
    assert cfg.tiling.region_size == 2 and cfg.tiling.tissue.thumbnail_mpp == 4 and cfg.pretrain.steps == 5


def test_tile_flags_override_one_key_of_a_config_section(tmp_path):
    path = tmp_path / "tiling.yaml"
    path.write_text("tiling:\n  region_size: 2\n  tissue: {min_saturation: 30, thumbnail_mpp: 16}\n")
    params = load_config(
        TilingParams, path, section="tiling", options={"region_size": None, "tissue": {"thumbnail_mpp": 4.0}}
    )
    assert params.region_size == 2 and params.tissue.min_saturation == 30 and params.tissue.thumbnail_mpp == 4.0
    with pytest.raises(ConfigError, match=r"the command line \(region_size = 0\): `region_size` = 0"):
        load_config(TilingParams, path, section="tiling", options={"region_size": 0})


def test_command_line_help_shows_the_models_defaults(monkeypatch):
    help_text = " ".join(CliRunner().invoke(app, ["tile", "--help"], env={"COLUMNS": "400"}).output.split())
    assert f"t: region side in cells [{TilingParams().region_size}]" in help_text
    assert f"Minimum tissue fraction of a region [{TilingParams().tissue_threshold}]" in help_text
    assert f"um/px of the tissue thumbnail [{TilingParams().tissue.thumbnail_mpp}]" in help_text


def test_resume_checks_every_field_not_listed_as_free():
    saved = PretrainConfig(stores="s", out="o").model_dump(mode="json")
    now = PretrainConfig(stores="s", out="elsewhere", steps=10, log_every=1, compile=True, pool=9, mixer={"depth": 2})
    assert now.resume_conflicts(saved) == ["mixer", "pool"]
    assert PretrainSettings.MAY_CHANGE_ON_RESUME == {
        "out",
        "steps",
        "log_every",
        "checkpoint_every",
        "compile",
        "tensorboard",
        "check_replicas",
        "peak_tflops",
    }

    class WithNewField(PretrainConfig):  # a field added later is checked without anyone listing it
        new_knob: int = 0

    assert WithNewField(stores="s", out="o", new_knob=1).resume_conflicts(saved) == ["new_knob"]
    assert WithNewField(stores="s", out="o").resume_conflicts(saved) == []  # older checkpoints: their default


def test_config_py_is_the_only_yaml_reader():
    """Every YAML file mixmag reads goes through mixmag.config (one place for file-and-line errors and --set)."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "mixmag"
    readers = []
    for path in sorted(src.rglob("*.py")):
        if path.name == "config.py" and path.parent == src:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "yaml"
                and ("load" in node.attr or node.attr in ("compose", "parse", "scan"))
            ):
                readers.append(f"{path.relative_to(src)}:{node.lineno} yaml.{node.attr}")
    assert readers == [], "read YAML with mixmag.config.load_config: " + ", ".join(readers)
