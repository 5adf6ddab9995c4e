"""Optimiser parameter groups and learning-rate schedules shared by pretraining and fine-tuning."""

from __future__ import annotations

import math

import torch
from torch import nn


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters the model's modules declare undecayed (each module's `no_weight_decay()`,
    timm's convention), so the optimiser matches no attribute names of its own."""
    names = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            names |= {f"{prefix}.{n}" if prefix else n for n in declared()}
    return names


def is_undecayed(name: str, param: torch.Tensor, declared: set[str]) -> bool:
    """Norms and biases (vectors) and the declared position tables, class and mask tokens (DESIGN §5)."""
    return param.ndim < 2 or name in declared


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    declared = no_weight_decay_names(model)
    decay: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if is_undecayed(name, param, declared) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr: linear warm-up over `warmup` steps, then cosine to min_ratio at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def layer_decay_groups(
    model: nn.Module, lr: float, weight_decay: float, decay: float, mixer: nn.Module | None = None
) -> list[dict]:
    """Parameter groups with layer-wise lr decay for a `mixer` inside `model` (BEiT/MAE rule): the mixer's
    `layer_groups()` give layers 0 .. n - 1; everything else in `model` (e.g. the aggregator) is layer n - 1, the
    top; lr scale = decay^(top - layer)."""
    layers = mixer.layer_groups() if mixer is not None else [[]]
    top = len(layers) - 1
    layer_of = {id(p): i for i, group in enumerate(layers) for p in group}
    declared = no_weight_decay_names(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        layer = layer_of.get(id(param), top)
        plain = is_undecayed(name, param, declared)
        group = groups.setdefault(
            (layer, plain),
            {
                "params": [],
                "layer_id": layer,
                "lr_scale": decay ** (top - layer),
                "lr": lr * decay ** (top - layer),
                "weight_decay": 0.0 if plain else weight_decay,
            },
        )
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]
