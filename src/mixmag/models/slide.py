"""Slide-level model: an optional region mixer (trained jointly) feeding gated AB-MIL.

Without a mixer the bag's instances go straight to AB-MIL (tile embeddings, or precomputed mixer
outputs). With a mixer each region (s tokens) is mixed first and AB-MIL runs over the contextualized
tokens of all regions ("patch") or over the regions' compressed embeddings ("cls").
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .abmil import GatedABMIL
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
    ) -> None:
        super().__init__()
        self.mixer = mixer
        self.output = output
        feat = in_dim if mixer is None else (mixer.config.dim if output == "patch" else mixer.compressed_dim())
        self.abmil = GatedABMIL(feat, hidden, n_outputs)

    def forward(self, bags: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """bags: (B, N, D) instances, or (B, R, s, D) regions with a mixer; mask: (B, N) or (B, R)."""
        return self.abmil(*self.instances(bags, mask))

    def contributions(self, bags: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, AB-MIL attention and each AB-MIL instance's contribution to the logit (GatedABMIL.contributions)."""
        return self.abmil.contributions(*self.instances(bags, mask))

    def bag_logits(self, bags: list[torch.Tensor]) -> torch.Tensor:
        """(B,) logits of B bags of any lengths ((B, outputs) with several outputs). Without a mixer, bags whose
        padded batch would exceed `PAD_UP_TO_BYTES` are projected one by one and only their projections (2 hidden +
        outputs numbers an instance) are padded: no padded copy of real-size bags is made. Smaller bags are padded and
        projected in one product (one autograd node instead of one a bag: faster when bags are many and small)."""
        item_bytes = bags[0][0].numel() * bags[0].element_size()
        if self.mixer is not None or padded_bytes([b.shape[0] for b in bags], item_bytes) <= PAD_UP_TO_BYTES:
            padded, mask = pad_bags(bags)
            return self(padded.to(self.device), mask.to(self.device))[0]
        projected, mask = pad_bags([self.abmil.project(bag.to(self.device)) for bag in bags])
        return self.abmil.pool(projected, mask.to(self.device))[0]

    @property
    def device(self) -> torch.device:
        return self.abmil.h.weight.device

    def instances(self, bags: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What AB-MIL pools: the bag itself, or the mixer's tokens / compressed regions, with their mask."""
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
