"""Stored float16 bags go through AB-MIL and the mixer's input layer without a float32 copy: the results and the
gradients are those of the float32 computation on the same values."""

import pytest
import torch
import torch.nn.functional as F

from mixmag.data.bags import pad_bags
from mixmag.models import projection, slide
from mixmag.models.abmil import GatedABMIL
from mixmag.models.mixer import RegionMixer, mixer_config
from mixmag.models.projection import stored_linear
from mixmag.models.slide import SlideModel


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bias", [True, False])
def test_stored_linear_is_the_float32_linear_of_the_stored_values(monkeypatch, bias):
    monkeypatch.setattr(projection, "BLOCK_ROWS", 64)  # several blocks, the last one short
    monkeypatch.setattr(projection, "SMALL_INPUT", 0)
    torch.manual_seed(0)
    x = torch.randn(3, 150, 24).half()
    layer = torch.nn.Linear(24, 5, bias=bias)
    target = torch.randn(3, 150, 5)
    out = stored_linear(x, layer.weight, layer.bias)
    (out * target).sum().backward()
    got = _grads(layer)
    layer.zero_grad()
    reference = F.linear(x.float(), layer.weight, layer.bias)
    (reference * target).sum().backward()
    assert out.dtype == torch.float32 and out.shape == (3, 150, 5)
    torch.testing.assert_close(out, reference)
    for name, grad in _grads(layer).items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-5)


def test_stored_linear_leaves_inputs_that_need_a_gradient_to_f_linear():
    x = torch.randn(10, 6, requires_grad=True)
    layer = torch.nn.Linear(6, 3)
    stored_linear(x, layer.weight, layer.bias).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, layer.weight.sum(0).expand(10, 6))


@pytest.mark.parametrize("pad_up_to", [0, 1 << 30])  # real-size bags projected one by one, small ones padded first
def test_abmil_on_float16_bags_is_abmil_on_their_float32_copies(monkeypatch, pad_up_to):
    monkeypatch.setattr(slide, "PAD_UP_TO_BYTES", pad_up_to)
    monkeypatch.setattr(projection, "SMALL_INPUT", 0)
    monkeypatch.setattr(projection, "BLOCK_ROWS", 64)
    torch.manual_seed(1)
    model = SlideModel(32, hidden=16)
    bags = [torch.randn(n, 32).half() for n in (40, 7, 300)]
    labels = torch.tensor([1.0, 0.0, 1.0])
    logits = model.bag_logits(bags)  # each bag projected as it is: no padded copy
    F.binary_cross_entropy_with_logits(logits, labels).backward()
    got = _grads(model)
    model.zero_grad()
    padded, mask = pad_bags(bags, torch.float32)
    reference, attention = model(padded, mask)
    F.binary_cross_entropy_with_logits(reference, labels).backward()
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(attention.sum(1), torch.ones(3))


def test_abmil_logit_is_the_classifier_of_the_attention_pooled_bag():
    """w . sum_i alpha_i z_i + b, eq. 7's slide embedding classified, however the sum is arranged."""
    torch.manual_seed(2)
    model = GatedABMIL(12, hidden=4)
    z = torch.randn(2, 30, 12)
    logit, alpha = model(z)
    pooled = torch.einsum("bn,bnd->bd", alpha, z)
    torch.testing.assert_close(logit, model.classifier(pooled).squeeze(-1))


def test_a_mixer_reads_float16_regions_as_their_float32_copies():
    torch.manual_seed(3)
    mixer = RegionMixer(mixer_config("tiny", in_dim=16, t=1, n_levels=2))
    model = SlideModel(16, hidden=8, mixer=mixer).eval()
    regions = [torch.randn(n, 5, 16).half() for n in (3, 1)]
    half = model.bag_logits(regions)
    padded, mask = pad_bags(regions, torch.float32)
    torch.testing.assert_close(half, model(padded, mask)[0], rtol=1e-5, atol=1e-5)
