"""A linear layer over stored embeddings without a float32 copy of them.

Bags come from the stores as float16 (31 MB for a TCGA-size slide at 20x). Training used to convert each padded batch
to float32 (twice the bytes, fresh pages to fault in) and then read that copy once in the forward pass and again for
the weight gradient. `stored_linear` reads the float16 rows a block at a time instead, widening each block to float32
while it is in cache: every product is the float32 one (float16 -> float32 is exact), only the order in which the
weight gradient's blocks are summed differs, and the bag is read from memory once per pass, at half the width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK_ROWS = 1024  # 1024 x 1280 float32 = 5 MB a block: cache-sized, measured flat from 512 to 2048 rows
LOW_PRECISION = (torch.float16, torch.bfloat16)
SMALL_INPUT = 4 * BLOCK_ROWS * 1280  # values: a few blocks of a 1280-wide bag (a padded batch of small bags)


def stored_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x.float(), weight, bias) for stored embeddings: low-precision `x` that needs no gradient is widened
    block by block (no float32 copy of it is kept); any other `x` takes F.linear as it is."""
    if x.dtype not in LOW_PRECISION or x.requires_grad or weight.dtype != torch.float32:
        return F.linear(x, weight, bias)
    if x.numel() <= SMALL_INPUT:  # a float32 copy costs less than the blocks' Python steps
        return F.linear(x.float(), weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    out = _BlockwiseLinear.apply(rows, weight, bias if bias is not None else torch.zeros_like(weight[:, 0]))
    return out.reshape(*x.shape[:-1], weight.shape[0])


class _BlockwiseLinear(torch.autograd.Function):
    """(rows, in) low precision x (in, out) float32 weight; gradients for weight and bias only (x is data)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows, weight)
        out = torch.empty((rows.shape[0], weight.shape[0]), dtype=torch.float32, device=rows.device)
        for start in range(0, rows.shape[0], BLOCK_ROWS):
            block = slice(start, start + BLOCK_ROWS)
            torch.addmm(bias, rows[block].float(), weight.t(), out=out[block])
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[None, torch.Tensor | None, torch.Tensor | None]:
        rows, weight = ctx.saved_tensors
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight)
            for start in range(0, rows.shape[0], BLOCK_ROWS):
                block = slice(start, start + BLOCK_ROWS)
                grad_weight.addmm_(grad_out[block].t(), rows[block].float())
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return None, grad_weight, grad_bias
