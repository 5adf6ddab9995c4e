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
    "preset_facts",
    "preset_names",
    "register_preset",
    "timm_kwargs",
    "unseen_levels",
    "unseen_levels_note",
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


def preset_facts(preset: EncoderPreset) -> dict:
    """One preset as `mixmag encoders list` shows it (and `--json` writes it): the card's facts as plain values."""
    card = preset.card
    mpps = None if card is None else card.trained_mpps
    return {
        "name": preset.name,
        "aliases": list(preset.aliases),
        "dim": preset.output_dim(),
        "output": preset.output,
        "parameters": None if card is None else card.params,
        "input_px": preset.transform.size,
        "trained_um_per_px": None if mpps is None else list(mpps),
        "magnifications_seen": None if card is None else card.magnifications(),
        "license": preset.license,
        "gated": None if card is None else card.gated,
        "extra": preset.extra,
        "hub_id": preset.hub_id,
        "weights_format": preset.weights_format,
        "card_tokens": None if card is None else card.tokens,
        "description": preset.description,
    }


def unseen_levels(preset: EncoderPreset, level_mpps: list[float]) -> list[float]:
    """The level µm/px (coarser than 1.5 x the coarsest it was trained at) an encoder never saw in training; none when
    the card does not say what it saw."""
    mpps = preset.card.trained_mpps if preset.card is not None else None
    if not mpps:
        return []
    return [m for m in level_mpps if m > 1.5 * max(mpps)]


def unseen_levels_note(preset: EncoderPreset, level_mpps: list[float]) -> str | None:
    """One plain sentence for `mixmag embed` when it is asked for magnifications the encoder never saw in training."""
    unseen = unseen_levels(preset, level_mpps)
    if not unseen:
        return None
    wide = [
        p.name
        for p in map(get_preset, preset_names())
        if p.card and p.card.trained_mpps and not unseen_levels(p, level_mpps)
    ]
    return (
        f"Note: {preset.name} was trained on {preset.card.magnifications()} tiles only "
        f"({', '.join(f'{m:g}' for m in preset.card.trained_mpps)} µm/px); these plans also ask for "
        f"{', '.join(f'{10 / m:g}×' for m in unseen)} tiles ({', '.join(f'{m:g}' for m in unseen)} µm/px), which it "
        f"never saw in training, so its embeddings of them may carry less. Encoders trained at these magnifications "
        f"too: {', '.join(wide)} (`mixmag encoders list`, column 'magnifications')."
    )


for _preset in builtin_presets():
    register_preset(_preset)
