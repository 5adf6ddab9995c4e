"""Masked embedding modeling (MEM, eq. 2-4) and its contrastive variant (CMEM, eq. 5-6).

Masking is per sample and vectorised (argsort of noise, as in MAE): k = floor(s r) slots are hidden,
the mixer sees only the visible slots plus the class tokens, the decoder puts a learned mask token
back at every hidden slot, adds its own positions and predicts the input embedding there.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..geometry import token_levels
from .mixer import MixerConfig, RegionMixer, make_blocks


@dataclass
class Masking:
    keep: torch.Tensor  # (B, s - k) visible slots, in shuffled order
    restore: torch.Tensor  # (B, s) position of each slot in [visible..., masked...]
    masked: torch.Tensor  # (B, s) bool, True where hidden


MemReduction = Literal["mean", "sum"]
ContrastiveForm = Literal["paper", "symmetric"]


def n_masked(seq_len: int, ratio: float) -> int:
    """k = floor(s r) in exact arithmetic on r as written (0.29 is 29/100, not the float just below it):
    in floats 100 * 0.29 = 28.999999999999996 and the floor would hide 28 slots instead of 29."""
    if not 0 < ratio < 1:
        raise ConfigError(f"mask ratio r must be in (0, 1), got {ratio}")
    exact = Fraction(repr(float(ratio)))  # repr is the shortest decimal that reads back as this float
    return (seq_len * exact.numerator) // exact.denominator


def random_masking(
    batch: int, seq_len: int, ratio: float, *, noise: torch.Tensor | None = None, device=None
) -> Masking:
    """Hide floor(s r) random slots of each sample (independently per sample)."""
    k = n_masked(seq_len, ratio)
    if noise is None:
        noise = torch.rand(batch, seq_len, device=device)
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    masked = torch.ones(batch, seq_len, dtype=torch.bool, device=noise.device)
    masked[:, : seq_len - k] = False
    masked = torch.gather(masked, 1, restore)
    return Masking(shuffle[:, : seq_len - k], restore, masked)


def restore_order(visible: torch.Tensor, mask_token: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
    """Put the visible tokens back at their slots and the mask token at every hidden slot."""
    b, s = restore.shape
    full = torch.cat([visible, mask_token.expand(b, s - visible.shape[1], -1)], dim=1)
    return torch.gather(full, 1, restore[..., None].expand(-1, -1, full.shape[-1]))


def level_weights(t: int, n_levels: int) -> torch.Tensor:
    """w_j = s / (l n_level(j)): each magnification contributes equally to eq. 2 in expectation."""
    levels = token_levels(t, n_levels)
    counts = [levels.count(i) for i in range(n_levels)]
    return torch.tensor([len(levels) / (n_levels * counts[i]) for i in levels])


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Eq. 2 averaged over the batch: -(1/k) sum over hidden slots of w_j cos(x_hat_j, x_j)."""
    sim = F.cosine_similarity(pred.float(), target.float(), dim=-1)  # (B, s)
    k = masked.sum(dim=1).clamp(min=1)
    return -((sim * weights * masked).sum(dim=1) / k).mean()


def contrastive_loss(
    z: torch.Tensor, z_prime: torch.Tensor, tau: float = 0.2, form: ContrastiveForm = "paper"
) -> torch.Tensor:
    """Eq. 5 as printed ("paper"): -1/n sum_i log exp(sim(z_i, z'_i)/tau) / sum_{j != i} exp(sim(z_i, z'_j)/tau),
    z against z' only, the positive left out of the denominator. "symmetric": the usual InfoNCE reading, the
    positive in the denominator (cross-entropy over all j) and both directions (z -> z' and z' -> z) averaged."""
    logits = F.normalize(z.float(), dim=-1) @ F.normalize(z_prime.float(), dim=-1).T / tau
    if form == "symmetric":
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    if form != "paper":
        raise ConfigError(f"contrastive must be 'paper' or 'symmetric', got {form!r}")
    positives = logits.diagonal()
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    negatives = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1)
    return (negatives - positives).mean()


