"""What a tile-encoder preset is: the architecture to build, how tiles are fed to it, which tokens make the
embedding, and the facts of its model card (parameters, licence, gating, the resolutions it was trained at).

The facts are data, not code, so `mixmag encoders list` prints them, the tests check the built architecture against
them, and `mixmag embed` warns when an encoder meets magnifications it never saw in training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

# cls: the class token; cls+mean: the class token and the mean of the patch tokens (registers skipped);
# pooled: what the network's own forward returns without its classifier (the mean of a CNN's or Swin's feature map)
OutputMode = Literal["cls", "cls+mean", "pooled"]
OUTPUT_MODES: tuple[str, ...] = ("cls", "cls+mean", "pooled")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TWENTY_X_MPP = 0.5  # µm/px of a "20×" tile


@dataclass(frozen=True)
class InputTransform:
    """What the model expects: tiles resized (shorter side) to `resize`, centre-cropped to `size`,
    scaled to [0, 1] and normalised. Applied on the model's device, on uint8 batches."""

    size: int = 224
    resize: int | None = None
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class ModelCard:
    """What the model's publishers state about it (card or paper), as mixmag checks and shows it.

    `params` is the card's figure as the card writes it ("303M", "1.1B"): the built architecture must round to it
    (the licence is the preset's `license`).
    `trained_mpps` are the µm/px of the tiles it was trained on; None when the card does not say (shown as "?"),
    () for a network trained on photographs, not slides. `gated` None: not stated.
    """

    params: str | None  # None: the card gives no figure
    trained_mpps: tuple[float, ...] | None = None
    gated: bool | None = None
    tokens: str = "cls"  # the embedding the card (or TRIDENT) uses, when it is not the preset's default
    source: str = ""  # where the facts come from, when not the hub page
    params_note: str = ""  # why the built architecture differs from the card's rounded figure, where it does

    def magnifications(self) -> str:
        """The magnifications seen in training, in words ("20×", "5×, 10×, 20×, 40×", "?" unknown)."""
        if self.trained_mpps is None:
            return "?"
        if not self.trained_mpps:
            return "none (photographs)"
        return ", ".join(f"{10 / m:g}×" for m in sorted(self.trained_mpps, reverse=True))

    def twenty_x_only(self) -> bool:
        """Trained on 20× tiles (0.5 µm/px) and nothing coarser: 5× and 10× tiles are new to it."""
        return (
            bool(self.trained_mpps) and min(self.trained_mpps) <= TWENTY_X_MPP * 1.05 and max(self.trained_mpps) < 1.0
        )


@dataclass(frozen=True)
class EncoderPreset:
    name: str
    description: str
    dim: int
    transform: InputTransform = InputTransform()
    output: OutputMode = "cls"
    timm_name: str | None = None
    timm_kwargs: Callable[[], dict] = field(default=dict, repr=False)
    hub_id: str | None = None
    builder: Callable[..., nn.Module] | None = field(default=None, repr=False)
    needs_weights: bool = True
    license: str = ""
    weights_format: str = "timm"  # or a layout in encoders.convert.CONVERTERS (e.g. "hf-dinov2")
    hub_file: str | None = None  # for non-timm hub repositories: the weights file to fetch
    hub_repo_type: str = "model"  # "dataset" where the weights sit in a dataset repository (CTransPath's)
    aliases: tuple[str, ...] = ()
    card: ModelCard | None = None
    extra: str | None = None  # the optional dependency group (`pip install mixmag[EXTRA]`) it needs beyond timm

    def output_dim(self, output: OutputMode | None = None) -> int:
        return self.dim * (2 if (output or self.output) == "cls+mean" else 1)
