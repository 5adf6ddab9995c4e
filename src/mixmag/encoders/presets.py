"""The tile encoders pathology groups run, named as TRIDENT's `encoder_factory` names them (mahmoodlab/TRIDENT,
trident/patch_encoder_models/load.py, read at commit a91fa84), each built offline from timm parts.

Architectures, input transforms and output tokens follow TRIDENT's loaders (which load the published weights strictly
into them) and the model cards; mixmag's earlier names are kept as aliases. Facts not stated by a card are left
unknown ("?") rather than guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from . import builders
from .spec import IMAGENET_MEAN, IMAGENET_STD, EncoderPreset, InputTransform, ModelCard

HOPTIMUS_MEAN, HOPTIMUS_STD = (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)
HIBOU_MEAN, HIBOU_STD = (0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816)
KAIKO_MEAN, KAIKO_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
LUNIT_MEAN, LUNIT_STD = (0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464)
TWENTY_X = (0.5,)
FIVE_TO_FORTY_X = (2.0, 1.0, 0.5, 0.25)
VIRCHOW_NOTE = (
    "631.2M built: the published weights load strictly into it (the card's own timm code); the card rounds up"
)
UNCHECKED = "? (read the card)"
NON_COMMERCIAL = "CC-BY-NC-ND-4.0"


def _swiglu(**extra) -> Callable[[], dict]:
    def kwargs() -> dict:
        from timm.layers import SwiGLUPacked

        return dict(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, **extra)

    return kwargs


def _plain(**extra) -> Callable[[], dict]:
    return lambda: dict(extra)


def _hf_vit_kwargs() -> dict:
    """transformers' ViT normalises with eps 1e-12 (timm: 1e-6)."""
    return dict(img_size=224, dynamic_img_size=True, norm_layer=partial(nn.LayerNorm, eps=1e-12))


