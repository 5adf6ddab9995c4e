"""Optimiser groups with known answers: which parameters decay and at which learning rate, written out by hand for
a two-block mixer (the models declare their groups; these values do not come from the code under test)."""

from __future__ import annotations

import math

import pytest
import torch

from mixmag.models.mem import MEMPretrainer, _global_contrastive, contrastive_loss
from mixmag.models.mixer import RegionMixer, mixer_config
from mixmag.models.slide import SlideModel
from mixmag.train.optim import layer_decay_groups, param_groups

# lr = 1, decay = 0.5, two blocks: layers are stem 0, block 0 -> 1, block 1 -> 2, final norm and AB-MIL -> 3 (top);
# lr scale = 0.5^(3 - layer). Weight decay 0.05 for matrices only, never for positions or class tokens.
EXPECTED = {
    "mixer.pos_embed": (0.125, 0.0),
    "mixer.cls_token": (0.125, 0.0),
    "mixer.embed.weight": (0.125, 0.05),
    "mixer.embed.bias": (0.125, 0.0),
    "mixer.blocks.0.norm1.weight": (0.25, 0.0),
    "mixer.blocks.0.attn.qkv.weight": (0.25, 0.05),
    "mixer.blocks.0.mlp.fc1_g.weight": (0.25, 0.05),
    "mixer.blocks.1.attn.proj.bias": (0.5, 0.0),
    "mixer.blocks.1.mlp.fc2.weight": (0.5, 0.05),
    "mixer.norm.weight": (1.0, 0.0),
    "mixer.norm.bias": (1.0, 0.0),
    "aggregator.V.weight": (1.0, 0.05),
    "aggregator.h.weight": (1.0, 0.05),
    "aggregator.classifier.bias": (1.0, 0.0),
}


def _settings(model, groups) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for g in groups:
        for p in g["params"]:
            assert names[id(p)] not in seen, names[id(p)]
            seen[names[id(p)]] = (g.get("lr"), g["weight_decay"])
    assert set(seen) == set(names.values())  # every parameter in exactly one group
    return seen


def test_layer_decay_known_answers_for_a_two_block_mixer():
    torch.manual_seed(0)
    model = SlideModel(8, 4, RegionMixer(mixer_config("tiny", in_dim=8, depth=2)), "patch")
    seen = _settings(model, layer_decay_groups(model, 1.0, 0.05, 0.5, model.mixer))
    for name, (lr, wd) in EXPECTED.items():
        assert seen[name][0] == pytest.approx(lr) and seen[name][1] == wd, name
    by_lr = {lr: sum(1 for v in seen.values() if v[0] == pytest.approx(lr)) for lr in (0.125, 0.25, 0.5, 1.0)}
    assert by_lr == {0.125: 4, 0.25: 14, 0.5: 14, 1.0: 9}  # 14 tensors per block; norm (2) + AB-MIL (7) on top


def test_without_a_mixer_every_parameter_trains_at_the_base_lr():
    model = SlideModel(8, 4)
    seen = _settings(model, layer_decay_groups(model, 2e-3, 0.05, 0.5))
    assert {lr for lr, _ in seen.values()} == {2e-3}
    assert seen["aggregator.V.weight"][1] == 0.05 and seen["aggregator.V.bias"][1] == 0.0


def test_every_mixer_parameter_has_a_declared_layer_and_declared_names_exist():
    mixer = RegionMixer(mixer_config("tiny", in_dim=8, depth=3))
    grouped = [id(p) for group in mixer.layer_groups() for p in group]
    assert sorted(grouped) == sorted(id(p) for p in mixer.parameters()) and len(mixer.layer_groups()) == 3 + 2
    pretrainer = MEMPretrainer(mixer_config("tiny", in_dim=8), 0.5)
    names = dict(pretrainer.named_parameters())
    for module in pretrainer.modules():
        for name in getattr(module, "no_weight_decay", lambda: set())():
            assert any(n.endswith(name) for n in names), name


def test_pretraining_decays_matrices_but_not_positions_tokens_norms_or_biases():
    model = MEMPretrainer(mixer_config("tiny", in_dim=8), 0.5, contrastive=True)
    decay, plain = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in plain["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    for name in (
        "mixer.pos_embed",
        "mixer.cls_token",
        "decoder.mask_token",
        "decoder.pos_embed",
        "decoder.norm.weight",
        "mixer.embed.bias",
        "projector.net.0.bias",
    ):
        assert name in undecayed, name
    for name in (
        "mixer.embed.weight",
        "decoder.head.weight",
        "mixer.blocks.0.attn.qkv.weight",
        "projector.net.2.weight",
    ):
        assert name in decayed, name


def test_contrastive_loss_known_answer():
    """Eq. 5 with its denominator over j != i, for three unit vectors and tau = 1, worked by hand:
    similarities row by row [1, 1, 0], [0, 0, 1], [1, 1, 0]; positives on the diagonal 1, 0, 0."""
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z, z_prime = torch.stack([e1, e2, e1]), torch.stack([e1, e1, e2])
    expected = ((math.log(math.e + 1) - 1) + math.log(1 + math.e) + (1 + math.log(2))) / 3
    assert float(contrastive_loss(z, z_prime, tau=1.0)) == pytest.approx(expected, rel=1e-6)
    # lengths do not matter (cosine similarity) and tau divides the similarities: two orthogonal pairs
    assert float(contrastive_loss(torch.stack([3 * e1, e2]), torch.stack([e1, 2 * e2]), tau=0.5)) == pytest.approx(
        -2.0, rel=1e-6
    )


def test_the_global_batch_contrastive_loss_equals_the_local_one_on_one_rank():
    torch.manual_seed(1)
    z, z_prime = torch.randn(5, 7), torch.randn(5, 7)
    local = contrastive_loss(z, z_prime, 0.2)
    assert float(_global_contrastive(z, z_prime, lambda t: (t, 0), 0.2)) == pytest.approx(float(local), rel=1e-6)


def test_the_contrastive_term_trains_the_mixer_through_its_class_tokens():
    torch.manual_seed(0)
    model = MEMPretrainer(mixer_config("tiny", in_dim=8), 0.5, contrastive=True)
    x = torch.randn(4, model.config.seq_len, 8)
    losses = model(x, x + 0.1 * torch.randn_like(x))
    losses["contrastive"].backward()
    assert model.mixer.cls_token.grad.abs().sum() > 0 and model.projector.net[0].weight.grad.abs().sum() > 0
    assert model.decoder.head.weight.grad is None  # the decoder serves the reconstruction term only
