"""Build a tile encoder from a preset: architecture, weights (local file or hub), device transform
and output pooling, behind one module that maps uint8 tile batches to embeddings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, MixmagError
from ..weights_io import WeightsFileError, load_state_dict_file
from .convert import CONVERTERS, ConversionError
from .registry import EncoderPreset, InputTransform, OutputMode, get_preset, timm_kwargs
from .spec import OUTPUT_MODES


class EncoderWeightsError(MixmagError):
    pass


RANDOM_INIT_SEED = 0  # `--random-init` weights are drawn from this seed: the same on every run, so stores compare


class DeviceTransform(nn.Module):
    """uint8 (B, H, W, 3) tiles -> normalised float (B, 3, size, size), on the model's device."""

    def __init__(self, spec: InputTransform) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = tiles.permute(0, 3, 1, 2).float().div_(255.0)
        spec = self.spec
        if spec.resize is not None and spec.resize != x.shape[-1]:
            x = F.interpolate(
                x, size=(spec.resize, spec.resize), mode=spec.interpolation, antialias=True, align_corners=False
            )
        if x.shape[-1] != spec.size:
            if x.shape[-1] > spec.size:
                off = (x.shape[-1] - spec.size) // 2
                x = x[..., off : off + spec.size, off : off + spec.size]
            else:
                x = F.interpolate(
                    x, size=(spec.size, spec.size), mode=spec.interpolation, antialias=True, align_corners=False
                )
        if self.spec.mean == (0.0, 0.0, 0.0) and self.spec.std == (1.0, 1.0, 1.0):
            return x
        return (x - self.mean) / self.std


