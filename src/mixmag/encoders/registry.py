"""Named tile-encoder presets: how to build each foundation model, feed it, and read its output.

A preset (`spec.EncoderPreset`) records the architecture (a timm model name plus keyword arguments, or a builder),
the hub id its weights come from, the input transform, the output mode and dimension, and its model card's facts.
Presets are named as TRIDENT names them, with mixmag's earlier names as aliases (`presets`).
`register_preset` adds a user's own model in a few lines.
"""

from __future__ import annotations

from ..errors import ConfigError
from .presets import builtin_presets
from .spec import IMAGENET_MEAN, IMAGENET_STD, EncoderPreset, InputTransform, ModelCard, OutputMode

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EncoderPreset",
    "InputTransform",
    "ModelCard",
    "OutputMode",
    "canonical_name",
    "get_preset",
    "preset_names",
    "register_preset",
    "timm_kwargs",
]

_PRESETS: dict[str, EncoderPreset] = {}
_ALIASES: dict[str, str] = {}


def register_preset(preset: EncoderPreset, *, replace: bool = False) -> EncoderPreset:
    """Make a preset available by name and aliases (to `mixmag embed --encoder NAME` and `build_encoder`)."""
    taken = [n for n in (preset.name, *preset.aliases) if n in _PRESETS or n in _ALIASES]
    if taken and not replace:
        raise ConfigError(f"encoder preset {taken[0]!r} already exists; pass replace=True to override it")
    if (preset.timm_name is None) == (preset.builder is None):
        raise ConfigError(f"preset {preset.name!r} needs exactly one of timm_name or builder")
    if preset.name in _ALIASES:  # replacing an alias by a preset of that name
        del _ALIASES[preset.name]
    _PRESETS[preset.name] = preset
    for alias in preset.aliases:
        _ALIASES[alias] = preset.name
    return preset


def canonical_name(name: str) -> str:
    """The preset's own name for a name or an alias (`uni` -> `uni_v1`)."""
    return _ALIASES.get(name, name)


def get_preset(name: str) -> EncoderPreset:
    try:
        return _PRESETS[canonical_name(name)]
    except KeyError:
        raise ConfigError(f"unknown encoder preset {name!r}; known presets: {', '.join(sorted(_PRESETS))}") from None


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def timm_kwargs(preset: EncoderPreset, overrides: dict | None = None) -> dict:
    """The keyword arguments that build the preset's architecture with timm (plus test overrides)."""
    return {"num_classes": 0} | preset.timm_kwargs() | (overrides or {})


for _preset in builtin_presets():
    register_preset(_preset)
