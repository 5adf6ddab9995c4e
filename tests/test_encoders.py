from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mixmag.encoders.model import DeviceTransform, EncoderWeightsError, build_backbone, build_encoder
from mixmag.encoders.registry import EncoderPreset, InputTransform, get_preset, preset_names, register_preset
from mixmag.errors import ConfigError

# Published sizes (millions of parameters) as a check that each preset builds the real architecture.
FOUNDATION = {
    "virchow2": (1280, 631),
    "uni": (1024, 303),
    "uni2-h": (1536, 681),
    "h-optimus-0": (1536, 1134),
    "h-optimus-1": (1536, 1134),
    "prov-gigapath": (1536, 1134),
    "phikon-v2": (1024, 303),
}


@pytest.mark.parametrize("name", sorted(FOUNDATION))
def test_foundation_presets_build_their_architecture(name):
    preset = get_preset(name)
    dim, millions = FOUNDATION[name]
    with torch.device("meta"):  # the full architecture, without allocating or downloading weights
        backbone = build_backbone(preset)
        tokens = backbone.forward_features(torch.empty(2, 3, 224, 224))
    assert tokens.shape[0] == 2 and tokens.shape[-1] == dim == preset.dim
    assert sum(p.numel() for p in backbone.parameters()) / 1e6 == pytest.approx(millions, rel=0.01)
    assert preset.transform.size == 224


def test_virchow2_output_modes_and_registers():
    preset = get_preset("virchow2")
    assert preset.output_dim("cls") == 1280 and preset.output_dim("cls+mean") == 2560
    with torch.device("meta"):
        backbone = build_backbone(preset)
    assert backbone.num_prefix_tokens == 5  # class token + 4 registers, skipped by cls+mean


def test_device_transform_normalises_and_resizes():
    tiles = torch.full((2, 224, 224, 3), 128, dtype=torch.uint8)
    out = DeviceTransform(get_preset("virchow2").transform)(tiles)
    assert out.shape == (2, 3, 224, 224)
    expected = (128 / 255 - 0.485) / 0.229
    assert out[0, 0, 100, 100].item() == pytest.approx(expected, rel=1e-5)
    giga = DeviceTransform(get_preset("prov-gigapath").transform)(tiles)
    assert giga.shape == (2, 3, 224, 224)  # resized to 256, centre-cropped to 224
    assert get_preset("h-optimus-0").transform.mean == (0.707223, 0.578729, 0.703617)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_saved_then_loaded_checkpoint_gives_identical_embeddings(tmp_path, suffix):
    overrides = {"depth": 1}  # the Virchow2 block structure, one block deep
    torch.manual_seed(1)
    original = build_encoder("virchow2", random_init=True, overrides=overrides)
    path = tmp_path / f"v2{suffix}"
    state = original.backbone.state_dict()
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    loaded = build_encoder("virchow2", weights=path, overrides=overrides)
    tiles = torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(original(tiles), loaded(tiles))
    assert loaded.weights_digest == original.weights_digest
    assert original(tiles).shape == (3, 1280)


def test_checkpoint_that_does_not_fit_is_an_error(tmp_path):
    overrides = {"depth": 1}
    enc = build_encoder("virchow2", random_init=True, overrides=overrides)
    state = enc.backbone.state_dict()
    state.pop("blocks.0.mlp.fc1.weight")
    state["head.extra"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(EncoderWeightsError, match="1 missing keys.*blocks.0.mlp.fc1.weight.*1 unexpected keys"):
        build_encoder("virchow2", weights=path, overrides=overrides)
    wrong_depth = tmp_path / "deep.pt"
    torch.save(build_encoder("virchow2", random_init=True, overrides={"depth": 2}).backbone.state_dict(), wrong_depth)
    with pytest.raises(EncoderWeightsError, match="does not fit"):
        build_encoder("virchow2", weights=wrong_depth, overrides=overrides)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(
        {"state_dict": {"w": torch.zeros(1)}, "extra": Path("x")}, path
    )  # arbitrary classes need unpickling code
    with pytest.raises(EncoderWeightsError, match="could not read weights"):
        build_encoder("tiny-vit", weights=path)


def test_missing_weights_and_unknown_presets_say_what_to_do(monkeypatch):
    with pytest.raises(EncoderWeightsError, match="--weights PATH"):
        build_encoder("uni")
    with pytest.raises(ConfigError, match="known presets: .*virchow2"):
        build_encoder("virchow3")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderWeightsError, match="huggingface-cli download paige-ai/Virchow2.*--weights"):
        build_encoder("virchow2", from_hub=True, overrides={"depth": 1})
    with pytest.raises(EncoderWeightsError, match="huggingface-cli download owkin/phikon-v2.*--weights"):
        build_encoder(
            "phikon-v2", from_hub=True, overrides={"depth": 1}
        )  # a transformers repo: fetched, then converted


def test_built_in_encoders_are_deterministic():
    tiles = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for name in ("stats", "tiny-vit"):
        a, b = build_encoder(name), build_encoder(name)
        assert a.weights_digest == b.weights_digest
        with torch.inference_mode():
            assert torch.equal(a(tiles), b(tiles))
            assert a(tiles).shape == (2, get_preset(name).dim)


def test_a_user_registers_a_model_in_a_few_lines():
    class MeanColour(nn.Module):
        num_prefix_tokens = 1

        def forward_features(self, x):
            return x.mean(dim=(2, 3))[:, None, :]

    register_preset(
        EncoderPreset(
            name="mean-colour",
            description="test",
            dim=3,
            builder=MeanColour,
            needs_weights=False,
            transform=InputTransform(mean=(0, 0, 0), std=(1, 1, 1)),
        ),
        replace=True,
    )
    assert "mean-colour" in preset_names()
    enc = build_encoder("mean-colour")
    tiles = torch.full((1, 224, 224, 3), 51, dtype=torch.uint8)
    np.testing.assert_allclose(enc(tiles).numpy(), [[0.2, 0.2, 0.2]], rtol=1e-6)
    with pytest.raises(ConfigError, match="already exists"):
        register_preset(EncoderPreset(name="mean-colour", description="x", dim=3, builder=MeanColour))


def test_phikon_v2_transformers_checkpoints_run_as_timm_vit(tmp_path):
    """A real transformers Dinov2Model (small, random) saved both ways gives the same CLS through the preset."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    config = transformers.Dinov2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16, image_size=224, layerscale_value=0.3
    )
    torch.manual_seed(0)
    hf = transformers.Dinov2Model(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # no parameter left at its trivial init
    hf.save_pretrained(tmp_path / "hub")  # the layout published on the hub (attention.attention.query, ...)
    save_file(
        {k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "in_memory.safetensors"
    )  # transformers 5 names
    x = torch.rand(2, 224, 224, 3).mul(255).to(torch.uint8)
    small = {"embed_dim": 64, "depth": 2, "num_heads": 2}
    for path in (tmp_path / "hub" / "model.safetensors", tmp_path / "in_memory.safetensors"):
        encoder = build_encoder("phikon-v2", weights=path, overrides=small)
        with torch.no_grad():
            expected = hf(pixel_values=encoder.transform(x)).last_hidden_state[:, 0]
            got = encoder(x)
        assert got.shape == (2, 64)
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    broken = {k: v.contiguous() for k, v in hf.state_dict().items() if "q_proj" not in k}
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(EncoderWeightsError, match="lacks some of query"):
        build_encoder("phikon-v2", weights=tmp_path / "broken.safetensors", overrides=small)
