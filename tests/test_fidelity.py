"""Known answers for the points docs/method.md used to list as "not pinned": eq. 8 by hand, the label smoothing
before eq. 9's minimum, the warm-up + cosine schedule, the precision settings, the fine-tuning optimiser, the SwiGLU
form each preset builds and the projector's activation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from train_runs import train_config

from mixmag.config import ConfigError
from mixmag.devices import autocast
from mixmag.models.abmil import GatedABMIL
from mixmag.models.mem import Projector
from mixmag.models.mixer import MIXER_PRESETS, make_blocks, mixer_config
from mixmag.synth.embedding_cohort import write_embedding_cohort
from mixmag.train.finetune import TrainConfig, Trainer
from mixmag.train.optim import warmup_cosine
from mixmag.train.pretrain import PretrainSettings


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def test_gated_attention_equals_eq8_computed_by_hand():
    torch.manual_seed(3)
    model = GatedABMIL(in_dim=5, hidden=4)
    z = torch.randn(2, 6, 5)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    logit, alpha = model(z, mask)
    V, bV, U, bU = _np(model.V.weight), _np(model.V.bias), _np(model.U.weight), _np(model.U.bias)
    h, w, b = _np(model.h.weight)[0], _np(model.classifier.weight)[0], float(model.classifier.bias.detach())
    for k in range(2):
        zs = _np(z[k])[_np(mask[k]).astype(bool)]
        scores = np.array([h @ (np.tanh(V @ zi + bV) * (1 / (1 + np.exp(-(U @ zi + bU))))) for zi in zs])
        a = np.exp(scores - scores.max())
        a /= a.sum()  # eq. 8's denominator over the bag's real instances
        assert np.allclose(_np(alpha[k])[: len(zs)], a, atol=1e-6) and float(alpha[k, len(zs) :].sum()) == 0
        assert float(logit[k]) == pytest.approx(w @ (a @ zs) + b, abs=1e-5)  # eq. 7: one linear layer on sum a_i z_i


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    d = tmp_path_factory.mktemp("smoothing")
    write_embedding_cohort(d, n_specimens=16, seed=0, signal=2.5)
    return Trainer(train_config(d, d / "run", label_smoothing=0.1))


def test_label_smoothing_is_applied_to_each_slide_before_the_minimum_of_eq9(trainer):
    specimens = [sp for sp in trainer.cohort.split("train") if len(sp.slides) >= 2][:3]
    assert specimens, "the synthetic cohort has specimens of several slides"
    with torch.no_grad():
        loss = float(trainer.specimen_loss(specimens))
        by_hand = []
        for sp in specimens:
            logits = _np(trainer.slide_logits(list(sp.slides)))
            target = sp.label * 0.9 + 0.05  # y (1 - eps) + eps / 2 with eps = 0.1
            bce = -(target * np.log(1 / (1 + np.exp(-logits))) + (1 - target) * np.log(1 - 1 / (1 + np.exp(-logits))))
            by_hand.append(bce.min())
    assert loss == pytest.approx(float(np.mean(by_hand)), rel=1e-5)


def test_fine_tuning_optimiser_is_adamw_with_the_papers_settings(trainer):
    defaults = TrainConfig(cohort="c.csv", stores="s", out="o")
    assert (defaults.lr, defaults.weight_decay, defaults.batch_size, defaults.hidden) == (1e-5, 0.05, 32, 16)
    assert defaults.label_smoothing == 0.1
    optimizer = trainer.optimizer
    assert type(optimizer) is torch.optim.AdamW
    assert all(g["betas"] == (0.9, 0.999) for g in optimizer.param_groups)  # AdamW's defaults: the paper names none
    decays = {g["weight_decay"] for g in optimizer.param_groups}
    assert decays == {0.0, trainer.config.weight_decay}  # biases and norms excluded, matrices decayed


def test_warmup_then_cosine_known_answers():
    # linear warm-up: step k of 4 gives (k + 1) / 4
    assert [warmup_cosine(k, 4, 14) for k in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert warmup_cosine(4, 4, 14) == pytest.approx(1.0)  # cosine starts at its top
    assert warmup_cosine(9, 4, 14) == pytest.approx(0.5)  # half-way through the cosine
    assert warmup_cosine(14, 4, 14) == pytest.approx(0.0) and warmup_cosine(99, 4, 14) == pytest.approx(0.0)
    assert warmup_cosine(14, 4, 14, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(6, 4, 14) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert warmup_cosine(0, 0, 10) == pytest.approx(1.0)  # no warm-up


def test_precision_settings_reach_the_arithmetic():
    assert PretrainSettings().precision == "bf16"
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast("bf16", cpu):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("fp32", cpu):
        assert (a @ b).dtype == torch.float32
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        autocast("fp16", cpu)


@pytest.mark.parametrize("preset", sorted(MIXER_PRESETS))
def test_every_preset_builds_swiglu_with_gate_and_value_each_dim_times_ratio(preset):
    config = mixer_config(preset)
    assert config.mlp == "swiglu" and config.mlp_ratio == 2
    dim = 16  # one block at a small width: the form, not the size, is what a preset chooses
    mlp = make_blocks(dim, 1, 4, config.mlp_ratio, config.mlp)[0].mlp
    assert (mlp.fc1_g.out_features, mlp.fc1_x.out_features, mlp.fc2.in_features) == (2 * dim,) * 3
    x = torch.randn(3, dim)
    by_hand = mlp.fc2(F.silu(mlp.fc1_g(x)) * mlp.fc1_x(x))  # SwiGLU: SiLU on the gate, times the value
    assert torch.allclose(mlp(x), by_hand, atol=1e-6)
    packed = make_blocks(dim, 1, 4, config.mlp_ratio, "swiglu-packed")[0].mlp
    assert packed.fc1.out_features == 2 * dim and packed.fc2.in_features == dim  # dim * ratio split in two halves


def test_the_projector_is_linear_gelu_linear_at_the_configured_sizes():
    config = mixer_config("tiny")
    layers = list(Projector(config).net)
    assert [type(m) for m in layers] == [nn.Linear, nn.GELU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (config.n_cls * config.dim, config.projector_hidden)
    assert layers[2].out_features == config.projector_out


@pytest.mark.parametrize("form", ["paper", "symmetric"])
def test_global_batch_contrastive_over_two_ranks_equals_the_whole_batch_on_one(form):
    from mixmag.models.mem import _global_contrastive, contrastive_loss

    torch.manual_seed(0)
    z, z_prime = torch.randn(8, 6), torch.randn(8, 6)
    halves = [(z[:4], z_prime[:4]), (z[4:], z_prime[4:])]

    def gather_for(rank: int):  # what all_gather with gradients hands rank `rank`: every rank's tensor, in rank order
        def gather(t: torch.Tensor):
            parts = [h[0] if t is halves[rank][0] else h[1] for h in halves]
            parts[rank] = t
            return torch.cat(parts), 4 * rank

        return gather

    per_rank = [_global_contrastive(zr, zpr, gather_for(r), 0.2, form) for r, (zr, zpr) in enumerate(halves)]
    whole = contrastive_loss(z, z_prime, 0.2, form)
    assert float(sum(per_rank) / 2) == pytest.approx(float(whole), rel=1e-6)  # DDP averages the ranks' gradients
