"""The region mixer: a transformer over the s(t, l) tile embeddings of a region, with 4 class tokens.

Tensors only (no files, no slides). Blocks are timm's pre-norm ViT blocks (fused attention through
F.scaled_dot_product_attention) with a SwiGLU MLP; the input layer is linear, positions are a learned
table over the s fixed (level, row, col) slots, and the class tokens carry no position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..config import MAX_DEPTH, MAX_DIM, MAX_HEADS, MAX_WIDTH
from ..errors import ConfigError
from ..geometry import sequence_length
from .projection import stored_linear

MlpKind = Literal["swiglu", "swiglu-packed", "gelu"]


@dataclass(frozen=True)
class MixerConfig:
    """Architecture of a region mixer. `mlp="swiglu"`: gate and value each dim * mlp_ratio wide
    (timm SwiGLU, our reading of the paper's "MLP ratio 2 with SwiGLU"); "swiglu-packed": timm's
    packed form, dim * mlp_ratio split into gate and value halves."""

    in_dim: int = 1280
    dim: int = 1536
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 2.0
    mlp: MlpKind = "swiglu"
    n_cls: int = 4
    t: int = 3
    n_levels: int = 3
    decoder_dim: int = 1536
    decoder_depth: int = 2
    decoder_heads: int = 12
    projector_hidden: int = 4096
    projector_out: int = 256

    @property
    def seq_len(self) -> int:
        return sequence_length(self.t, self.n_levels)

    def __post_init__(self) -> None:
        if self.dim % self.heads or self.decoder_dim % self.decoder_heads:
            raise ConfigError(f"dim {self.dim} / decoder_dim {self.decoder_dim} must divide by their head counts")
        if self.mlp not in ("swiglu", "swiglu-packed", "gelu"):
            raise ConfigError(f"unknown mlp {self.mlp!r}; use swiglu, swiglu-packed or gelu")


class MixerOverrides(BaseModel):
    """The `mixer:` section of a config: architecture fields that replace the preset's (None keeps the preset's).
    `t` and `n_levels` are not here: they come from the config's `t` and the stores."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    in_dim: int | None = Field(
        None, ge=1, le=MAX_DIM, description="must equal the stores' embedding dimension when given"
    )
    dim: int | None = Field(None, ge=1, le=MAX_DIM)
    depth: int | None = Field(None, ge=0, le=MAX_DEPTH)
    heads: int | None = Field(None, ge=1, le=MAX_HEADS)
    mlp_ratio: float | None = Field(None, gt=0, le=64)
    mlp: MlpKind | None = None
    n_cls: int | None = Field(None, ge=1, le=MAX_HEADS)
    decoder_dim: int | None = Field(None, ge=1, le=MAX_DIM)
    decoder_depth: int | None = Field(None, ge=0, le=MAX_DEPTH)
    decoder_heads: int | None = Field(None, ge=1, le=MAX_HEADS)
    projector_hidden: int | None = Field(None, ge=1, le=MAX_WIDTH)
    projector_out: int | None = Field(None, ge=1, le=MAX_WIDTH)

    def given(self) -> dict:
        """Only the fields the config set (what is written to config.json and compared on resume)."""
        return self.model_dump(exclude_none=True)


MIXER_PRESETS: dict[str, dict] = {
    "paper": {},
    "small": dict(
        dim=384,
        depth=6,
        heads=6,
        decoder_dim=384,
        decoder_depth=2,
        decoder_heads=6,
        projector_hidden=1024,
        projector_out=128,
    ),
    "tiny": dict(
        dim=64,
        depth=2,
        heads=4,
        decoder_dim=64,
        decoder_depth=1,
        decoder_heads=4,
        projector_hidden=128,
        projector_out=32,
    ),
}


def mixer_config(preset: str, **overrides) -> MixerConfig:
    if preset not in MIXER_PRESETS:
        raise ConfigError(f"unknown mixer preset {preset!r}; known presets: {', '.join(MIXER_PRESETS)}")
    return MixerConfig(**(MIXER_PRESETS[preset] | overrides))


def make_blocks(dim: int, depth: int, heads: int, mlp_ratio: float, mlp: MlpKind) -> nn.ModuleList:
    from timm.layers import SwiGLU, SwiGLUPacked
    from timm.models.vision_transformer import Block

    layer = {"swiglu": SwiGLU, "swiglu-packed": SwiGLUPacked, "gelu": None}[mlp]
    kwargs = dict(mlp_layer=layer, act_layer=nn.SiLU) if layer is not None else {}
    return nn.ModuleList(Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, **kwargs) for _ in range(depth))


class RegionMixer(nn.Module):
    """E_theta: (B, s, in_dim) region embeddings -> (B, n_cls + s, dim) normalised tokens."""

    def __init__(self, config: MixerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Linear(c.in_dim, c.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.dim))
        self.cls_token = nn.Parameter(torch.zeros(1, c.n_cls, c.dim))
        self.blocks = make_blocks(c.dim, c.depth, c.heads, c.mlp_ratio, c.mlp)
        self.norm = nn.LayerNorm(c.dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_linear)

    def tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode; with `keep` (B, n_keep) slot indices, only those slots are seen (MEM)."""
        if x.shape[-1] != self.config.in_dim:
            raise ConfigError(f"region embeddings have dimension {x.shape[-1]}, the mixer expects {self.config.in_dim}")
        h = stored_linear(x, self.embed.weight, self.embed.bias) + self.pos_embed  # float16 bags: no float32 copy
        if keep is not None:
            h = torch.gather(h, 1, keep[..., None].expand(-1, -1, h.shape[-1]))
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(contextualized tokens (B, s, dim), compressed embedding (B, n_cls * dim))."""
        h = self.tokens(x)
        n = self.config.n_cls
        return h[:, n:], h[:, :n].flatten(1)

    def no_weight_decay(self) -> set[str]:
        """Parameters never decayed besides norms and biases (timm's convention): positions and class tokens."""
        return {"pos_embed", "cls_token"}

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters by depth for layer-wise lr decay (BEiT/MAE): input layer, positions and class tokens first,
        then one group per block, then the final norm. Declared here, by module, so renaming an attribute cannot
        silently move a parameter to another learning rate."""
        stem = [*self.embed.parameters(), self.pos_embed, self.cls_token]
        return [stem, *[list(block.parameters()) for block in self.blocks], list(self.norm.parameters())]

    def compressed_dim(self) -> int:
        return self.config.n_cls * self.config.dim

    def describe(self) -> dict:
        return asdict(self.config) | {"parameters": sum(p.numel() for p in self.parameters())}


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
