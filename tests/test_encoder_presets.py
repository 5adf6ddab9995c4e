"""Every tile-encoder preset, built offline: the card's parameter count, the declared dimension, weights that survive a
save and reload, and (where a reference implementation installs from PyPI) the same outputs as the reference.

Big models are built on the `meta` device: the full architecture, no memory, no weights, no download."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from mixmag.encoders.convert import CONVERTERS
from mixmag.encoders.model import build_backbone, build_encoder
from mixmag.encoders.names import RENAMED
from mixmag.encoders.registry import get_preset, preset_names

# parameters of each built architecture, exactly (the card's rounded figure is checked against these below)
BUILT_PARAMS = {
    "ctranspath": 27_520_038,
    "gigapath": 1_134_953_984,
    "gpfm": 303_227_904,
    "h0-mini": 85_739_520,
    "hibou_l": 303_230_976,
    "hoptimus0": 1_134_774_272,
    "hoptimus1": 1_134_774_272,
    "kaiko-vitb16": 85_798_656,
    "kaiko-vitb8": 85_807_872,
    "kaiko-vitl14": 304_370_688,
    "kaiko-vits16": 21_665_664,
    "kaiko-vits8": 21_670_272,
    "lunit-vits8": 21_670_272,
    "midnight12k": 1_134_769_664,
    "openmidnight": 1_134_774_272,
    "phikon": 85_798_656,
    "phikon_v2": 303_350_784,
    "resnet50": 8_543_296,
    "uni_v1": 303_350_784,
    "uni_v2": 681_394_176,
    "virchow": 631_229_184,
    "virchow2": 631_233_024,
}
FOUNDATION = sorted(BUILT_PARAMS)
SMALL = [n for n in FOUNDATION if BUILT_PARAMS[n] < 100_000_000]  # built for real, on the CPU
TRIDENT_NAMES = {  # trident/patch_encoder_models/load.py, encoder_registry (commit a91fa84): the ones timm builds
    "uni_v1", "uni_v2", "ctranspath", "phikon", "phikon_v2", "resnet50", "gigapath", "virchow", "virchow2",
    "hoptimus0", "hoptimus1", "h0-mini", "openmidnight", "gpfm", "hibou_l", "kaiko-vitb8", "kaiko-vitb16",
    "kaiko-vits8", "kaiko-vits16", "kaiko-vitl14", "lunit-vits8", "midnight12k",
}  # fmt: skip


def _card_rounding(text: str) -> tuple[float, float]:
    """("303M") -> (303e6, 0.5e6): the card's figure and half a unit of its last digit."""
    m = re.fullmatch(r"(\d+(?:\.(\d+))?)([MB])", text)
    assert m, text
    unit = 1e6 if m.group(3) == "M" else 1e9
    decimals = len(m.group(2) or "")
    return float(m.group(1)) * unit, 0.5 * unit / 10**decimals


def test_at_least_twenty_presets_named_as_trident_names_them():
    assert len(FOUNDATION) >= 20
    assert set(FOUNDATION) <= set(preset_names())
    assert TRIDENT_NAMES == set(FOUNDATION)
    for old, new in RENAMED.items():  # mixmag's earlier names still work
        assert get_preset(old).name == new and old in get_preset(new).aliases


@pytest.mark.parametrize("name", FOUNDATION)
def test_architecture_has_the_cards_parameters_and_dimension(name):
    preset = get_preset(name)
    with torch.device("meta"):
        backbone = build_backbone(preset)
        x = torch.empty(2, 3, preset.transform.size, preset.transform.size)
        out = backbone(x) if preset.output == "pooled" else backbone.forward_features(x)
    n = sum(p.numel() for p in backbone.parameters())
    assert n == BUILT_PARAMS[name]
    card = preset.card
    if card.params is not None:
        stated, half_unit = _card_rounding(card.params)
        if card.params_note:  # a card that rounds its own architecture differently says so, within 0.5 %
            assert abs(n - stated) <= 0.005 * stated
        else:
            assert abs(n - stated) <= half_unit, f"{n:,} is not the card's {card.params}"
    width = out.shape[-1]
    assert width == preset.dim and out.shape[0] == 2
    assert preset.output_dim() == width * (2 if preset.output == "cls+mean" else 1)
    assert preset.hub_id and preset.license
    assert preset.weights_format == "timm" or preset.weights_format in CONVERTERS


def _encode(name: str, weights=None, overrides=None, seed: int = 0) -> tuple[torch.Tensor, object]:
    tiles = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    enc = build_encoder(name, weights=weights, random_init=weights is None, overrides=overrides)
    with torch.inference_mode():
        return enc(tiles), enc


