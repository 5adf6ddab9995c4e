"""Checkpoints published in other layouts, renamed to the timm architecture of their preset, so every encoder runs
through one code path (timm's models, fused attention) and neither `transformers` nor the publishers' code is needed
to embed.

Only renaming, stacking and reshaping:
- `hf-dinov2`: transformers `Dinov2Model` / `Dinov2WithRegistersModel` files (Phikon-v2, Midnight, Hibou), in the
  layout of transformers 4 (as published: `attention.attention.query`, `mlp.weights_in`) or 5 (`attention.q_proj`,
  `mlp.gate_proj`); q, k and v stacked into timm's fused qkv, SwiGLU's two input projections into one;
- `hf-vit`: transformers `ViTModel` files (Phikon), both layouts;
- `dinov2`: the DINOv2 repository's own checkpoints (OpenMidnight), through timm's own filter;
- `ctranspath`: TransPath's Swin checkpoint (timm 0.5 layout), through timm's Swin filter;
- `resnet-trunk`: a full ResNet-50 checkpoint, less the fourth stage and classifier mixmag does not use.
Position embeddings made for another image size are resampled the way timm resamples them; where a checkpoint adds
position to the class token but the timm model keeps registers and class token outside the position grid, the class
token's position is folded into it (as timm does for DINOv2 with registers).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ..errors import MixmagError


class ConversionError(MixmagError):
    pass


_RENAMES = (  # (pattern, timm name) for transformers ViT and DINOv2 files, transformers 4 and 5 names
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.register_tokens$", "reg_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.norm([12])\.(weight|bias)$", r"blocks.\1.norm\2.\3"),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.(weight|bias)$", r"blocks.\1.norm1.\2"),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.(weight|bias)$", r"blocks.\1.norm2.\2"),
    (
        r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(weight|bias)$",
        r"blocks.\1.attn.proj.\2",
    ),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.mlp\.(?:fc1|weights_in)\.(weight|bias)$", r"blocks.\1.mlp.fc1.\2"),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.mlp\.(?:fc2|weights_out|down_proj)\.(weight|bias)$", r"blocks.\1.mlp.fc2.\2"),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.intermediate\.dense\.(weight|bias)$", r"blocks.\1.mlp.fc1.\2"),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.output\.dense\.(weight|bias)$", r"blocks.\1.mlp.fc2.\2"),
    (r"^layernorm\.(weight|bias)$", r"norm.\1"),
)
# q / k / v projections (stacked into qkv) and SwiGLU's gate / up projections (stacked into fc1), both name styles
_QKV = re.compile(
    r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.(query|key|value)|([qkv])_proj)\.(weight|bias)$"
)
_GLU = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.mlp\.(gate|up)_proj\.(weight|bias)$")
_QKV_NAMES = {"q": "query", "k": "key", "v": "value"}
_DROPPED = re.compile(r"^(embeddings\.mask_token|pooler\..*)$")  # masked pretraining; transformers' unused pooler


def hf_to_timm(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A transformers ViT or DINOv2 state dict (e.g. Phikon, Phikon-v2, Midnight) as the state dict of a timm ViT."""
    state = {re.sub(r"^(dinov2|vit|model)\.", "", k): v for k, v in state.items()}  # saved from a task head
    if not any(k.startswith(("encoder.layer.", "layers.")) for k in state):
        return state  # already in timm's layout
    out: dict[str, torch.Tensor] = {}
    stacks: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        if _DROPPED.match(key):
            continue
        if m := _QKV.match(key):
            stacks.setdefault(("attn.qkv", m.group(1), m.group(4)), {})[m.group(2) or _QKV_NAMES[m.group(3)]] = tensor
            continue
        if m := _GLU.match(key):
            stacks.setdefault(("mlp.fc1", m.group(1), m.group(3)), {})[m.group(2)] = tensor
            continue
        for pattern, target in _RENAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, target, key)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"unexpected keys for a ViT / DINOv2 checkpoint: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
        )
    for (target, layer, kind), parts in stacks.items():
        order = ("query", "key", "value") if target == "attn.qkv" else ("gate", "up")
        if set(parts) != set(order):
            raise ConversionError(f"layer {layer}: the checkpoint lacks some of {' / '.join(order)} {kind}")
        out[f"blocks.{layer}.{target}.{kind}"] = torch.cat([parts[p] for p in order], dim=0)
    return _fit_positions(out, model)


def _fit_positions(out: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Position embeddings of a checkpoint whose class token takes a position, for a timm model (with registers)
    that keeps it outside the grid, and for another image size."""
    if "pos_embed" not in out:
        return out
    pos = out["pos_embed"]
    wanted = model.state_dict()["pos_embed"].shape
    grid = int(getattr(model.patch_embed, "num_patches", 0))
    if getattr(model, "no_embed_class", False) and pos.shape[1] == int(round((pos.shape[1] - 1) ** 0.5)) ** 2 + 1:
        if "cls_token" in out:
            out["cls_token"] = out["cls_token"] + pos[:, :1]
        pos = pos[:, 1:]
    if pos.shape != wanted:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        pos = resample_abs_pos_embed(pos, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix)
    if grid and pos.shape[1] not in (grid, grid + 1):
        raise ConversionError(f"position embeddings of {pos.shape[1]} tokens do not fit a {grid}-patch grid")
    out["pos_embed"] = pos
    return out


def dinov2_to_timm(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint of the DINOv2 repository (w12/w3 SwiGLU, register_tokens), through timm's own filter."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = {k.removeprefix("backbone.").removeprefix("teacher."): v for k, v in state.items()}
    return checkpoint_filter_fn(state, model)


def ctranspath_to_timm(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """TransPath's Swin checkpoint (stage-end downsampling, attention-mask buffers) in timm's current Swin layout."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    return {k: v for k, v in checkpoint_filter_fn(state, model).items() if not k.startswith("head.")}


def resnet_trunk(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A ResNet-50 checkpoint less its fourth stage and classifier (the trunk mixmag builds stops at stage 3)."""
    return {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}


CONVERTERS: dict[str, Callable[[dict, torch.nn.Module], dict]] = {
    "hf-dinov2": hf_to_timm,
    "hf-vit": hf_to_timm,
    "dinov2": dinov2_to_timm,
    "ctranspath": ctranspath_to_timm,
    "resnet-trunk": resnet_trunk,
}
