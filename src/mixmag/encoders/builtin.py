"""A deterministic, weight-free tile encoder for tests and CPU demos.

It sees what the synthetic cohorts are built from: colour, texture at two scales, how much of the
tile is nuclei (dark, purple) and how those nuclei are laid out over a 4 x 4 grid of the tile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Fixed standardisation (centre, scale) of the raw features, measured once on synthetic and real H&E
# tiles at 5x/10x/20x: it keeps cosine similarity between embeddings meaningful (raw colour means would
# make every pair of tiles look alike). Constants, not learned: the encoder stays deterministic.
_CENTER = (
    0.8676,
    0.5852,
    0.7474,
    0.0844,
    0.0813,
    0.0527,
    0.0181,
    0.033,
    0.0398,
    0.8876,
    0.0111,
    0.052,
    *([0.04] * 16),
    0.9609,
    0.056,
    0.2941,
    0.12,
    0.0248,
    -0.0271,
)
_SCALE = (
    0.0521,
    0.0786,
    0.0496,
    0.0646,
    0.0517,
    0.0395,
    0.0251,
    0.0366,
    0.0568,
    0.241,
    0.0238,
    0.0518,
    *([0.09] * 16),
    0.1948,
    0.085,
    0.2546,
    0.155,
    0.1048,
    0.1364,
)


class StatsEncoder(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, 34) features; no parameters, the same on every machine."""

    dim = 34

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("center", torch.tensor(_CENTER), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE), persistent=False)

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
        colour_mean = x.mean(dim=(2, 3))
        colour_spread = ((x * x).mean(dim=(2, 3)) - colour_mean**2).clamp(min=0).sqrt()
        layout = F.adaptive_avg_pool2d(nuclei[:, None].float(), 4).flatten(1)  # (B, 16)
        feats = [
            colour_mean,  # 3 colour means
            colour_spread,  # 3 colour spreads
            grad_fine[:, None],
            grad_coarse[:, None],  # texture at two scales
            nuclei.float().mean(dim=(1, 2))[:, None],  # nuclear area fraction
            pink.float().mean(dim=(1, 2))[:, None],  # stroma fraction
            (nuclei[:, :, 1:] != nuclei[:, :, :-1])
            .float()
            .mean(dim=(1, 2))[:, None],  # nuclear edges: count more than size
            layout.std(dim=1, keepdim=True),  # heterogeneity of the layout
            layout,  # 16: where the nuclei are
            (gray.mean(dim=(1, 2, 3)) < 0.85).float()[:, None],  # tissue vs glass
            _grain(gray, nuclei)[:, None],  # chromatin grain: pixel-scale contrast inside nuclei
            _layout_autocorrelation(nuclei, grid=8, lags=4),  # 4: how regularly nuclei are arranged
        ]
        return (torch.cat(feats, dim=1) - self.center) / self.scale


def _grain(gray: torch.Tensor, nuclei: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels that both lie inside nuclei."""
    inside_x = (nuclei[:, :, 1:] & nuclei[:, :, :-1]).float()
    dx = (gray[:, 0, :, 1:] - gray[:, 0, :, :-1]).abs()
    return (dx * inside_x).sum(dim=(1, 2)) / inside_x.sum(dim=(1, 2)).clamp(min=1)


def _layout_autocorrelation(nuclei: torch.Tensor, grid: int, lags: int) -> torch.Tensor:
    """Autocorrelation of the nuclear-fraction map on a grid x grid layout at lags 1..lags (x and y
    averaged): periodic arrangements give alternating signs, random ones values near zero."""
    m = F.adaptive_avg_pool2d(nuclei[:, None].float(), grid)[:, 0]
    m = m - m.mean(dim=(1, 2), keepdim=True)
    var = (m * m).mean(dim=(1, 2)).clamp(min=1e-6)
    out = []
    for lag in range(1, lags + 1):
        ax = (m[:, :, lag:] * m[:, :, :-lag]).mean(dim=(1, 2))
        ay = (m[:, lag:, :] * m[:, :-lag, :]).mean(dim=(1, 2))
        out.append((ax + ay) / (2 * var))
    return torch.stack(out, dim=1)


def _gradient_energy(gray: torch.Tensor) -> torch.Tensor:
    dx = gray[..., :, 1:] - gray[..., :, :-1]
    dy = gray[..., 1:, :] - gray[..., :-1, :]
    return dx.abs().mean(dim=(1, 2, 3)) + dy.abs().mean(dim=(1, 2, 3))
