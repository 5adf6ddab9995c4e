"""Optimiser parameter groups and learning-rate schedules shared by pretraining and fine-tuning."""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norms, biases, position tables, class and mask tokens are not decayed (DESIGN §5)."""
    return param.ndim < 2 or name.endswith(".bias") or any(key in name for key in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if no_weight_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr: linear warm-up over `warmup` steps, then cosine to min_ratio at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def layer_decay_groups(model: nn.Module, lr: float, weight_decay: float, decay: float, mixer_prefix: str = "mixer.") -> list[dict]:
    """Parameter groups with layer-wise lr decay for a mixer inside `model` (MAE/BEiT rule):
    mixer input layer, positions and class tokens are layer 0, block i is layer i + 1, everything
    else (the mixer's final norm, the aggregator) is layer depth + 1; lr scale = decay^(depth + 1 - layer)."""
    mixer = getattr(model, mixer_prefix.rstrip("."), None)
    depth = len(mixer.blocks) if mixer is not None else 0
    top = depth + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        layer = top
        if name.startswith(mixer_prefix):
            inner = name[len(mixer_prefix):]
            if inner.startswith(("embed.", "pos_embed", "cls_token")):
                layer = 0
            elif inner.startswith("blocks."):
                layer = int(inner.split(".")[1]) + 1
        plain = no_weight_decay(name, param)
        group = groups.setdefault((layer, plain), {
            "params": [], "layer_id": layer, "lr_scale": decay ** (top - layer),
            "lr": lr * decay ** (top - layer), "weight_decay": 0.0 if plain else weight_decay,
        })
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]
