"""Architectures that are not a timm model name plus keyword arguments: CTransPath's Swin with a convolutional stem,
the ResNet-50 trunk pathology tools use, and the built-in test encoders. All are built from timm or torch parts."""

from __future__ import annotations

from torch import nn

from .builtin import StatsEncoder


class ConvStem(nn.Module):
    """CTransPath's patch embedding (Wang et al. 2022): two stride-2 3x3 convolutions with batch norm and ReLU, then
    a 1x1 projection to the embedding width, in place of Swin's 4x4 patchify convolution. Written for timm's
    SwinTransformer `embed_layer` contract (NHWC tokens, then the layer norm Swin hands it)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None, **_ignored) -> None:
        super().__init__()
        if patch_size != 4 or embed_dim % 8:
            raise ValueError("the CTransPath stem makes 4x4 patches of a width divisible by 8")
        size = img_size if isinstance(img_size, (tuple, list)) else (img_size, img_size)
        self.img_size = tuple(size)
        self.patch_size = (4, 4)
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        width = embed_dim // 8
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width * 2, embed_dim, 1),
        )
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # NHWC, as timm's Swin stages take it

    def set_input_size(self, img_size=None, **_ignored) -> None:
        """timm's Swin asks its patch embedding to follow a new input size; the stem is size-agnostic."""
        if img_size is not None:
            size = img_size if isinstance(img_size, (tuple, list)) else (img_size, img_size)
            self.img_size = tuple(size)
            self.grid_size = (size[0] // 4, size[1] // 4)
            self.num_patches = self.grid_size[0] * self.grid_size[1]


def ctranspath(**overrides) -> nn.Module:
    """CTransPath: timm's Swin-T/4 window 7 with the convolutional stem; no classifier (768-d pooled features)."""
    import timm

    kwargs = {"num_classes": 0, "embed_layer": ConvStem} | overrides
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **kwargs)


def resnet50_trunk(**overrides) -> nn.Module:
    """ResNet-50 up to its third stage, average-pooled (1024-d): the ImageNet baseline of CLAM and TRIDENT."""
    import timm

    model = timm.create_model("resnet50", pretrained=False, **({"num_classes": 0} | overrides))
    model.layer4 = nn.Identity()
    return model


def tiny_vit(**overrides) -> nn.Module:
    import timm

    kwargs = dict(num_classes=0, depth=2, embed_dim=64, num_heads=2, img_size=224) | overrides
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)


def stats(**_overrides) -> nn.Module:
    return StatsEncoder()