class MEMDecoder(nn.Module):
    """D_phi: visible tokens -> predicted embedding at every slot."""

    def __init__(self, config: MixerConfig) -> None:
        super().__init__()
        c = config
        self.n_cls = c.n_cls
        self.embed = nn.Linear(c.dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.decoder_dim))
        self.blocks = make_blocks(c.decoder_dim, c.decoder_depth, c.decoder_heads, c.mlp_ratio, c.mlp)
        self.norm = nn.LayerNorm(c.decoder_dim)
        self.head = nn.Linear(c.decoder_dim, c.in_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "pos_embed"}

    def forward(self, encoded: torch.Tensor, masking: Masking) -> torch.Tensor:
        h = self.embed(encoded)
        cls, visible = h[:, : self.n_cls], h[:, self.n_cls :]
        full = restore_order(visible, self.mask_token, masking.restore)
        h = torch.cat([cls, full + self.pos_embed], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)[:, self.n_cls :])


class Projector(nn.Module):
    """P_psi: concatenated class tokens -> hidden (4096 in the paper) -> 256; dropped after pretraining."""

    def __init__(self, config: MixerConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.n_cls * config.dim, config.projector_hidden),
            nn.GELU(),
            nn.Linear(config.projector_hidden, config.projector_out),
        )

    def forward(self, compressed: torch.Tensor) -> torch.Tensor:
        return self.net(compressed)


OLD_MIXER_PREFIX = "encoder."  # what MEMPretrainer called its mixer in older checkpoints


def rename_old_mixer_keys(state: dict, prefix: str = "") -> dict:
    """Rename `<prefix>encoder.*` keys (checkpoints from before the mixer was called `mixer`) to `<prefix>mixer.*`,
    in place, so old last.pt files still resume; "encoder" now means only the tile encoder."""
    old = prefix + OLD_MIXER_PREFIX
    for key in [k for k in state if k.startswith(old)]:
        state[prefix + "mixer." + key[len(old) :]] = state.pop(key)
    return state


def _accept_old_mixer_keys(module, state_dict, prefix, *args) -> None:
    rename_old_mixer_keys(state_dict, prefix)


