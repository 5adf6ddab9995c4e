"""TransMIL (Shao et al., NeurIPS 2021): a small transformer over the bag, written from the paper.

The paper's TPT module: instances are projected to 512-d (a linear layer and ReLU); the sequence is "squared" to the
next square length N by appending copies of its first instances, and a class token is put in front; then a
transformer layer, the PPEG (the instances laid out as a sqrt(N) x sqrt(N) image, a sum of itself and of depthwise 7x7,
5x5 and 3x3 convolutions: positions without position tables, for bags of any size), a second transformer layer, a
layer norm, and a linear classifier of the class token. Each layer is x + MSA(LN(x)) with 8 heads.

Two readings of the paper, said here: the paper's MSA is the Nystrom approximation of attention (to afford long
sequences); here it is exact softmax attention computed by torch's fused kernel (scaled_dot_product_attention, memory
linear in the bag's length), so a bag's logits are those of the attention the approximation stands for. And as the
class token reads every instance through two layers, no exact per-instance share of the logit exists: `contributions`
gives the last layer's class-token attention (mean over heads; a squaring copy's weight goes to its original) and
splits the logit less the bias in proportion to it; attribution "auto" uses gradient x input for this model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .aggregator import Aggregator, full_mask

DIM = 512  # the paper's width
HEADS = 8


class _Layer(nn.Module):
    """x + MSA(LN(x)); `cls_attention` gives the class token's attention over the sequence."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads = heads

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)  # (1, L, dim) each
        return tuple(t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (1, heads, L, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        return x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))

    def cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(L,) the class token's attention weights, mean over heads."""
        q, k, _ = self._qkv(x)
        scores = q[:, :, :1] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return scores.softmax(-1)[0, :, 0].mean(0)


class _PPEG(nn.Module):
    """Pyramid position encoding: the instances as a square image, plus its 7x7, 5x5 and 3x3 depthwise convolutions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, tokens = x[:, :1], x[:, 1:]
        side = math.isqrt(tokens.shape[1])
        image = tokens.transpose(1, 2).unflatten(-1, (side, side))  # (1, dim, side, side)
        image = image + sum(conv(image) for conv in self.convs)
        return torch.cat([cls, image.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(Aggregator):
    """(B, N, D) instances + (B, N) mask -> logits of each bag's class token; `hidden` is unused (the paper's 512)."""

    attends = False  # the class token's attention is not the logit's decomposition: explain by gradient x input
    order_invariant = False  # the PPEG lays the bag out in its order: a bag's order changes its logits

    def __init__(self, in_dim: int, hidden: int = 16, n_outputs: int = 1) -> None:
        super().__init__(in_dim, hidden, n_outputs)
        self.embed = nn.Linear(in_dim, DIM)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        nn.init.normal_(self.cls_token, std=0.02)
        self.layer1, self.ppeg, self.layer2 = _Layer(DIM, HEADS), _PPEG(DIM), _Layer(DIM, HEADS)
        self.norm = nn.LayerNorm(DIM)
        self.classifier = nn.Linear(DIM, n_outputs)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def _bag(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One bag's (n, D) instances -> its logits (outputs,) and the class token's attention on them (n,)."""
        n = z.shape[0]
        h = F.relu(self.embed(z.float()))[None]  # (1, n, DIM)
        square = math.isqrt(n - 1) + 1 if n > 1 else 1
        extra = square * square - n
        copies = torch.arange(extra, device=z.device) % n  # the squaring: the first instances again
        h = self.ppeg(self.layer1(torch.cat([self.cls_token, h, h[:, copies]], dim=1)))
        weight = self.layer2.cls_attention(h)[1:]  # the last layer's: what the class token reads last
        weight = weight[:n].index_add(0, copies, weight[n:])
        return self.classifier(self.norm(self.layer2(h)[0, 0])), weight / weight.sum()  # over the instances

    def contributions(
        self, z: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, the class token's attention on the real instances and the logit less the bias split in proportion
        to it (module docstring); bags are run one by one on their real instances, so padding never enters."""
        mask = full_mask(z, mask)
        outputs = self.classifier.out_features
        rows, weights = [], torch.zeros(mask.shape, device=z.device)
        for i in range(z.shape[0]):
            if bool(mask[i].any()):
                logit, weight = self._bag(z[i][mask[i]])
                weights[i, mask[i]] = weight
            else:  # an all-padding row: the bias alone, as the other aggregators give
                logit = self.classifier.bias
            rows.append(logit)
        logits = torch.stack(rows)
        shares = weights[..., None] * (logits - self.classifier.bias)[:, None, :]
        if outputs == 1:
            return logits[:, 0], weights, shares[..., 0]
        return logits, weights, shares
