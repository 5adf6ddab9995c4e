"""`mixmag encode`: run a pretrained mixer over every store's regions once, writing the
contextualized (patch) and compressed (cls) region embeddings per slide for slide-level models."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ..data.bags import region_bag
from ..errors import ConfigError
from ..fileio import hdf5_atomic
from ..store import shared_settings
from ..train.mixer_file import load_mixer


def encoded_mixer_weights(encoded_dir: Path) -> Path:
    """The mixer.safetensors a `mixmag encode` folder was made with (recorded in its files)."""
    first = next(iter(sorted(Path(encoded_dir).glob("*.h5"))), None)
    if first is None:
        raise ConfigError(f"{encoded_dir}: no encoded slides (the `encoded:` folder of the run, from `mixmag encode`)")
    with h5py.File(first, "r") as f:
        weights = f.attrs.get("mixer_weights")
    if not weights or not Path(weights).is_file():
        raise ConfigError(f"{encoded_dir}: the mixer its embeddings came from ({weights}) is gone; it is needed for new slides")
    return Path(weights)


@torch.no_grad()
def encode_stores(stores: list[Path], weights: Path, out_dir: Path, *, batch: int = 64, device: torch.device | None = None, on_slide=None,
                  settings: dict | None = None) -> list[Path]:
    """`settings`: the stores' shared settings when known (from the catalog), else read from every header."""
    device = device or torch.device("cpu")
    mixer, digest = load_mixer(weights, settings or (shared_settings(stores) if stores else None))
    mixer.to(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for store in stores:
        target = out_dir / store.name
        if target.is_file():
            with h5py.File(target, "r") as f:
                if f.attrs.get("mixer_digest") == digest and f.attrs.get("store_mtime") == os.stat(store).st_mtime:
                    written.append(target)
                    if on_slide:
                        on_slide(store.stem, "skipped")
                    continue
        regions = torch.from_numpy(region_bag(store).astype(np.float32))
        if regions.shape[-1] != mixer.config.in_dim:
            raise ConfigError(f"{store}: {regions.shape[-1]}-d embeddings, the mixer takes {mixer.config.in_dim}-d")
        patches, cls = [], []
        for start in range(0, len(regions), batch):
            contextual, compressed = mixer(regions[start : start + batch].to(device))
            patches.append(contextual.cpu().half().numpy())
            cls.append(compressed.cpu().half().numpy())
        with hdf5_atomic(target) as f:
            f.create_dataset("patch", data=np.concatenate(patches))
            f.create_dataset("cls", data=np.concatenate(cls))
            f.attrs["mixer_digest"] = digest
            f.attrs["mixer_weights"] = str(weights)
            f.attrs["store_mtime"] = os.stat(store).st_mtime
        written.append(target)
        if on_slide:
            on_slide(store.stem, "encoded")
    return written