def shallow(name: str) -> dict:
    """The preset's block structure, one block deep per stage: the same code paths at a fraction of the CPU time."""
    return {"ctranspath": {"depths": (1, 1, 1, 1)}, "resnet50": {"layers": [1, 1, 1, 1]}}.get(name, {"depth": 1})


@pytest.mark.parametrize("name", SMALL)
def test_small_presets_embed_and_reload_their_weights(name, tmp_path):
    first, enc = _encode(name, overrides=shallow(name))
    assert first.shape == (2, get_preset(name).output_dim()) and torch.isfinite(first).all()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in enc.backbone.state_dict().items()}, str(path))
    again, loaded = _encode(name, weights=path, overrides=shallow(name))
    assert torch.equal(first, again)
    assert loaded.weights_digest == enc.weights_digest


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """No parameter left at its trivial initial value (zeros, ones), so a wrong mapping cannot hide."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


TRANSFORMERS_REFERENCES = {  # preset: (transformers class, config kwargs, preset overrides), all small, random
    "phikon": (
        "ViTModel",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, layer_norm_eps=1e-12),
        {"embed_dim": 64, "depth": 2, "num_heads": 2},
    ),
    "midnight12k": (
        "Dinov2Model",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14, use_swiglu_ffn=True),
        {"embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 5.5},  # transformers' SwiGLU: 176 hidden
    ),
    "hibou_l": (
        "Dinov2WithRegistersModel",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14, num_register_tokens=4),
        {"embed_dim": 64, "depth": 2, "num_heads": 2},
    ),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMERS_REFERENCES))
def test_transformers_checkpoints_give_the_references_outputs(name, tmp_path):
    """The reference model itself (transformers, small, random), saved as published (transformers 4 names) and as
    transformers 5 holds it, gives the same embedding through the preset to 1e-5."""
    transformers = pytest.importorskip("transformers")
    cls_name, config, overrides = TRANSFORMERS_REFERENCES[name]
    config_cls = getattr(transformers, cls_name.replace("Model", "Config"))
    hf = _perturbed(getattr(transformers, cls_name)(config_cls(image_size=224, **config)))
    hf.save_pretrained(tmp_path / "hub")
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "v5.safetensors"))
    for path in (tmp_path / "hub" / "model.safetensors", tmp_path / "v5.safetensors"):
        got, enc = _encode(name, weights=path, overrides=overrides)
        tiles = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            hidden = hf(pixel_values=enc.transform(tiles)).last_hidden_state
        expected = hidden[:, 0]
        if enc.output == "cls+mean":
            expected = torch.cat([expected, hidden[:, 1 + config.get("num_register_tokens", 0) :].mean(1)], dim=-1)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_resnet50_is_torchvisions_trunk(tmp_path):
    """A torchvision ResNet-50 checkpoint (what timm's resnet50.tv_in1k holds: all four stages and the classifier)
    gives torchvision's own mean of stage 3 through the preset."""
    torchvision = pytest.importorskip("torchvision")
    r = _perturbed(torchvision.models.resnet50())
    save_file({k: v.contiguous() for k, v in r.state_dict().items()}, str(tmp_path / "r50.safetensors"))
    got, enc = _encode("resnet50", weights=tmp_path / "r50.safetensors")
    tiles = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = enc.transform(tiles)
        expected = r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))).mean(dim=(2, 3))
    assert got.shape == (2, 1024)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_ctranspath_checkpoint_layout_of_transpath_loads(tmp_path):
    """TransPath's checkpoint comes from timm 0.5 (each stage ends with its downsampling; attention masks and
    position indices saved as tensors): renamed onto timm's current Swin, it gives the same embedding."""
    first, enc = _encode("ctranspath")
    old = {}
    for k, v in enc.backbone.state_dict().items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        old[k] = v.contiguous()
    old["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    old["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.int64)
    assert "layers.0.downsample.reduction.weight" in old
    torch.save({"model": old}, tmp_path / "ctranspath.pth")
    again, _ = _encode("ctranspath", weights=tmp_path / "ctranspath.pth")
    assert torch.equal(first, again) and first.shape == (2, 768)


