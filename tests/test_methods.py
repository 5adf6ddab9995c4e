"""The experiment grid's method names parsed once into a typed spec: every name keeps the meaning the old prefix and
suffix matching gave it (pinned against that matcher, kept here as the reference), new aggregators combine with any
level and mixer, and an unknown name is one sentence listing the valid forms."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from mixmag.errors import ConfigError
from mixmag.models.mixer import RegionMixer, mixer_config
from mixmag.studies.experiments import GridConfig, Task, _slug, method_config, random_mixer, run_folder
from mixmag.studies.methods import MethodSpec, known_methods, parse_method, tile_method
from mixmag.train.finetune import TrainConfig
from mixmag.train.mixer_file import export_mixer


def _mixer(folder: Path, preset: str, **overrides) -> str:
    folder.mkdir()
    cfg = mixer_config(preset, in_dim=8, **overrides)
    return str(export_mixer(folder, RegionMixer(cfg), cfg, {"preset": preset}, {}))


def reference_config(grid: GridConfig, task: Task, method: str, seed: int) -> TrainConfig:
    """`method_config` as it was before the spec (prefix and suffix matching), for the equivalence below."""
    abmil = {"abmil-5x": "5x", "abmil-10x": "10x", "abmil-20x": "20x", "abmil-all": "all"}
    common = dict(cohort=task.cohort, stores=task.stores, out=str(run_folder(grid, task.name, method, seed)), seed=seed)
    common |= grid.train.given()
    if task.type != "binary":
        common |= {"task": task.type, "classes": task.classes}
    for prefix, overrides in grid.train_by_method.items():
        if method.startswith(prefix):
            common |= overrides.given()
    if method in abmil:
        return TrainConfig(**common, bags=abmil[method])
    if method in ("random-patch", "random-cls"):
        return TrainConfig(**common, bags="regions", mixer=random_mixer(grid, None) | {"output": method.split("-")[1]})
    for level in abmil.values():
        for output in ("patch", "cls"):
            if method == f"random-{level}-{output}" and level != "all":
                mixer = random_mixer(grid, None) | {"output": output}
                return TrainConfig(**common, bags="regions", region_level=level, mixer=mixer)
    for name, weights in grid.pretrained.items():
        for output in ("patch", "cls"):
            if method == f"random-{name}-{output}":
                return TrainConfig(**common, bags="regions", mixer=random_mixer(grid, name) | {"output": output})
            if method == f"{name}-{output}":
                mixer = {"init": "pretrained", "weights": weights, "output": output}
                return TrainConfig(**common, bags="regions", mixer=mixer)
            if method == f"{name}-{output}-frozen":
                encoded = Path(grid.out) / "encoded" / _slug(name) / task.name
                return TrainConfig(**common, bags=output, encoded=str(encoded))
    raise ConfigError(f"unknown method {method!r}")


@pytest.fixture(scope="module")
def grids(tmp_path_factory) -> list[GridConfig]:
    """Grids with one pretrained mixer (names with dashes, as the benchmark's), two of one architecture, and two of
    different architectures (where 'random-patch' is refused)."""
    d = tmp_path_factory.mktemp("mixers")
    tiny, tiny2 = _mixer(d / "a", "tiny"), _mixer(d / "b", "tiny")
    small = _mixer(d / "c", "small", depth=1)
    tasks = [Task(name="t", cohort="c.csv", stores="s"), Task(name="m", cohort="m.csv", stores="s", type="multiclass")]
    settings = dict(out=str(d / "exp"), tasks=tasks, methods=["abmil-20x"], train={"epochs": 3})
    return [
        GridConfig(**settings, pretrained={"MEM": tiny}, train_by_method={"abmil": {"lr": 0.01}, "MEM": {"lr": 0.1}}),
        GridConfig(**settings, pretrained={"MEM r=0.5": tiny, "Random": tiny2}),
        GridConfig(**settings, pretrained={"MEM-tiny": tiny, "MEM-small": small}, random_preset="tiny"),
    ]


def test_every_existing_method_name_keeps_its_meaning(grids):
    compared = refused = 0
    for grid in grids:
        for task in grid.tasks:
            for method in known_methods(grid.pretrained):
                try:
                    expected = reference_config(grid, task, method, 1)
                except ConfigError as exc:  # e.g. random-patch over two architectures: refused alike
                    with pytest.raises(ConfigError, match=str(exc).split(";")[0][:60].replace("(", r"\(")):
                        method_config(grid, task, method, 1)
                    refused += 1
                    continue
                got = method_config(grid, task, method, 1)
                assert got == expected and got.model_dump() == expected.model_dump(), method
                assert got.model_fields_set == expected.model_fields_set, method
                compared += 1
    assert compared > 80 and refused > 0


@pytest.mark.parametrize(
    "name, fields",
    [
        ("abmil-20x", dict(level="20x", bags="20x")),
        ("mean-all", dict(level="all", bags="all", aggregator="mean")),
        ("random-cls", dict(init="random", output="cls", bags="regions")),
        ("random-5x-patch", dict(init="random", level="5x", output="patch", bags="regions")),
        ("random-MEM-cls", dict(init="random", mixer="MEM", output="cls", bags="regions")),
        ("MEM-patch", dict(init="pretrained", mixer="MEM", output="patch", bags="regions")),
        ("MEM-cls-frozen", dict(init="pretrained", mixer="MEM", output="cls", frozen=True, bags="cls")),
        ("MEM-patch-frozen+mean", dict(init="pretrained", mixer="MEM", output="patch", frozen=True, aggregator="mean")),
        ("random-10x-cls+mean", dict(init="random", level="10x", output="cls", aggregator="mean")),
        ("clam-all", dict(level="all", bags="all", aggregator="clam")),
        ("MEM-cls-frozen+clam", dict(init="pretrained", mixer="MEM", output="cls", frozen=True, aggregator="clam")),
        ("MEM-patch+clam", dict(init="pretrained", mixer="MEM", output="patch", bags="regions", aggregator="clam")),
    ],
)
def test_method_names_parse_into_their_spec(name, fields):
    spec = parse_method(name, ["MEM"], "survival")
    assert spec.name == name and spec.task == "survival" and spec.uses_mixer == (spec.init is not None)
    for key, value in fields.items():
        assert getattr(spec, key) == value, key
    for key in {"init", "mixer", "output", "level"} - set(fields):
        assert getattr(spec, key) is None, key
    assert spec.aggregator == fields.get("aggregator", "abmil") and spec.frozen == fields.get("frozen", False)


def test_a_spec_is_frozen_and_consistent():
    spec = parse_method("MEM-patch", ["MEM"])
    with pytest.raises(pydantic.ValidationError):
        spec.frozen = True
    with pytest.raises(pydantic.ValidationError, match="only a pretrained mixer is used frozen"):
        MethodSpec(name="x", init="random", output="patch", frozen=True)
    assert tile_method("mean-5x").aggregator == "mean" and tile_method("MEM-patch") is None


@pytest.mark.parametrize("name", ["abmil-40x", "MEM-patch+transformer", "mean-20x+abmil", "other-patch", "MEM"])
def test_an_unknown_method_is_one_sentence_with_the_valid_forms(name):
    with pytest.raises(ConfigError) as caught:
        parse_method(name, ["MEM"])
    message = str(caught.value)
    assert message.startswith(f"unknown method {name!r}; valid forms: <aggregator>-<level> (aggregator abmil, mean")
    assert "<mixer>-<output>-frozen" in message and "pretrained: MEM" in message and "MEM-cls-frozen" in message
    assert "\n" not in message


def test_another_aggregator_reaches_the_run_config(grids):
    grid = grids[0]
    assert method_config(grid, grid.tasks[0], "mean-20x", 0).aggregator == "mean"
    frozen = method_config(grid, grid.tasks[0], "MEM-cls-frozen+mean", 0)
    assert (frozen.aggregator, frozen.bags, frozen.lr) == ("mean", "cls", 0.1)  # the MEM prefix's overrides still apply
    assert frozen.encoded == method_config(grid, grid.tasks[0], "MEM-cls-frozen", 0).encoded  # one encoding shared
    assert Path(frozen.out).parent.name == "MEM-cls-frozen_mean"
    assert method_config(grid, grid.tasks[0], "abmil-20x", 0).aggregator == "abmil"
    tuned = method_config(grid, grid.tasks[1], "MEM-patch+clam", 0)  # CLAM-SB on a fine-tuned mixer, multiclass
    assert (tuned.aggregator, tuned.bags, tuned.task) == ("clam", "regions", "multiclass")
    assert tuned.mixer is not None and tuned.mixer.init == "pretrained"
