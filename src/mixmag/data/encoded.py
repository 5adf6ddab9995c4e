"""Precomputed mixer outputs (`mixmag encode`): one file per slide with its regions' contextualized ("patch") and
compressed ("cls") embeddings, and which mixer made them from which store.

The file names its mixer so that a run trained on these outputs can make the same ones for new slides.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import RunError
from ..fileio import hdf5_atomic, open_hdf5


def encoded_path(encoded_dir: Path, slide_id: str) -> Path:
    return Path(encoded_dir) / f"{slide_id}.h5"


def encoded_mixer_weights(encoded_dir: Path) -> Path:
    """The mixer.safetensors a `mixmag encode` folder was made with (recorded in its files)."""
    first = next(iter(sorted(Path(encoded_dir).glob("*.h5"))), None)
    if first is None:
        raise RunError(f"{encoded_dir}: no encoded slides (the `encoded:` folder of the run, from `mixmag encode`)")
    with open_hdf5(first) as f:
        weights = f.attrs.get("mixer_weights")
    if not weights or not Path(weights).is_file():
        raise RunError(
            f"{encoded_dir}: the mixer its embeddings came from ({weights}) is gone; it is needed for new slides"
        )
    return Path(weights)


def encoded_is_current(target: Path, store: Path, mixer_digest: str) -> bool:
    """Made by this mixer from this version of the store."""
    if not target.is_file():
        return False
    with open_hdf5(target) as f:
        return f.attrs.get("mixer_digest") == mixer_digest and f.attrs.get("store_mtime") == os.stat(store).st_mtime


def write_encoded(
    target: Path, patch: np.ndarray, cls: np.ndarray, *, store: Path, weights: Path, mixer_digest: str
) -> Path:
    with hdf5_atomic(target) as f:
        f.create_dataset("patch", data=patch)
        f.create_dataset("cls", data=cls)
        f.attrs["mixer_digest"] = mixer_digest
        f.attrs["mixer_weights"] = str(weights)
        f.attrs["store_mtime"] = os.stat(store).st_mtime
    return target
