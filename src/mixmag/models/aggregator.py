"""What a slide aggregator is: the part of the slide model that pools a bag of instances into the slide's logits.

Every aggregator takes (B, N, D) instances and a (B, N) mask (True = real) and gives `contributions`: the logits
((B,) for one output, (B, outputs) otherwise), each instance's weight in the pooling (B, N) and each instance's share
of the logits (B, N[, outputs]), which sums over the instances to the logits less `classifier.bias`. The slide model,
training, prediction and attribution use only this; adding an aggregator is one model file and one line in
`mixmag.models.aggregators:AGGREGATORS`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class Aggregator(nn.Module):
    """Base of the slide aggregators (AB-MIL, mean pooling, ...): see the module docstring for the contract."""

    # the pooling weights are learnt attention worth drawing (AB-MIL), not uniform (mean pooling): attribution "auto"
    # draws them, else gradient x input
    attends: ClassVar[bool] = True
    # `project` then `pool` equal `contributions` (a map of each instance alone, then pooling): large bags are projected
    # one by one and only their projections padded (`mixmag.models.slide:SlideModel.bag_logits`)
    decomposes: ClassVar[bool] = False
    # a bag's logits do not depend on its instances' order (AB-MIL, mean pooling; not TransMIL, whose PPEG reads the
    # order as positions)
    order_invariant: ClassVar[bool] = True
    # `training_loss` reads each bag's class (CLAM-SB's instance loss): only then does the trainer build them per step
    reads_classes: ClassVar[bool] = False
    classifier: nn.Linear  # its bias is the part of the logits no instance contributes

    def __init__(self, in_dim: int, hidden: int = 16, n_outputs: int = 1) -> None:
        super().__init__()

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logit, weight, _ = self.contributions(z, mask)
        return logit, weight

    def contributions(
        self, z: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def training_loss(self, bag_loss: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        """The loss to train on from the task's bag loss of the last training forward; `classes`: each bag's class
        (None where the task has none, or where the aggregator does not read them: `reads_classes`). The bag loss
        itself unless the aggregator adds a term of its own (CLAM-SB's instance clustering)."""
        return bag_loss

    def project(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not pool per-instance projections")

    def pool(self, projected: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not pool per-instance projections")


def full_mask(z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mask of a bag without padding when none is given."""
    return torch.ones(z.shape[:2], dtype=torch.bool, device=z.device) if mask is None else mask