def _t(size: int = 224, interpolation: str = "bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=None):
    return InputTransform(size, resize, interpolation, tuple(mean), tuple(std))


def _vit_presets() -> list[EncoderPreset]:
    """Transformer encoders in timm's VisionTransformer."""
    return [
        EncoderPreset(
            name="uni_v1",
            aliases=("uni",),
            description="MahmoodLab UNI ViT-L/16 (DINOv2 on Mass-100K)",
            dim=1024,
            transform=_t(224, "bilinear"),
            timm_name="vit_large_patch16_224",
            timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=True),
            hub_id="MahmoodLab/UNI",
            license=NON_COMMERCIAL,
            card=ModelCard("303M", TWENTY_X, gated=True),
        ),
        EncoderPreset(
            name="uni_v2",
            aliases=("uni2-h",),
            description="MahmoodLab UNI2-h ViT-H/14, 8 registers, SwiGLU",
            dim=1536,
            transform=_t(224, "bilinear"),
            timm_name="vit_giant_patch14_224",
            timm_kwargs=_swiglu(
                img_size=224,
                patch_size=14,
                depth=24,
                num_heads=24,
                init_values=1e-5,
                embed_dim=1536,
                mlp_ratio=2.66667 * 2,
                no_embed_class=True,
                reg_tokens=8,
                dynamic_img_size=True,
            ),
            hub_id="MahmoodLab/UNI2-h",
            license=NON_COMMERCIAL,
            card=ModelCard("681M", None, gated=True),
        ),
        EncoderPreset(
            name="phikon",
            description="Owkin Phikon ViT-B/16 (iBOT on TCGA); transformers ViT checkpoint, run as timm ViT",
            dim=768,
            transform=_t(224, "bilinear"),
            timm_name="vit_base_patch16_224",
            timm_kwargs=_hf_vit_kwargs,
            hub_id="owkin/phikon",
            weights_format="hf-vit",
            hub_file="pytorch_model.bin",
            license="Owkin non-commercial",
            card=ModelCard("86M", TWENTY_X, gated=False),
        ),
        EncoderPreset(
            name="phikon_v2",
            aliases=("phikon-v2",),
            description="Owkin Phikon-v2 ViT-L/16 (DINOv2, no registers); transformers checkpoint, run as timm ViT",
            dim=1024,
            transform=_t(224, "bicubic"),
            timm_name="vit_large_patch16_224",
            timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=True),
            hub_id="owkin/phikon-v2",
            weights_format="hf-dinov2",
            hub_file="model.safetensors",
            license="Owkin non-commercial",
            card=ModelCard("303M", TWENTY_X, gated=False),
        ),
        EncoderPreset(
            name="gigapath",
            aliases=("prov-gigapath",),
            description="Prov-GigaPath tile encoder ViT-g/16 (DINOv2)",
            dim=1536,
            transform=_t(224, "bicubic", resize=256),
            timm_name="vit_giant_patch14_dinov2",
            timm_kwargs=_plain(
                img_size=224,
                in_chans=3,
                patch_size=16,
                embed_dim=1536,
                depth=40,
                num_heads=24,
                init_values=1e-5,
                mlp_ratio=5.33334,
            ),
            hub_id="prov-gigapath/prov-gigapath",
            license="Apache-2.0, research use",
            card=ModelCard("1.13B", TWENTY_X, gated=True),
        ),
        EncoderPreset(
            name="virchow",
            description="Paige Virchow ViT-H/14, SwiGLU; the card's embedding is the class token + mean patch token",
            dim=1280,
            transform=_t(224, "bicubic"),
            output="cls+mean",
            timm_name="vit_huge_patch14_224",
            timm_kwargs=_swiglu(img_size=224, init_values=1e-5, mlp_ratio=5.3375, dynamic_img_size=True),
            hub_id="paige-ai/Virchow",
            license="Apache-2.0 + non-commercial terms",
            card=ModelCard("632M", TWENTY_X, gated=True, tokens="cls+mean", params_note=VIRCHOW_NOTE),
        ),
        EncoderPreset(
            name="virchow2",
            description="Paige Virchow2 ViT-H/14, 4 registers, SwiGLU; trained on 5x-40x tiles (the paper's encoder)",
            dim=1280,
            transform=_t(224, "bicubic"),
            output="cls",
            timm_name="vit_huge_patch14_224",
            timm_kwargs=_swiglu(
                img_size=224,
                init_values=1e-5,
                mlp_ratio=5.3375,
                reg_tokens=4,
                no_embed_class=True,
                dynamic_img_size=True,
            ),
            hub_id="paige-ai/Virchow2",
            license="CC-BY-NC-ND-4.0",
            card=ModelCard(
                "632M", FIVE_TO_FORTY_X, gated=True, tokens="cls+mean (--output cls+mean)", params_note=VIRCHOW_NOTE
            ),
        ),
        EncoderPreset(
            name="hoptimus0",
            aliases=("h-optimus-0",),
            description="Bioptimus H-optimus-0 ViT-g/14, 4 registers",
            dim=1536,
            transform=_t(224, "bicubic", HOPTIMUS_MEAN, HOPTIMUS_STD),
            timm_name="vit_giant_patch14_reg4_dinov2",
            timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=False),
            hub_id="bioptimus/H-optimus-0",
            license="Apache-2.0",
            card=ModelCard("1.1B", TWENTY_X, gated=True),
        ),
        EncoderPreset(
            name="hoptimus1",
            aliases=("h-optimus-1",),
            description="Bioptimus H-optimus-1 ViT-g/14, 4 registers",
            dim=1536,
            transform=_t(224, "bicubic", HOPTIMUS_MEAN, HOPTIMUS_STD),
            timm_name="vit_giant_patch14_reg4_dinov2",
            timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=False),
            hub_id="bioptimus/H-optimus-1",
            license="non-commercial",
            card=ModelCard("1.1B", TWENTY_X, gated=True),
        ),
        EncoderPreset(
            name="h0-mini",
            description="Bioptimus H0-mini ViT-B/14, 4 registers, SwiGLU (distilled from H-optimus-0)",
            dim=768,
            transform=_t(224, "bicubic", HOPTIMUS_MEAN, HOPTIMUS_STD),
            timm_name="vit_base_patch14_reg4_dinov2",
            timm_kwargs=_swiglu(img_size=224, init_values=1e-5, mlp_ratio=5.33334, dynamic_img_size=True),
            hub_id="bioptimus/H0-mini",
            license="non-commercial",
            card=ModelCard("86M", TWENTY_X, gated=True, tokens="cls (or cls+mean)"),
        ),
        EncoderPreset(
            name="gpfm",
            description="GPFM ViT-L/14 (DINOv2 layout, distilled from several pathology models)",
            dim=1024,
            transform=_t(224, "bicubic"),
            timm_name="vit_large_patch14_dinov2",
            timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=True),
            hub_id="majiabo/GPFM",
            weights_format="timm",
            hub_file="GPFM.pth",
            license=UNCHECKED,
            card=ModelCard(None),
        ),
        EncoderPreset(
            name="hibou_l",
            description="HistAI Hibou-L ViT-L/14, 4 registers (DINOv2)",
            dim=1024,
            transform=_t(224, "bicubic", HIBOU_MEAN, HIBOU_STD),
            timm_name="vit_large_patch14_reg4_dinov2",
            timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=True),
            hub_id="histai/hibou-L",
            weights_format="hf-dinov2",
            hub_file="model.safetensors",
            license="Apache-2.0",
            card=ModelCard(None, None),
        ),
        EncoderPreset(
            name="midnight12k",
            description="kaiko.ai Midnight-12k ViT-g/14 (DINOv2 on TCGA); transformers checkpoint, run as timm ViT",
            dim=1536,
            transform=_t(224, "bilinear", KAIKO_MEAN, KAIKO_STD),
            output="cls+mean",
            timm_name="vit_giant_patch14_dinov2",
            timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=True),
            hub_id="kaiko-ai/midnight",
            weights_format="hf-dinov2",
            hub_file="model.safetensors",
            license="MIT",
            card=ModelCard("1.1B", FIVE_TO_FORTY_X, gated=False, tokens="cls+mean"),
        ),
        EncoderPreset(
            name="openmidnight",
            description="SophontAI OpenMidnight ViT-g/14, 4 registers (DINOv2 checkpoint layout)",
            dim=1536,
            transform=_t(224, "bilinear"),
            timm_name="vit_giant_patch14_reg4_dinov2",
            timm_kwargs=_plain(img_size=224, init_values=1e-5, dynamic_img_size=True),
            hub_id="SophontAI/OpenMidnight",
            weights_format="dinov2",
            hub_file="teacher_checkpoint_load.pt",
            license=UNCHECKED,
            card=ModelCard("1.1B", source="a DINOv2 ViT-g/14 with registers"),
        ),
        EncoderPreset(
            name="lunit-vits8",
            description="Lunit ViT-S/8 (DINO on 33M tiles)",
            dim=384,
            transform=_t(224, "bicubic", LUNIT_MEAN, LUNIT_STD),
            timm_name="vit_small_patch8_224",
            timm_kwargs=_plain(img_size=224, dynamic_img_size=True),
            hub_id="1aurent/vit_small_patch8_224.lunit_dino",
            license="Lunit non-commercial",
            card=ModelCard("22M", (0.5, 0.25), gated=False, source="Kang et al., CVPR 2023: 20x and 40x tiles"),
        ),
        *_kaiko_presets(),
    ]


