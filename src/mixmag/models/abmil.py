"""Gated attention MIL (AB-MIL, eq. 7-8) with one linear classifier and a padding mask."""

from __future__ import annotations

import torch
from torch import nn


class GatedABMIL(nn.Module):
    """(B, N, D) instances + (B, N) mask (True = real) -> (B,) logits and (B, N) attention.

    alpha_i = softmax_i(h^T (tanh(V z_i) * sigmoid(U z_i))) over the real instances; z_agg = sum alpha_i z_i.
    V and U carry biases (eq. 8 writes none; an affine gate is the common reading and costs 2 x hidden numbers);
    h has none, as a shared offset would cancel in the softmax anyway.
    Padded positions are zeroed before any product, so whatever they hold (even NaN or inf) cannot reach
    the output: 0 * NaN would be NaN.
    """

    def __init__(self, in_dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.V = nn.Linear(in_dim, hidden)
        self.U = nn.Linear(in_dim, hidden)
        self.h = nn.Linear(hidden, 1, bias=False)
        self.classifier = nn.Linear(in_dim, 1)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z, mask = self._masked(z, mask)
        return self._pool(z, mask)

    def contributions(
        self, z: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, attention and each instance's share of the logit: the classifier is linear over
        sum alpha_i z_i, so alpha_i (w . z_i) summed over the instances is exactly logit - bias."""
        z, mask = self._masked(z, mask)
        logit, alpha = self._pool(z, mask)
        return logit, alpha, alpha * (z @ self.classifier.weight[0])

    @staticmethod
    def _masked(z: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """z with its padded positions zeroed (a copy only when there is padding) and the mask."""
        if mask is None:
            return z, torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
        if bool(mask.all()):
            return z, mask
        return torch.where(mask[..., None], z, torch.zeros((), dtype=z.dtype, device=z.device)), mask

    def _pool(self, z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.h(torch.tanh(self.V(z)) * torch.sigmoid(self.U(z))).squeeze(-1)
        scores = scores.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=1)
        alpha = torch.where(mask, alpha, torch.zeros_like(alpha))  # an all-padding row stays all zero
        pooled = torch.einsum("bn,bnd->bd", alpha, z)
        return self.classifier(pooled).squeeze(-1), alpha
