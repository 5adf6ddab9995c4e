"""Reading weight files a user was handed (checkpoints, mixers, encoder weights): tensors only, or one sentence.

A `.pt` is opened with `torch.load(weights_only=True)`, which refuses pickled Python objects; a refusal or a damaged
file becomes `UnsafeCheckpointError` ("... is not a safe checkpoint"), never PyTorch's advice to retry with
`weights_only=False` (that would run whatever code the file carries). A `.safetensors` that is not one becomes
`WeightsFileError`.

Before `torch.load` decompresses anything, the `.pt`'s zip directory is checked (`check_zip_records`): torch.save
stores every record uncompressed, so a record that would expand more than `MAX_EXPANSION`-fold, or a directory that
adds up to more than `CHECKPOINT_MAX_BYTES`, is a decompression bomb (an 8 MB file asking for 8 GiB) and is refused
in one sentence. A `.safetensors` header is checked by the safetensors library itself: its tensors must fill the file
exactly, so what it declares is bounded by the file's size.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import MixmagError
from .fileio import open_regular

if TYPE_CHECKING:  # torch is imported where weights are loaded: tiling (which checks tissue models) never pays for it
    import torch

GiB = 1 << 30
# 4x the largest tile encoder mixmag knows (a ViT-giant of ~1.1 billion parameters: 4.5 GB in float32), so any real
# encoder checkpoint, best.pt or last.pt (a mixer with its optimiser's state) fits with room to spare
CHECKPOINT_MAX_BYTES = 18 * GiB
# torch.save stores records uncompressed; a zip tool's deflate gives ~1.1x on weights, ~1000x on zeros (a bomb)
MAX_EXPANSION = 100
_SMALL_RECORD = 64 << 10  # a record this small may expand further (a tiny pickle or text record)


class WeightsFileError(MixmagError):
    """A weights file that cannot be read as the format it should be."""


class UnsafeCheckpointError(WeightsFileError):
    """A PyTorch checkpoint that holds more than tensors and plain containers, or is not a checkpoint at all."""


def load_torch_weights(path: str | Path, *, fix: str, map_location: Any = "cpu") -> Any:
    """`torch.load(weights_only=True)` of a file whose zip directory passed `check_zip_records` (the same open file,
    so what was checked is what loads); `fix` says what to do when the file is refused."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: file not found; {fix}")
    with open_regular(path, "checkpoint") as handle:
        check_zip_records(handle, path, fix=fix)
        handle.seek(0)
        try:
            import torch

            return torch.load(handle, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            why = "it holds Python objects besides tensors (a pickle), which mixmag never loads"
        except Exception as exc:  # noqa: BLE001 - whatever untrusted bytes make torch raise: one sentence
            why = f"it cannot be read as PyTorch weights ({type(exc).__name__}: damaged, or another format)"
    raise UnsafeCheckpointError(f"{path} is not a safe checkpoint: {why}; {fix}")


def check_zip_records(handle: BinaryIO, path: Path, *, fix: str, limit: int = CHECKPOINT_MAX_BYTES) -> None:
    """Refuse a zip-format PyTorch file (a `.pt`, a TorchScript or torch.export file), open as `handle`, whose
    directory asks for more memory than its bytes can honestly hold, before any record is decompressed (zipfile reads
    only the directory)."""
    try:
        size = os.fstat(handle.fileno()).st_size
        with zipfile.ZipFile(handle) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise UnsafeCheckpointError(
            f"{path} is not a safe checkpoint: it cannot be read as PyTorch weights (not a zip archive as torch.save "
            f"writes since PyTorch 1.6: {_first_line(exc)}); {fix}"
        ) from None
    problem = _record_problem(records, size)
    total = sum(r.file_size for r in records)
    if problem is None and total > limit:
        problem = f"its records add up to {total / GiB:.1f} GiB, over the {limit / GiB:g} GiB a checkpoint may hold"
    if problem is not None:
        raise UnsafeCheckpointError(f"{path} is not a safe checkpoint: {problem}; {fix}")


def _record_problem(records: list[zipfile.ZipInfo], file_size: int) -> str | None:
    """Why a record's declared sizes are a bomb or a lie, or None: a stored record's sizes must agree and lie inside
    the file; a compressed one may expand at most MAX_EXPANSION-fold."""
    for r in records:
        if r.compress_type == zipfile.ZIP_STORED:
            if r.file_size != r.compress_size or r.header_offset + r.compress_size > file_size:
                return (
                    f"record {r.filename[:80]!r} declares {r.file_size} bytes but stores {r.compress_size} "
                    f"(the file has {file_size}): it is damaged"
                )
        elif r.file_size > MAX_EXPANSION * r.compress_size + _SMALL_RECORD:
            return (
                f"record {r.filename[:80]!r} would expand from {r.compress_size} to {r.file_size} bytes "
                f"({r.file_size / GiB:.1f} GiB, {r.file_size // max(r.compress_size, 1)}-fold): a decompression bomb"
            )
    return None


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
