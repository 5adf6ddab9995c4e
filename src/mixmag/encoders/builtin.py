"""A deterministic, weight-free tile encoder for tests and CPU demos.

It sees what the synthetic cohorts are built from: colour, texture at two scales, how much of the
tile is nuclei (dark, purple) and how those nuclei are laid out over a 4 x 4 grid of the tile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StatsEncoder(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, 29) features; no parameters, the same on every machine."""

    dim = 29

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[:, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        gray = x.mean(dim=1, keepdim=True)
        nuclei = ((r + g) / 2 < 0.45) & (b > r)  # hematoxylin-dark pixels
        pink = (r > 0.75) & (g < 0.7) & (~nuclei)
        grad_fine = _gradient_energy(gray)
        grad_coarse = _gradient_energy(F.avg_pool2d(gray, 4))
        layout = F.adaptive_avg_pool2d(nuclei[:, None].float(), 4).flatten(1)  # (B, 16)
        blobs = F.max_pool2d(nuclei[:, None].float(), 5, stride=1, padding=2)
        feats = [
            x.mean(dim=(2, 3)),                       # 3 colour means
            x.std(dim=(2, 3)),                        # 3 colour spreads
            grad_fine[:, None], grad_coarse[:, None],  # texture at two scales
            nuclei.float().mean(dim=(1, 2))[:, None],  # nuclear area fraction
            pink.float().mean(dim=(1, 2))[:, None],    # stroma fraction
            blobs.mean(dim=(1, 2, 3))[:, None],        # nuclear area dilated: grows with count more than size
            layout.std(dim=1, keepdim=True),           # heterogeneity of the layout
            layout,                                    # 16: where the nuclei are
            (gray.mean(dim=(1, 2, 3)) < 0.85).float()[:, None],  # tissue vs glass
        ]
        return torch.cat(feats, dim=1)


def _gradient_energy(gray: torch.Tensor) -> torch.Tensor:
    dx = gray[..., :, 1:] - gray[..., :, :-1]
    dy = gray[..., 1:, :] - gray[..., :-1, :]
    return dx.abs().mean(dim=(1, 2, 3)) + dy.abs().mean(dim=(1, 2, 3))
