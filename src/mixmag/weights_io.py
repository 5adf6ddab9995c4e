"""Reading weight files a user was handed (checkpoints, mixers, encoder weights): tensors only, or one sentence.

A `.pt` is opened with `torch.load(weights_only=True)`, which refuses pickled Python objects; a refusal or a damaged
file becomes `UnsafeCheckpointError` ("... is not a safe checkpoint"), never PyTorch's advice to retry with
`weights_only=False` (that would run whatever code the file carries). A `.safetensors` that is not one becomes
`WeightsFileError`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import MixmagError


class WeightsFileError(MixmagError):
    """A weights file that cannot be read as the format it should be."""


class UnsafeCheckpointError(WeightsFileError):
    """A PyTorch checkpoint that holds more than tensors and plain containers, or is not a checkpoint at all."""


def load_torch_weights(path: str | Path, *, fix: str, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; `fix` says what to do when the file is refused."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: file not found; {fix}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        why = "it holds Python objects besides tensors (a pickle), which mixmag never loads"
    except Exception as exc:  # noqa: BLE001 - whatever untrusted bytes make torch raise: one sentence
        why = f"it cannot be read as PyTorch weights ({type(exc).__name__}: damaged, or another format)"
    raise UnsafeCheckpointError(f"{path} is not a safe checkpoint: {why}; {fix}")


def load_state_dict_file(path: str | Path, *, fix: str) -> dict[str, torch.Tensor]:
    """A flat state dict of tensors from a `.safetensors` file, or from a `.pt`/`.bin` read weights-only."""
    path = Path(path)
    if path.suffix != ".safetensors":
        state = load_torch_weights(path, fix=fix)
    else:
        state = load_safetensors(path, fix=fix)
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path}: expected a dictionary of named tensors, found {type(state).__name__}; {fix}")
    return state


def load_safetensors(path: str | Path, *, fix: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: file not found; {fix}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsFileError(f"{path} is not a safetensors file ({_first_line(exc)}); {fix}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
