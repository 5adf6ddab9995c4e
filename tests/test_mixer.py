import math

import numpy as np
import pytest
import torch

from mixmag.errors import ConfigError
from mixmag.geometry import level_offsets, region_permutation, sequence_length, token_slots
from mixmag.models.mem import (
    MEMPretrainer,
    contrastive_loss,
    level_weights,
    n_masked,
    random_masking,
    reconstruction_loss,
    restore_order,
)
from mixmag.models.mixer import RegionMixer, mixer_config

S = sequence_length(3, 3)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_masking_hides_floor_s_r_slots_per_sample(ratio):
    m = random_masking(16, S, ratio)
    k = math.floor(S * ratio)
    assert (m.masked.sum(dim=1) == k).all()
    assert m.keep.shape == (16, S - k)
    assert len({tuple(row.tolist()) for row in m.masked}) == 16  # drawn per sample
    for b in range(16):
        assert not m.masked[b, m.keep[b]].any()


def test_restore_order_puts_tokens_back_in_their_slots():
    m = random_masking(4, 20, 0.5)
    x = torch.arange(20.0)[None, :, None].expand(4, -1, 1)
    visible = torch.gather(x, 1, m.keep[..., None])
    full = restore_order(visible, torch.full((1, 1, 1), -1.0), m.restore)
    expected = torch.where(m.masked[..., None], torch.tensor(-1.0), x)
    assert torch.equal(full, expected)


def test_the_mixer_never_sees_a_masked_embedding():
    torch.manual_seed(0)
    model = MEMPretrainer(mixer_config("tiny", in_dim=8), 0.5).eval()
    x = torch.randn(3, S, 8)
    noise = torch.rand(3, S)
    m = random_masking(3, S, 0.5, noise=noise)
    y = x.clone()
    y[m.masked] = torch.randn(int(m.masked.sum()), 8) * 100  # change only hidden embeddings
    with torch.no_grad():
        a = model.mem(x, noise)["encoded"]
        b = model.mem(y, noise)["encoded"]
    assert torch.equal(a, b)


def test_level_weights_equalise_each_magnification():
    w = level_weights(3, 3)
    offsets = level_offsets(3, 3)
    per_level = [w[offsets[i] : offsets[i + 1]].sum().item() for i in range(3)]
    np.testing.assert_allclose(per_level, [S / 3] * 3)
    # in expectation over random masks, each level contributes the same to eq. 2
    torch.manual_seed(1)
    contrib = torch.zeros(3)
    for _ in range(400):
        m = random_masking(1, S, 0.5).masked[0]
        for i in range(3):
            contrib[i] += (w * m)[offsets[i] : offsets[i + 1]].sum()
    np.testing.assert_allclose((contrib / contrib.sum()).numpy(), [1 / 3] * 3, atol=0.02)


def test_reconstruction_loss_is_eq2():
    torch.manual_seed(2)
    pred, x = torch.randn(2, S, 5), torch.randn(2, S, 5)
    m = random_masking(2, S, 0.25)
    w = level_weights(3, 3)
    slow = 0.0
    for b in range(2):
        idx = torch.nonzero(m.masked[b]).ravel()
        slow += -sum(w[i] * torch.nn.functional.cosine_similarity(pred[b, i], x[b, i], dim=0) for i in idx) / len(idx)
    assert reconstruction_loss(pred, x, m.masked, w).item() == pytest.approx(slow.item() / 2, rel=1e-5)


def test_contrastive_loss_is_eq5_with_the_positive_left_out_of_the_denominator():
    torch.manual_seed(3)
    z, zp = torch.randn(6, 7), torch.randn(6, 7)
    tau = 0.2
    slow = 0.0
    for i in range(6):
        sim = lambda a, b: (a @ b / (a.norm() * b.norm())).item()  # noqa: E731
        num = math.exp(sim(z[i], zp[i]) / tau)
        den = sum(math.exp(sim(z[i], zp[j]) / tau) for j in range(6) if j != i)
        slow += -math.log(num / den)
    assert contrastive_loss(z, zp, tau).item() == pytest.approx(slow / 6, rel=1e-5)


@pytest.mark.parametrize("s, r, k", [(100, 0.29, 29), (100, 0.57, 57), (189, 0.5, 94), (189, 0.75, 141), (10, 0.3, 3)])
def test_the_number_of_hidden_slots_is_floor_s_r_in_exact_arithmetic(s, r, k):
    # in floats 100 * 0.29 = 28.999999999999996 and 100 * 0.57 = 56.99999999999999
    assert n_masked(s, r) == k
    assert int(random_masking(2, s, r).masked.sum(dim=1)[0]) == k


def test_symmetric_contrastive_is_infonce_both_ways_with_the_positive_in_the_denominator():
    torch.manual_seed(3)
    z, zp = torch.randn(6, 7), torch.randn(6, 7)
    tau = 0.2
    slow = 0.0
    for a, b in ((z, zp), (zp, z)):
        for i in range(6):
            sims = [(a[i] @ b[j] / (a[i].norm() * b[j].norm())).item() / tau for j in range(6)]
            slow += -math.log(math.exp(sims[i]) / sum(math.exp(v) for v in sims))
    assert contrastive_loss(z, zp, tau, "symmetric").item() == pytest.approx(slow / 12, rel=1e-5)
    assert contrastive_loss(z, zp, tau, "symmetric").item() != pytest.approx(
        contrastive_loss(z, zp, tau).item(), rel=1e-3
    )