class TileEncoder(nn.Module):
    """A foundation model with its input transform and output pooling: (B, H, W, 3) uint8 -> (B, D)."""

    def __init__(
        self,
        preset: EncoderPreset,
        backbone: nn.Module,
        output: OutputMode,
        weights_digest: str,
        random_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.random_seed = random_seed  # not None: a foundation model's architecture with random weights
        self.preset = preset
        self.backbone = backbone
        self.transform = DeviceTransform(preset.transform)
        self.output = output
        self.weights_digest = weights_digest
        self.dim = preset.output_dim(output)
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1))

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        if self.output == "pooled":  # the network's own pooling (a CNN's or Swin's mean feature)
            return self.backbone(self.transform(tiles))
        tokens = self.backbone.forward_features(self.transform(tiles))
        cls = tokens[:, 0]
        if self.output == "cls":
            return cls
        return torch.cat([cls, tokens[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)

    def provenance(self) -> dict:
        """What a store records of the encoder; random weights are said so (`encoder_weights_random`, with the seed),
        and stores without the attribute were made with real (or built-in) weights."""
        random = (
            {}
            if self.random_seed is None
            else {"encoder_weights_random": True, "encoder_weights_seed": self.random_seed}
        )
        return {
            "encoder": self.preset.name,
            "encoder_weights_digest": self.weights_digest,
            "encoder_output": self.output,
            "embedding_dim": self.dim,
        } | random


def build_backbone(preset: EncoderPreset, overrides: dict | None = None) -> nn.Module:
    """The preset's architecture with fresh (random or built-in) weights; no network."""
    if preset.builder is not None:
        torch.manual_seed(0)  # built-ins are the same on every machine
        return preset.builder(**(overrides or {}))
    import timm

    return timm.create_model(preset.timm_name, pretrained=False, **timm_kwargs(preset, overrides))


def build_encoder(
    name: str,
    *,
    weights: str | Path | None = None,
    from_hub: bool = False,
    random_init: bool = False,
    output: OutputMode | None = None,
    overrides: dict | None = None,
) -> TileEncoder:
    """A ready encoder. Foundation models need weights (a local file, or the hub with access);
    random weights only when asked for explicitly (tests, benchmarks), drawn from RANDOM_INIT_SEED and recorded."""
    preset = get_preset(name)
    output = output or preset.output
    if output not in OUTPUT_MODES:
        raise ConfigError(f"unknown output mode {output!r}; use one of {', '.join(OUTPUT_MODES)}")
    if (output == "pooled") != (preset.output == "pooled"):
        raise ConfigError(
            f"encoder {preset.name!r} gives {'only its pooled features' if preset.output == 'pooled' else 'tokens'}; "
            f"use --output {preset.output}"
        )
    if weights is not None:
        backbone = build_backbone(preset, overrides)
        load_weights(backbone, Path(weights), preset.weights_format)
    elif from_hub:
        backbone = _from_hub(preset, overrides)
    elif preset.needs_weights and not random_init:
        raise EncoderWeightsError(
            f"encoder {name!r} needs its weights: pass --weights PATH (.safetensors, .pt or .bin) or --from-hub "
            f"(Hugging Face access to {preset.hub_id or 'the model'} required"
            f"{'; gated: request access on its page first' if preset.card and preset.card.gated else ''}). "
            f"Licence: {preset.license or 'see the model card'}."
        )
    elif preset.needs_weights:  # random_init: seeded, so two runs give the same weights, and the store says so
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            backbone = build_backbone(preset, overrides)
        backbone.eval()
        return TileEncoder(preset, backbone, output, state_digest(backbone), random_seed=RANDOM_INIT_SEED)
    else:
        backbone = build_backbone(preset, overrides)
    backbone.eval()
    return TileEncoder(preset, backbone, output, state_digest(backbone))


def _from_hub(preset: EncoderPreset, overrides: dict | None) -> nn.Module:
    if preset.hub_id is None:
        raise EncoderWeightsError(f"encoder {preset.name!r} has no hub id; pass --weights PATH")
    import timm

    try:
        if preset.hub_file is not None:  # a file in another library's layout (or a bare state dict): fetch, convert
            from huggingface_hub import hf_hub_download

            fetched = Path(hf_hub_download(preset.hub_id, preset.hub_file, repo_type=preset.hub_repo_type))
        else:
            kwargs = {k: v for k, v in timm_kwargs(preset, overrides).items() if k not in ("img_size",)}
            return timm.create_model(f"hf-hub:{preset.hub_id}", pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - offline, gated, missing token: all mean "no weights from the hub"
        raise EncoderWeightsError(
            f"could not load {preset.hub_id} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Request access on the model page and log in (huggingface-cli login), or download the weights "
            f"(e.g. huggingface-cli download {preset.hub_id}{' ' + preset.hub_file if preset.hub_file else ''}"
            f"{' --repo-type dataset' if preset.hub_repo_type == 'dataset' else ''} --local-dir weights/{preset.name})"
            f" and pass --weights weights/{preset.name}/"
            f"{preset.hub_file or '<file>.safetensors (or pytorch_model.bin)'}."
        ) from exc
    backbone = build_backbone(preset, overrides)
    load_weights(backbone, fetched, preset.weights_format)
    return backbone


def load_weights(model: nn.Module, path: Path, weights_format: str = "timm") -> None:
    """Load a local checkpoint safely (safetensors, or torch.load with weights_only) and strictly;
    checkpoints in another library's layout are converted first (encoders.convert)."""
    if not path.is_file():
        raise EncoderWeightsError(f"{path}: weights file not found")
    try:
        state = load_state_dict_file(
            path, fix="give the encoder's weights as .safetensors, or a PyTorch file of tensors only"
        )
    except WeightsFileError as exc:
        raise EncoderWeightsError(f"could not read weights: {exc}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EncoderWeightsError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    if weights_format != "timm":
        try:
            state = CONVERTERS[weights_format](state, model)
        except ConversionError as exc:
            raise EncoderWeightsError(f"{path}: {exc}") from exc
    missing, unexpected = _key_mismatch(model, state)
    if missing or unexpected:
        raise EncoderWeightsError(
            f"{path}: the checkpoint does not fit the architecture: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}. Is it the right --encoder preset?"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderWeightsError(f"{path}: tensors do not fit the architecture: {exc}") from exc


def _key_mismatch(model: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    got = set(state)
    return sorted(expected - got), sorted(got - expected)


def state_digest(model: nn.Module) -> str:
    """sha256 of the weights (names, shapes and bytes): identifies what produced a store."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
