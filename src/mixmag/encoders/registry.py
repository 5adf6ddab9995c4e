"""Named tile-encoder presets: how to build each foundation model, feed it, and read its output.

A preset records the architecture (a timm model name plus keyword arguments, or a builder for the
built-in encoders), the hub id its weights come from, the input transform, the output mode and
dimension, and the license/gating note. `register_preset` adds a user's own model in a few lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from ..errors import ConfigError
from .builtin import StatsEncoder

OutputMode = Literal["cls", "cls+mean"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputTransform:
    """What the model expects: tiles resized (shorter side) to `resize`, centre-cropped to `size`,
    scaled to [0, 1] and normalised. Applied on the model's device, on uint8 batches."""

    size: int = 224
    resize: int | None = None
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class EncoderPreset:
    name: str
    description: str
    dim: int
    transform: InputTransform = InputTransform()
    output: OutputMode = "cls"
    timm_name: str | None = None
    timm_kwargs: Callable[[], dict] = field(default=dict, repr=False)
    hub_id: str | None = None
    builder: Callable[..., nn.Module] | None = field(default=None, repr=False)
    needs_weights: bool = True
    license: str = ""
    weights_format: str = "timm"  # or a layout in encoders.convert.CONVERTERS (e.g. "hf-dinov2")
    hub_file: str | None = None  # for non-timm hub repositories: the weights file to fetch

    def output_dim(self, output: OutputMode | None = None) -> int:
        return self.dim * (2 if (output or self.output) == "cls+mean" else 1)


_PRESETS: dict[str, EncoderPreset] = {}


def register_preset(preset: EncoderPreset, *, replace: bool = False) -> EncoderPreset:
    """Make a preset available by name (to `mixmag embed --encoder NAME` and `build_encoder`)."""
    if preset.name in _PRESETS and not replace:
        raise ConfigError(f"encoder preset {preset.name!r} already exists; pass replace=True to override it")
    if (preset.timm_name is None) == (preset.builder is None):
        raise ConfigError(f"preset {preset.name!r} needs exactly one of timm_name or builder")
    _PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> EncoderPreset:
    try:
        return _PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown encoder preset {name!r}; known presets: {', '.join(sorted(_PRESETS))}") from None


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def _swiglu_vit(**extra) -> Callable[[], dict]:
    def kwargs() -> dict:
        from timm.layers import SwiGLUPacked

        return dict(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, **extra)

    return kwargs


def _plain(**extra) -> Callable[[], dict]:
    return lambda: dict(extra)


register_preset(
    EncoderPreset(
        name="virchow2",
        description="Paige Virchow2 ViT-H/14, 4 registers, SwiGLU; trained on 5x-40x tiles (the paper's encoder)",
        dim=1280,
        transform=InputTransform(224, None, "bicubic"),
        output="cls",
        timm_name="vit_huge_patch14_224",
        timm_kwargs=_swiglu_vit(
            img_size=224, init_values=1e-5, mlp_ratio=5.3375, reg_tokens=4, no_embed_class=True, dynamic_img_size=True
        ),
        hub_id="paige-ai/Virchow2",
        license="CC-BY-NC-ND-4.0, gated on Hugging Face (institutional e-mail)",
    )
)
register_preset(
    EncoderPreset(
        name="uni",
        description="MahmoodLab UNI ViT-L/16",
        dim=1024,
        transform=InputTransform(224, None, "bilinear"),
        timm_name="vit_large_patch16_224",
        timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=True),
        hub_id="MahmoodLab/UNI",
        license="CC-BY-NC-ND-4.0, gated on Hugging Face",
    )
)
register_preset(
    EncoderPreset(
        name="uni2-h",
        description="MahmoodLab UNI2-h ViT-H/14, 8 registers, SwiGLU",
        dim=1536,
        transform=InputTransform(224, None, "bilinear"),
        timm_name="vit_giant_patch14_224",
        timm_kwargs=_swiglu_vit(
            img_size=224,
            patch_size=14,
            depth=24,
            num_heads=24,
            init_values=1e-5,
            embed_dim=1536,
            mlp_ratio=2.66667 * 2,
            no_embed_class=True,
            reg_tokens=8,
            dynamic_img_size=True,
        ),
        hub_id="MahmoodLab/UNI2-h",
        license="CC-BY-NC-ND-4.0, gated on Hugging Face",
    )
)
_HOPTIMUS_TRANSFORM = InputTransform(
    224, None, "bicubic", (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)
)
register_preset(
    EncoderPreset(
        name="h-optimus-0",
        description="Bioptimus H-optimus-0 ViT-g/14, 4 registers",
        dim=1536,
        transform=_HOPTIMUS_TRANSFORM,
        timm_name="vit_giant_patch14_reg4_dinov2",
        timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=False),
        hub_id="bioptimus/H-optimus-0",
        license="Apache-2.0",
    )
)
register_preset(
    EncoderPreset(
        name="h-optimus-1",
        description="Bioptimus H-optimus-1 ViT-g/14, 4 registers",
        dim=1536,
        transform=_HOPTIMUS_TRANSFORM,
        timm_name="vit_giant_patch14_reg4_dinov2",
        timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=False),
        hub_id="bioptimus/H-optimus-1",
        license="non-commercial, gated on Hugging Face",
    )
)
register_preset(
    EncoderPreset(
        name="prov-gigapath",
        description="Prov-GigaPath tile encoder ViT-g/16",
        dim=1536,
        transform=InputTransform(224, 256, "bicubic"),
        timm_name="vit_giant_patch14_dinov2",
        timm_kwargs=_plain(
            img_size=224,
            in_chans=3,
            patch_size=16,
            embed_dim=1536,
            depth=40,
            num_heads=24,
            init_values=1e-5,
            mlp_ratio=5.33334,
        ),
        hub_id="prov-gigapath/prov-gigapath",
        license="Apache-2.0 (research use), gated on Hugging Face",
    )
)
register_preset(
    EncoderPreset(
        name="phikon-v2",
        description="Owkin Phikon-v2 ViT-L/16 (DINOv2, no registers); transformers checkpoint, run as timm ViT",
        dim=1024,
        transform=InputTransform(224, None, "bicubic"),
        timm_name="vit_large_patch16_224",
        timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=True),
        hub_id="owkin/phikon-v2",
        weights_format="hf-dinov2",
        hub_file="model.safetensors",
        license="Owkin non-commercial license (not gated)",
    )
)


def _tiny_vit() -> nn.Module:
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2, embed_dim=64, num_heads=2, img_size=224
    )


def _stats() -> nn.Module:
    return StatsEncoder()


register_preset(
    EncoderPreset(
        name="tiny-vit",
        description="built-in: 2-block ViT (dim 64), random init with a fixed seed; for tests and CPU runs",
        dim=64,
        transform=InputTransform(224, None, "bilinear"),
        builder=_tiny_vit,
        needs_weights=False,
        license="built-in",
    )
)
register_preset(
    EncoderPreset(
        name="stats",
        description="built-in: deterministic colour, texture and nuclear-layout statistics per tile; no weights",
        dim=34,
        transform=InputTransform(224, None, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        builder=_stats,
        needs_weights=False,
        license="built-in",
    )
)


def timm_kwargs(preset: EncoderPreset, overrides: dict | None = None) -> dict:
    """The keyword arguments that build the preset's architecture with timm (plus test overrides)."""
    return {"num_classes": 0} | preset.timm_kwargs() | (overrides or {})
