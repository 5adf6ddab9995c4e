"""Mean pooling: the slide is the plain mean of its instances, then one linear classifier (the baseline every MIL
aggregator is compared against: what attention adds over weighing every tile alike)."""

from __future__ import annotations

import torch
from torch import nn

from .aggregator import Aggregator, full_mask
from .projection import stored_linear


class MeanPool(Aggregator):
    """(B, N, D) instances + (B, N) mask -> logits w . mean_i z_i + b; `hidden` is unused (no attention network).

    As the classifier is linear, w . mean_i z_i = mean_i (w . z_i): each instance is projected once (`project`, float16
    bags read block by block) and the projections are averaged over the real instances (`pool`); instance i's share
    of the logit is (w . z_i) / N. Padding is zeroed before any sum, so NaN or inf there cannot reach the output."""

    attends = False  # its weights are 1 / N: attribution "auto" uses gradient x input, the instances' own shares
    decomposes = True

    def __init__(self, in_dim: int, hidden: int = 16, n_outputs: int = 1) -> None:
        super().__init__(in_dim, hidden, n_outputs)
        self.classifier = nn.Linear(in_dim, n_outputs)

    def contributions(
        self, z: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, the uniform weights 1 / N of the real instances and each one's share (w . z_i) / N."""
        return self.pool(self.project(z), full_mask(z, mask))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(..., outputs): w . z_i of every instance, without the bias."""
        return stored_linear(z, self.classifier.weight, torch.zeros_like(self.classifier.bias))

    def pool(self, projected: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`contributions` from the instances' projections (B, N, outputs), padded or not."""
        if not bool(mask.all()):
            projected = torch.where(mask[..., None], projected, torch.zeros((), device=projected.device))
        real = mask.to(projected.dtype)
        weight = real / real.sum(1, keepdim=True).clamp(min=1)  # an all-padding row stays all zero
        share = weight[..., None] * projected
        if self.classifier.out_features == 1:
            share = share[..., 0]
        return share.sum(1) + self.classifier.bias, weight, share
