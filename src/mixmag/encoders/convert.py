"""Checkpoints published in Hugging Face `transformers` layouts, renamed to the timm architecture of
their preset, so every encoder runs through one code path (timm's ViT, fused attention) and
`transformers` is never needed to embed.

Only renaming and reshaping: q, k and v projections are stacked into timm's fused qkv; position
embeddings made for another image size are resampled the way timm resamples them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ..errors import MixmagError


class ConversionError(MixmagError):
    pass


_DINOV2_RENAMES = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)$", r"blocks.\1.norm\2.\3"),
    (r"^encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(weight|bias)$", r"blocks.\1.attn.proj.\2"),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.fc([12])\.(weight|bias)$", r"blocks.\1.mlp.fc\2.\3"),
    (r"^layernorm\.(weight|bias)$", r"norm.\1"),
)
# files written by transformers 4 (attention.attention.query) and transformers 5 (attention.q_proj)
_DINOV2_QKV = re.compile(
    r"^encoder\.layer\.(\d+)\.attention\.(?:attention\.(query|key|value)|([qkv])_proj)\.(weight|bias)$"
)
_QKV_NAMES = {"q": "query", "k": "key", "v": "value"}
_DINOV2_DROPPED = ("embeddings.mask_token",)  # used only for masked pretraining


def hf_dinov2_to_timm(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A transformers `Dinov2Model` state dict (e.g. Phikon-v2) as the state dict of a timm ViT."""
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}  # checkpoints saved from a task head
    if not any(k.startswith("encoder.layer.") for k in state):
        return state  # already in timm's layout
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        if key in _DINOV2_DROPPED:
            continue
        m = _DINOV2_QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(4)), {})[m.group(2) or _QKV_NAMES[m.group(3)]] = tensor
            continue
        for pattern, target in _DINOV2_RENAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, target, key)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"unexpected keys for a DINOv2 checkpoint: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
        )
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ConversionError(f"layer {layer}: the checkpoint lacks some of query / key / value {kind}")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    if "pos_embed" in out:
        out["pos_embed"] = _fit_pos_embed(out["pos_embed"], model)
    return out


def _fit_pos_embed(pos: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    wanted = model.state_dict()["pos_embed"].shape
    if pos.shape == wanted:
        return pos
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    grid = model.patch_embed.grid_size
    return resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=prefix)


CONVERTERS: dict[str, Callable[[dict, torch.nn.Module], dict]] = {"hf-dinov2": hf_dinov2_to_timm}