def _kaiko_presets() -> list[EncoderPreset]:
    """kaiko.ai's five ViTs (Aben et al. 2024, TCGA at 5x-40x), published in timm layout by 1aurent."""
    sizes = {  # name: (timm name, dim, card params, image size the backbone is built at)
        "kaiko-vits16": ("vit_small_patch16_224", 384, "22M", 224),
        "kaiko-vits8": ("vit_small_patch8_224", 384, "22M", 224),
        "kaiko-vitb16": ("vit_base_patch16_224", 768, "86M", 224),
        "kaiko-vitb8": ("vit_base_patch8_224", 768, "86M", 224),
        "kaiko-vitl14": ("vit_large_patch14_reg4_dinov2", 1024, "304M", 518),
    }
    return [
        EncoderPreset(
            name=name,
            description=f"kaiko.ai {name.removeprefix('kaiko-').upper()} (DINO/DINOv2 on TCGA); timm layout",
            dim=dim,
            transform=_t(224, "bilinear", KAIKO_MEAN, KAIKO_STD),
            timm_name=timm_name,
            timm_kwargs=_plain(img_size=img, dynamic_img_size=True),
            hub_id=f"1aurent/{timm_name}.kaiko_ai_towards_large_pathology_fms",
            license=UNCHECKED,
            card=ModelCard(params, FIVE_TO_FORTY_X, gated=False, source="Aben et al. 2024: TCGA at 5x, 10x, 20x, 40x"),
        )
        for name, (timm_name, dim, params, img) in sizes.items()
    ]


def _other_presets() -> list[EncoderPreset]:
    """Convolutional and Swin encoders, and mixmag's built-ins."""
    return [
        EncoderPreset(
            name="ctranspath",
            description="CTransPath Swin-T/4 with a convolutional stem; mean of the last stage's tokens",
            dim=768,
            transform=_t(224, "bilinear"),
            output="pooled",
            builder=builders.ctranspath,
            hub_id="MahmoodLab/hest-bench",
            hub_repo_type="dataset",
            hub_file="fm_v1/ctranspath/CHIEF_CTransPath.pth",
            weights_format="ctranspath",
            license="GPL-3.0",
            card=ModelCard("28M", None, gated=False),
        ),
        EncoderPreset(
            name="resnet50",
            description="ImageNet ResNet-50 to its third stage, average-pooled (CLAM's and TRIDENT's baseline)",
            dim=1024,
            transform=_t(224, "bilinear"),
            output="pooled",
            builder=builders.resnet50_trunk,
            hub_id="timm/resnet50.tv_in1k",
            hub_file="model.safetensors",
            weights_format="resnet-trunk",
            license="BSD-3-Clause",
            card=ModelCard(
                "8.5M", (), gated=False, source="ResNet-50 is 25.6M; mixmag, CLAM and TRIDENT keep 3 stages"
            ),
        ),
        EncoderPreset(
            name="tiny-vit",
            description="built-in: 2-block ViT (dim 64), random init with a fixed seed; for tests and CPU runs",
            dim=64,
            transform=_t(224, "bilinear"),
            builder=builders.tiny_vit,
            needs_weights=False,
            license="built-in",
        ),
        EncoderPreset(
            name="stats",
            description="built-in: deterministic colour, texture and nuclear-layout statistics per tile; no weights",
            dim=34,
            transform=_t(224, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
            builder=builders.stats,
            needs_weights=False,
            license="built-in",
        ),
    ]


def builtin_presets() -> list[EncoderPreset]:
    """Every preset mixmag ships, in the order `mixmag encoders list` shows them."""
    return _vit_presets() + _other_presets()
