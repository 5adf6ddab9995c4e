"""Gated attention MIL (AB-MIL, eq. 7-8) with one linear classifier and a padding mask."""

from __future__ import annotations

import torch
from torch import nn

from .aggregator import Aggregator, full_mask
from .projection import stored_linear


class GatedABMIL(Aggregator):
    """(B, N, D) instances + (B, N) mask (True = real) -> (B,) logits and (B, N) attention; with `n_outputs` > 1 (a
    multiclass task's classes) (B, n_outputs) logits, all pooled with the same attention.

    alpha_i = softmax_i(h^T (tanh(V z_i) * sigmoid(U z_i))) over the real instances; z_agg = sum alpha_i z_i.
    V and U carry biases (eq. 8 writes none; an affine gate is the common reading and costs 2 x hidden numbers);
    h has none, as a shared offset would cancel in the softmax anyway.

    The classifier is linear, so w . z_agg = sum alpha_i (w . z_i): V, U and w are applied to every instance in one
    product (`project`), the only pass over the bag's D-wide rows; stored float16 bags are read block by block
    (`stored_linear`), never copied to float32. Padded positions' projections are zeroed before any other product,
    so whatever the padding holds (even NaN or inf) cannot reach the output: 0 * NaN would be NaN.
    """

    attends = True
    decomposes = True

    def __init__(self, in_dim: int, hidden: int = 16, n_outputs: int = 1) -> None:
        super().__init__(in_dim, hidden, n_outputs)
        self.V = nn.Linear(in_dim, hidden)
        self.U = nn.Linear(in_dim, hidden)
        self.h = nn.Linear(hidden, 1, bias=False)
        self.classifier = nn.Linear(in_dim, n_outputs)

    def contributions(
        self, z: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, attention and each instance's share of the logit: alpha_i (w . z_i), summed over the instances
        exactly logit - bias."""
        return self.pool(self.project(z), full_mask(z, mask))

    def pool(self, projected: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`contributions` from the instances' projections (B, N, 2 hidden + outputs) (`project`), padded or not."""
        if not bool(mask.all()):
            projected = torch.where(mask[..., None], projected, torch.zeros((), device=projected.device))
        hidden = self.V.out_features
        gate = torch.tanh(projected[..., :hidden]) * torch.sigmoid(projected[..., hidden : 2 * hidden])
        scores = self.h(gate).squeeze(-1).masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=1)
        alpha = torch.where(mask, alpha, torch.zeros_like(alpha))  # an all-padding row stays all zero
        if self.classifier.out_features == 1:
            share = alpha * projected[..., 2 * hidden]
        else:  # (B, N, outputs): each instance's share of every output
            share = alpha[..., None] * projected[..., 2 * hidden :]
        return share.sum(1) + self.classifier.bias, alpha, share

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(..., 2 hidden + outputs): V z_i + b_V, U z_i + b_U and w . z_i of every instance, in one product."""
        weight = torch.cat([self.V.weight, self.U.weight, self.classifier.weight])
        bias = torch.cat([self.V.bias, self.U.bias, torch.zeros_like(self.classifier.bias)])
        return stored_linear(z, weight, bias)
