"""The experiment grid's method names, parsed once into a typed spec (`MethodSpec`) that says what the run trains.

Forms (each optionally ending in `+<aggregator>`, e.g. `MEM-patch-frozen+mean`, for another aggregator than AB-MIL
after a mixer):

- `<aggregator>-<level>`: the aggregator on one level's tiles or all levels' (`abmil-20x`, `abmil-all`, `mean-5x`);
- `random-<output>`: a randomly initialised mixer over all levels, trained jointly (`random-patch`, `random-cls`);
- `random-<level>-<output>`: the same over one level's tokens (`random-5x-cls`);
- `random-<mixer>-<output>`: fresh weights in the architecture of pretrained mixer `<mixer>`;
- `<mixer>-<output>`: pretrained mixer `<mixer>` fine-tuned jointly;
- `<mixer>-<output>-frozen`: pretrained mixer `<mixer>` frozen (its outputs precomputed by `mixmag encode`).

`<mixer>` is a name of the grid's `pretrained:`, `<output>` patch or cls, `<level>` 5x, 10x, 20x (or all, for tiles).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from ..data.bags import TILE_MODES
from ..errors import ConfigError
from ..models.aggregators import AGGREGATORS, AggregatorName
from ..train.tasks import TaskType

Output = Literal["patch", "cls"]
OUTPUTS: tuple[Output, ...] = ("patch", "cls")
ONE_LEVEL = tuple(level for level in TILE_MODES if level != "all")
ABMIL_ON_TILES = tuple(f"abmil-{level}" for level in TILE_MODES)  # the methods that read no mixer, with AB-MIL


class MethodSpec(BaseModel):
    """What one method of the grid trains: its bags (a level's tiles, all levels', regions through a mixer trained
    jointly, or a frozen mixer's precomputed outputs), the mixer's initialisation and output, the aggregator and the
    task type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # as written in the grid (its runs' folder)
    level: Literal["5x", "10x", "20x", "all"] | None = None  # tiles: the level (all: every level); mixers: one level
    init: Literal["random", "pretrained"] | None = None  # None: no mixer
    mixer: str | None = None  # the pretrained mixer whose weights (pretrained) or architecture (random) it takes
    output: Output | None = None
    frozen: bool = False
    aggregator: AggregatorName = "abmil"
    task: TaskType = "binary"

    @model_validator(mode="after")
    def _consistent(self) -> MethodSpec:
        if (self.init is None) != (self.output is None):
            raise ValueError("a mixer method needs an init and an output; a tile method neither")
        if self.init is None and self.level is None:
            raise ValueError("a method without a mixer reads one level's tiles or all levels'")
        if self.init is not None and self.level == "all":
            raise ValueError("a mixer takes all levels unless one level is named")
        if self.init == "pretrained" and (self.mixer is None or self.level is not None):
            raise ValueError("a pretrained mixer is named and takes all levels")
        if self.frozen and self.init != "pretrained":
            raise ValueError("only a pretrained mixer is used frozen")
        return self

    @property
    def bags(self) -> str:
        """The training config's `bags`: the tiles' level, `regions` (a mixer trained jointly) or the frozen mixer's
        output."""
        if self.init is None:
            return str(self.level)
        return str(self.output) if self.frozen else "regions"

    @property
    def uses_mixer(self) -> bool:
        """Reads a mixer's weights or architecture (every method but an aggregator on tiles)."""
        return self.init is not None


def tile_method(name: str) -> MethodSpec | None:
    """`<aggregator>-<level>` (`abmil-20x`), or None: the methods that need no mixer, known without the grid."""
    aggregator, _, level = name.rpartition("-")
    if aggregator in AGGREGATORS and level in TILE_MODES:
        return MethodSpec(name=name, level=level, aggregator=aggregator)
    return None


def _base_method(name: str, mixers: Iterable[str]) -> dict | None:
    """The spec's fields of a name without an aggregator suffix, in the order the grid always matched them."""
    if tile_method(name) is not None:
        return tile_method(name).model_dump(exclude={"name", "task"})
    for output in OUTPUTS:
        if name == f"random-{output}":
            return {"init": "random", "output": output}
        for level in ONE_LEVEL:  # a mixer over one magnification's tokens
            if name == f"random-{level}-{output}":
                return {"init": "random", "level": level, "output": output}
    for mixer in mixers:
        for output in OUTPUTS:
            if name == f"random-{mixer}-{output}":  # fresh weights in the architecture of pretrained mixer `mixer`
                return {"init": "random", "mixer": mixer, "output": output}
            if name == f"{mixer}-{output}":
                return {"init": "pretrained", "mixer": mixer, "output": output}
            if name == f"{mixer}-{output}-frozen":
                return {"init": "pretrained", "mixer": mixer, "output": output, "frozen": True}
    return None


def parse_method(name: str, mixers: Iterable[str] = (), task: str = "binary") -> MethodSpec:
    """The spec of a method name (`mixers`: the grid's pretrained mixer names); an unknown name is one sentence
    listing the valid forms and the names they give with these mixers."""
    mixers = list(mixers)
    fields = _base_method(name, mixers)
    if fields is None and "+" in name:  # another aggregator after a mixer: `MEM-patch+mean`
        base, _, aggregator = name.rpartition("+")
        found = _base_method(base, mixers)
        if found is not None and found.get("init") is not None and aggregator in AGGREGATORS:
            fields = found | {"aggregator": aggregator}
    if fields is None:
        raise ConfigError(f"unknown method {name!r}; {valid_forms(mixers)}")
    return MethodSpec(name=name, task=task, **fields)


def known_methods(mixers: Iterable[str]) -> list[str]:
    """Every method name with AB-MIL as the aggregator that these pretrained mixers allow."""
    mixers = list(mixers)
    return (
        list(ABMIL_ON_TILES)
        + [f"random-{o}" for o in OUTPUTS]
        + [f"random-{n}-{o}" for n in mixers for o in OUTPUTS]
        + [f"random-{lv}-{o}" for lv in ONE_LEVEL for o in OUTPUTS]
        + [f"{n}-{o}{f}" for n in mixers for o in OUTPUTS for f in ("", "-frozen")]
    )


def valid_forms(mixers: list[str]) -> str:
    """The grammar in one sentence, with the names it gives for these mixers."""
    aggregators = ", ".join(AGGREGATORS)
    return (
        "valid forms: <aggregator>-<level> (aggregator "
        f"{aggregators}; level {', '.join(TILE_MODES)}), random-<output>, random-<level>-<output> (level "
        f"{', '.join(ONE_LEVEL)}), random-<mixer>-<output>, <mixer>-<output>, <mixer>-<output>-frozen (output patch "
        f"or cls; mixer one of the grid's pretrained: {', '.join(mixers) or 'none given'}), the mixer forms optionally "
        f"ending in +<aggregator>; known: {', '.join(known_methods(mixers))}"
    )
