import pytest
import torch

from mixmag.models.abmil import GatedABMIL
from mixmag.models.mixer import RegionMixer, mixer_config
from mixmag.models.slide import SlideModel


def test_padded_batch_equals_each_bag_alone_and_attention_is_a_distribution():
    torch.manual_seed(0)
    model = GatedABMIL(8, hidden=16)
    bags = [torch.randn(n, 8) for n in (5, 2, 9)]
    padded = torch.zeros(3, 9, 8)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, b in enumerate(bags):
        padded[i, : len(b)] = b
        padded[i, len(b) :] = 1e3  # garbage in the padding must not matter
        mask[i, : len(b)] = True
    logits, attention = model(padded, mask)
    for i, b in enumerate(bags):
        alone, att = model(b[None])
        torch.testing.assert_close(logits[i], alone[0])
        torch.testing.assert_close(attention[i, : len(b)], att[0])
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(3))
    assert (attention[~mask] == 0).all()


def test_permuting_a_bag_leaves_the_output_unchanged():
    torch.manual_seed(1)
    model = GatedABMIL(8)
    bag = torch.randn(1, 12, 8)
    perm = torch.randperm(12)
    a, att_a = model(bag)
    b, att_b = model(bag[:, perm])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(att_a[0, perm], att_b[0])


@pytest.mark.parametrize("output", ["patch", "cls"])
def test_slide_model_with_a_mixer_ignores_padding_regions(output):
    torch.manual_seed(2)
    mixer = RegionMixer(mixer_config("tiny", in_dim=8))
    model = SlideModel(8, 16, mixer, output).eval()
    regions = torch.randn(2, 3, 189, 8)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    regions[1, 1:] = 1e3
    logits, attention = model(regions, mask)
    alone, _ = model(regions[1:, :1], mask[1:, :1])
    torch.testing.assert_close(logits[1], alone[0], rtol=1e-5, atol=1e-5)
    assert attention.shape == ((2, 3 * 189) if output == "patch" else (2, 3))


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_padding_cannot_reach_the_output(garbage):
    torch.manual_seed(5)
    model = GatedABMIL(8)
    bag = torch.randn(4, 8)
    padded = torch.full((1, 7, 8), garbage)
    padded[0, :4] = bag
    mask = torch.zeros(1, 7, dtype=torch.bool)
    mask[0, :4] = True
    logits, attention = model(padded, mask)
    alone, att = model(bag[None])
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, alone)
    torch.testing.assert_close(attention[0, :4], att[0])


@pytest.mark.parametrize("mixer", [None, "patch", "cls"])
def test_instance_contributions_sum_to_the_logit_minus_the_bias(mixer):
    """a_i (w . h_i) over AB-MIL's instances adds up to the slide logit less the classifier's bias, padding giving 0."""
    torch.manual_seed(3)
    if mixer is None:
        model, bags = SlideModel(8), torch.randn(2, 7, 8)
        mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    else:
        model = SlideModel(8, mixer=RegionMixer(mixer_config("tiny", in_dim=8)), output=mixer)
        bags, mask = torch.randn(2, 3, 189, 8), torch.tensor([[True] * 3, [True, True, False]])
    logits, attention, contribution = model.eval().contributions(bags, mask)
    torch.testing.assert_close(model(bags, mask)[0], logits)
    assert contribution.shape == attention.shape and (contribution[attention == 0] == 0).all()
    bias = model.aggregator.classifier.bias
    torch.testing.assert_close(contribution.sum(dim=1), logits - bias, atol=1e-5, rtol=0)
