"""Padding bags of different lengths into one batch: tensors only, so that the slide model needs nothing from
`data/` (models know tensors, not files)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_bags(bags: list[torch.Tensor], dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack bags of different lengths: (B, N_max, ...) zeros-padded, in the bags' own dtype unless `dtype` is given
    (float16 store bags stay float16: the models read them without a float32 copy, `models.projection`), and the
    (B, N_max) mask of real items. Training pads only micro-batches that fit their budget
    (`mixmag.data.bags:plan_micro_batches`), prediction one slide at a time."""
    n = max(b.shape[0] for b in bags)
    out = torch.empty((len(bags), n, *bags[0].shape[1:]), dtype=dtype or bags[0].dtype)
    mask = torch.zeros((len(bags), n), dtype=torch.bool)
    for i, b in enumerate(bags):
        out[i, : b.shape[0]].copy_(b)  # converted in place where the dtype differs: no temporary of the whole bag
        out[i, b.shape[0] :] = 0  # only the padding is written twice
        mask[i, : b.shape[0]] = True
    return out, mask


def padded_bytes(lengths: Sequence[int], item_bytes: int) -> int:
    """Bytes of pad_bags over bags of these lengths whose items take `item_bytes` each in float32."""
    return len(lengths) * max(lengths, default=0) * item_bytes