class MEMPretrainer(nn.Module):
    """Mixer + decoder (+ projector for CMEM): returns the loss and its parts for a batch.

    The paper leaves two CMEM details open; both are settings. mem_reduction: the two masked crops' MEM
    losses are averaged ("mean", the default: the MEM term keeps the scale it has without context) or
    added ("sum": the literal "MEM + contrastive" with one MEM term per crop). contrastive_form: see
    `contrastive_loss`."""

    def __init__(
        self,
        config: MixerConfig,
        mask_ratio: float,
        contrastive: bool = False,
        tau: float = 0.2,
        mem_reduction: MemReduction = "mean",
        contrastive_form: ContrastiveForm = "paper",
    ) -> None:
        super().__init__()
        n_masked(config.seq_len, mask_ratio)  # validates r
        if mem_reduction not in ("mean", "sum"):
            raise ConfigError(f"mem_reduction must be 'mean' or 'sum', got {mem_reduction!r}")
        if contrastive_form not in ("paper", "symmetric"):
            raise ConfigError(f"contrastive must be 'paper' or 'symmetric', got {contrastive_form!r}")
        self.config = config
        self.mask_ratio = mask_ratio
        self.tau = tau
        self.mem_reduction = mem_reduction
        self.contrastive_form = contrastive_form
        self.mixer = RegionMixer(config)
        self.register_load_state_dict_pre_hook(_accept_old_mixer_keys)
        self.decoder = MEMDecoder(config)
        self.projector = Projector(config) if contrastive else None
        self.register_buffer("weights", level_weights(config.t, config.n_levels), persistent=False)
        self.register_buffer("levels", torch.tensor(token_levels(config.t, config.n_levels)), persistent=False)

    def mem(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict:
        masking = random_masking(x.shape[0], x.shape[1], self.mask_ratio, noise=noise, device=x.device)
        encoded = self.mixer.tokens(x, masking.keep)
        pred = self.decoder(encoded, masking)
        loss = reconstruction_loss(pred, x, masking.masked, self.weights)
        return {"loss": loss, "pred": pred, "masking": masking, "encoded": encoded}

    def forward(self, x: torch.Tensor, x_prime: torch.Tensor | None = None, gather=None) -> dict:
        """x: (B, s, D) regions (for CMEM, the first crop); x_prime: the second crop. `gather` collects
        z' from every rank so eq. 5 runs over the global batch."""
        out = self.mem(x)
        losses = {"mem": out["loss"]}
        if self.projector is not None:
            if x_prime is None:
                raise ConfigError("CMEM needs two crops per sample")
            second = self.mem(x_prime)
            n = self.config.n_cls
            z = self.projector(out["encoded"][:, :n].flatten(1))
            z_prime = self.projector(second["encoded"][:, :n].flatten(1))
            both = out["loss"] + second["loss"]  # both masked crops are reconstructed
            losses["mem"] = both / 2 if self.mem_reduction == "mean" else both
            if gather:
                losses["contrastive"] = _global_contrastive(z, z_prime, gather, self.tau, self.contrastive_form)
            else:
                losses["contrastive"] = contrastive_loss(z, z_prime, self.tau, self.contrastive_form)
        losses["loss"] = sum(v for k, v in losses.items() if k != "loss")
        with torch.no_grad():
            losses |= reconstruction_metrics(
                out["pred"], x, out["masking"].masked, self.levels, self.config.n_levels, self.weights
            )
        return losses


def _global_contrastive(z, z_prime, gather, tau, form: ContrastiveForm = "paper"):
    """Eq. 5 over the global batch: this rank's z against every rank's z' (positives at this rank's offset);
    "symmetric" also runs this rank's z' against every rank's z and includes the positive in the denominator."""
    all_prime, offset = gather(z_prime)
    logits = F.normalize(z.float(), dim=-1) @ F.normalize(all_prime.float(), dim=-1).T / tau
    idx = torch.arange(z.shape[0], device=z.device) + offset
    if form == "symmetric":
        all_z, _ = gather(z)
        back = F.normalize(z_prime.float(), dim=-1) @ F.normalize(all_z.float(), dim=-1).T / tau
        return (F.cross_entropy(logits, idx) + F.cross_entropy(back, idx)) / 2
    positives = logits[torch.arange(z.shape[0], device=z.device), idx]
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[torch.arange(z.shape[0], device=z.device), idx] = True
    negatives = torch.logsumexp(logits.masked_fill(mask, float("-inf")), dim=1)
    return (negatives - positives).mean()


@torch.no_grad()
def reconstruction_metrics(pred, x, masked, levels, n_levels: int, weights) -> dict:
    """Per-level cosine on hidden slots, and the same for a 'predict the mean' baseline: each hidden
    slot predicted by the mean of the visible embeddings of its level in the same region."""
    sim = F.cosine_similarity(pred.float(), x.float(), dim=-1)
    out = {}
    xf = x.float()
    visible = (~masked).float()
    baseline = torch.zeros_like(sim)
    for level in range(n_levels):
        at = (levels == level)[None, :]
        hidden = masked & at
        count = hidden.sum().clamp(min=1)
        out[f"cos_level{level}"] = (sim * hidden).sum() / count
        vis = visible * at
        mean = (xf * vis[..., None]).sum(1) / vis.sum(1, keepdim=True).clamp(min=1)  # (B, D)
        base = F.cosine_similarity(mean[:, None, :].expand_as(xf), xf, dim=-1)
        baseline = torch.where(at, base, baseline)
        out[f"baseline_cos_level{level}"] = (base * hidden).sum() / count
    k = masked.sum(dim=1).clamp(min=1)
    out["baseline_loss"] = -((baseline * weights * masked).sum(dim=1) / k).mean()
    return out