def test_dinov2_repository_checkpoint_loads(tmp_path):
    """OpenMidnight is a checkpoint of the DINOv2 repository (registers apart, class token on the position grid,
    SwiGLU as w12/w3): converted by timm's own filter, it gives the same embedding as the timm model it came from."""
    overrides = {"embed_dim": 64, "depth": 1, "num_heads": 2, "mlp_ratio": 4}
    first, enc = _encode("openmidnight", overrides=overrides)
    state = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    cls_pos = torch.randn(1, 1, 64) * 0.1
    dinov2 = {"register_tokens": state.pop("reg_token"), "cls_token": state.pop("cls_token") - cls_pos}
    dinov2["pos_embed"] = torch.cat([cls_pos, state.pop("pos_embed")], dim=1)
    for k, v in state.items():
        dinov2[k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")] = v
    dinov2["mask_token"] = torch.zeros(1, 64)
    save_file(dinov2, str(tmp_path / "teacher.safetensors"))
    again, _ = _encode("openmidnight", weights=tmp_path / "teacher.safetensors", overrides=overrides)
    assert torch.allclose(first, again, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["kaiko-vits16", "kaiko-vits8", "kaiko-vitb16", "kaiko-vitb8", "kaiko-vitl14", "lunit-vits8"]
)
def test_timm_layout_presets_are_timms_own_architecture(name):
    """Presets whose hub weights are timm checkpoints of a timm architecture: the same tensors, names and shapes as
    timm's own model of that name, so the published file loads strictly."""
    import timm

    preset = get_preset(name)
    with torch.device("meta"):
        ours = build_backbone(preset).state_dict()
        reference = timm.create_model(preset.timm_name, pretrained=False, num_classes=0).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}


def test_encoders_list_shows_every_preset_with_its_card(tmp_path):
    from typer.testing import CliRunner

    from mixmag.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["encoders", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in __import__("json").loads(result.output)}
    assert set(FOUNDATION) <= set(rows)
    uni = rows["uni_v1"]
    assert uni["aliases"] == ["uni"] and uni["dim"] == 1024 and uni["parameters"] == "303M"
    assert uni["input_px"] == 224 and uni["trained_um_per_px"] == [0.5] and uni["magnifications_seen"] == "20×"
    assert uni["gated"] is True and uni["license"] and uni["extra"] is None
    assert rows["virchow2"]["magnifications_seen"] == "5×, 10×, 20×, 40×"
    assert rows["virchow"]["dim"] == 2560  # the card's class token + mean patch token
    assert rows["uni_v2"]["magnifications_seen"] == "?"  # the card does not say: not guessed
    table = runner.invoke(app, ["encoders", "list"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "hoptimus0" in table.output and "h-optimus-0" in table.output
    assert "magnifications: what the model saw in training" in table.output


def test_embed_says_once_when_a_20x_encoder_meets_5x_and_10x_tiles(tmp_path):
    import numpy as np
    from conftest import make_tissue_slide
    from typer.testing import CliRunner

    from mixmag.cli import app
    from mixmag.encoders import builders
    from mixmag.encoders.registry import EncoderPreset, InputTransform, ModelCard, register_preset
    from mixmag.slides.sources import SlideSource
    from mixmag.slides.tiling import TilingParams
    from mixmag.stages.tile import tile_slides

    slides = [
        SlideSource(
            make_tissue_slide(tmp_path, f"s{i}.tiff", size=(1800, 1800), seed=i, tissue_mask=np.ones((4, 4), bool)),
            f"s{i}",
        )
        for i in range(2)
    ]
    tile_slides(slides, tmp_path / "plans", TilingParams(region_size=1))
    for name, mpps in (("test-20x-only", (0.5,)), ("test-5x-to-40x", (2.0, 1.0, 0.5, 0.25))):
        register_preset(
            EncoderPreset(
                name=name,
                description="test",
                dim=64,
                transform=InputTransform(224, None, "bilinear"),
                builder=builders.tiny_vit,
                needs_weights=False,
                card=ModelCard(None, mpps),
            ),
            replace=True,
        )
    runner = CliRunner()
    args = ["embed", "--plans", str(tmp_path / "plans"), "--workers", "0", "--device", "cpu"]
    narrow = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--encoder", "test-20x-only"])
    assert narrow.exit_code == 0, narrow.output
    flat = " ".join(narrow.output.split())
    assert flat.count("was trained on 20× tiles only") == 1  # once for the run, not per slide
    assert "5×, 10× tiles (2, 1 µm/px)" in flat and "virchow2" in flat
    wide = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--encoder", "test-5x-to-40x"])
    assert wide.exit_code == 0 and "trained on" not in wide.output


@pytest.mark.parametrize("name", ["ctranspath", "midnight12k", "kaiko-vits16"])
def test_from_hub_offline_says_which_file_to_fetch(name, monkeypatch):
    """--from-hub is real (never reached in tests): offline, it names the repository, the file and where to put it."""
    from mixmag.encoders.model import EncoderWeightsError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preset = get_preset(name)
    with pytest.raises(EncoderWeightsError, match=f"huggingface-cli download {re.escape(preset.hub_id)}") as info:
        build_encoder(name, from_hub=True, overrides=shallow(name))
    if preset.hub_file:
        assert f"--weights weights/{name}/{preset.hub_file}" in str(info.value)
    assert ("--repo-type dataset" in str(info.value)) == (preset.hub_repo_type == "dataset")
