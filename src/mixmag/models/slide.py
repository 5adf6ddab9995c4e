"""Slide-level model: an optional region mixer (trained jointly) feeding a slide aggregator (gated AB-MIL unless the
config names another: `mixmag.models.aggregators:AGGREGATORS`).

Without a mixer the bag's instances go straight to the aggregator (tile embeddings, or precomputed mixer
outputs). With a mixer each region (s tokens) is mixed first and the aggregator runs over the contextualized
tokens of all regions ("patch") or over the regions' compressed embeddings ("cls").
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .aggregator import Aggregator
from .aggregators import build_aggregator
from .mixer import RegionMixer
from .padding import pad_bags, padded_bytes

MixerOutput = Literal["patch", "cls"]
PAD_UP_TO_BYTES = 64 << 20  # bags padded into one batch up to this size; larger ones projected bag by bag


class SlideModel(nn.Module):
    def __init__(
        self,
        in_dim: int,
        hidden: int = 16,
        mixer: RegionMixer | None = None,
        output: MixerOutput = "patch",
        n_outputs: int = 1,
        aggregator: str = "abmil",
    ) -> None:
        super().__init__()
        self.mixer = mixer
        self.output = output
        feat = in_dim if mixer is None else (mixer.config.dim if output == "patch" else mixer.compressed_dim())
        self.aggregator: Aggregator = build_aggregator(aggregator, feat, hidden, n_outputs)

    def forward(self, bags: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """bags: (B, N, D) instances, or (B, R, s, D) regions with a mixer; mask: (B, N) or (B, R)."""
        return self.aggregator(*self.instances(bags, mask))

    def contributions(self, bags: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, the aggregator's weights and each of its instances' contribution to the logit
        (`mixmag.models.aggregator:Aggregator`)."""
        return self.aggregator.contributions(*self.instances(bags, mask))

    def bag_logits(self, bags: list[torch.Tensor]) -> torch.Tensor:
        """(B,) logits of B bags of any lengths ((B, outputs) with several outputs). Without a mixer, and with an
        aggregator that pools per-instance projections (AB-MIL, mean), bags whose
        padded batch would exceed `PAD_UP_TO_BYTES` are projected one by one and only their projections (2 hidden +
        outputs numbers an instance) are padded: no padded copy of real-size bags is made. Smaller bags are padded and
        projected in one product (one autograd node instead of one a bag: faster when bags are many and small)."""
        item_bytes = bags[0][0].numel() * bags[0].element_size()
        small = padded_bytes([b.shape[0] for b in bags], item_bytes) <= PAD_UP_TO_BYTES
        if self.mixer is not None or small or not self.aggregator.decomposes:
            padded, mask = pad_bags(bags)
            return self(padded.to(self.device), mask.to(self.device))[0]
        projected, mask = pad_bags([self.aggregator.project(bag.to(self.device)) for bag in bags])
        return self.aggregator.pool(projected, mask.to(self.device))[0]

    @property
    def device(self) -> torch.device:
        return self.aggregator.classifier.weight.device

    def instances(self, bags: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the aggregator pools: the bag itself, or the mixer's tokens / compressed regions, with their mask."""
        if self.mixer is None:
            return bags, mask
        b, r, s, d = bags.shape
        real = bags.flatten(0, 1) if bool(mask.all()) else bags[mask]  # (regions, s, D): padding is never mixed
        contextual, compressed = self.mixer(real)
        if self.output == "cls":
            feats = torch.zeros(b, r, compressed.shape[-1], device=bags.device, dtype=compressed.dtype)
            feats[mask] = compressed
            return feats, mask
        feats = torch.zeros(b, r, s, contextual.shape[-1], device=bags.device, dtype=contextual.dtype)
        feats[mask] = contextual
        token_mask = mask[:, :, None].expand(b, r, s).reshape(b, r * s)
        return feats.reshape(b, r * s, -1), token_mask


def rename_old_aggregator_keys(state: dict) -> dict:
    """Weights saved before the aggregator had its own name (`abmil.*`, mixmag up to the aggregator registry) under
    today's names (`aggregator.*`): older runs still load."""
    return {("aggregator." + k.removeprefix("abmil.") if k.startswith("abmil.") else k): v for k, v in state.items()}