@pytest.mark.parametrize("reduction, factor", [("mean", 0.5), ("sum", 1.0)])
def test_cmem_mem_term_is_the_mean_or_the_sum_of_the_two_crops(reduction, factor):
    torch.manual_seed(6)
    model = MEMPretrainer(mixer_config("tiny", in_dim=8), 0.5, contrastive=True, mem_reduction=reduction).eval()
    x, xp = torch.randn(3, S, 8), torch.randn(3, S, 8)
    torch.manual_seed(7)
    with torch.no_grad():
        losses = model(x, xp)
        torch.manual_seed(7)
        first, second = model.mem(x)["loss"], model.mem(xp)["loss"]
    assert losses["mem"].item() == pytest.approx(factor * (first + second).item(), rel=1e-5)
    with pytest.raises(ConfigError):
        MEMPretrainer(mixer_config("tiny", in_dim=8), 0.5, contrastive=True, mem_reduction="max")
    with pytest.raises(ConfigError):
        MEMPretrainer(mixer_config("tiny", in_dim=8), 0.5, contrastive=True, contrastive_form="other")


def test_padded_or_reordered_batches_do_not_change_a_sample():
    torch.manual_seed(4)
    model = MEMPretrainer(mixer_config("tiny", in_dim=8), 0.5).eval()
    x = torch.randn(5, S, 8)
    noise = torch.rand(5, S)
    with torch.no_grad():
        full = model.mem(x, noise)["pred"]
        order = torch.tensor([3, 0, 4, 1, 2])
        shuffled = model.mem(x[order], noise[order])["pred"]
        padded = model.mem(torch.cat([x[:2], torch.zeros(3, S, 8)]), torch.cat([noise[:2], torch.rand(3, S)]))["pred"]
        contextual, compressed = model.mixer(x)
        contextual2, compressed2 = model.mixer(x[order])
    torch.testing.assert_close(shuffled, full[order], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[:2], full[:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(contextual2, contextual[order], rtol=1e-5, atol=1e-5)
    assert contextual.shape == (5, S, 64) and compressed.shape == (5, 4 * 64)


def _slot_positions(t: int, n_levels: int) -> np.ndarray:
    """Centre (x, y) in um of every slot's tile, relative to the region centre (cell = 1.0)."""
    out = []
    for level, r, c in token_slots(t, n_levels):
        size = 1.0 / 2**level
        out.append(((c + 0.5) * size - t / 2, (r + 0.5) * size - t / 2))
    return np.array(out)


@pytest.mark.parametrize("rotations", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_rotation_and_flip_move_every_level_together(rotations, flip):
    t, L = 3, 3
    nominal = _slot_positions(t, L)
    tokens = nominal.copy()  # embeddings that encode their own position
    moved = tokens[region_permutation(t, L, rotations, flip)]
    # an isometry: distances between the tiles carried by any two slots equal the slots' distances
    d_new = np.linalg.norm(nominal[:, None] - nominal[None], axis=-1)
    d_old = np.linalg.norm(moved[:, None] - moved[None], axis=-1)
    np.testing.assert_allclose(d_new, d_old, atol=1e-9)
    # every 20x and 10x tile still lies inside the 5x tile that now sits over it
    slots = token_slots(t, L)
    coarse = {(r, c): moved[j] for j, (lvl, r, c) in enumerate(slots) if lvl == 0}
    for j, (lvl, r, c) in enumerate(slots):
        if lvl:
            parent = coarse[(r // 2**lvl, c // 2**lvl)]
            assert np.all(np.abs(moved[j] - parent) < 0.5)
    if rotations == 0 and not flip:
        np.testing.assert_array_equal(moved, nominal)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match=r"mask ratio r must be in \(0, 1\)"):
        MEMPretrainer(mixer_config("tiny", in_dim=8), 1.0)
    with pytest.raises(ConfigError, match="unknown mixer preset 'huge'.*paper"):
        mixer_config("huge")
    mixer = RegionMixer(mixer_config("tiny", in_dim=8))
    with pytest.raises(ConfigError, match="dimension 12, the mixer expects 8"):
        mixer(torch.randn(1, S, 12))


def test_paper_preset_shapes():
    with torch.device("meta"):
        model = MEMPretrainer(mixer_config("paper"), 0.5, contrastive=True)
        x = torch.empty(2, S, 1280)
        contextual, compressed = model.mixer(x)
    assert contextual.shape == (2, 189, 1536) and compressed.shape == (2, 4 * 1536)
    assert model.mixer.pos_embed.shape == (1, 189, 1536)
    assert model.projector.net[0].in_features == 4 * 1536 and model.projector.net[-1].out_features == 256
    assert len(model.decoder.blocks) == 2 and model.decoder.head.out_features == 1280


def test_old_checkpoint_with_encoder_keys_loads_into_mixer():
    """Checkpoints from before the rename stored the mixer under `encoder.`; they still load, strictly."""
    torch.manual_seed(0)
    source = MEMPretrainer(mixer_config("tiny", in_dim=8), 0.5)
    state = source.state_dict()
    old = {("encoder." + k[len("mixer.") :] if k.startswith("mixer.") else k): v for k, v in state.items()}
    assert any(k.startswith("encoder.") for k in old) and not any(k.startswith("mixer.") for k in old)
    target = MEMPretrainer(mixer_config("tiny", in_dim=8), 0.5)
    target.load_state_dict(old, strict=True)
    assert torch.equal(target.mixer.pos_embed, source.mixer.pos_embed)
    wrapped = torch.nn.Sequential(MEMPretrainer(mixer_config("tiny", in_dim=8), 0.5))  # prefixed, as under DDP
    wrapped.load_state_dict({"0." + k: v for k, v in old.items()}, strict=True)
    assert torch.equal(wrapped[0].mixer.pos_embed, source.mixer.pos_embed)
