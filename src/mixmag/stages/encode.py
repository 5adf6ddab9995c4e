"""`mixmag encode`: run the pretrained region mixer (not the tile encoder, which `mixmag embed` ran) over every
store's regions once, writing the contextualized (patch) and compressed (cls) region embeddings per slide for
slide-level models. The command keeps its name for compatibility; "encode" here is the mixer step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.bags import region_bag
from ..data.encoded import encoded_is_current, write_encoded
from ..fileio import make_folder
from ..store import PipelineSettings, StoreError, shared_settings
from ..train.mixer_file import load_mixer


@torch.no_grad()
def encode_stores(
    stores: list[Path],
    weights: Path,
    out_dir: Path,
    *,
    batch: int = 64,
    device: torch.device | None = None,
    on_slide=None,
    settings: PipelineSettings | None = None,
) -> list[Path]:
    """`settings`: the stores' shared settings when known (from the catalog), else read from every header."""
    device = device or torch.device("cpu")
    mixer, digest = load_mixer(weights, settings or (shared_settings(stores) if stores else None))
    mixer.to(device)
    make_folder(out_dir)
    written = []
    for store in stores:
        target = out_dir / store.name
        if encoded_is_current(target, store, digest):
            written.append(target)
            if on_slide:
                on_slide(store.stem, "skipped")
            continue
        regions = torch.from_numpy(region_bag(store).astype(np.float32))
        if regions.shape[-1] != mixer.config.in_dim:
            raise StoreError(f"{store}: {regions.shape[-1]}-d embeddings, the mixer takes {mixer.config.in_dim}-d")
        patches, cls = [], []
        for start in range(0, len(regions), batch):
            contextual, compressed = mixer(regions[start : start + batch].to(device))
            patches.append(contextual.cpu().half().numpy())
            cls.append(compressed.cpu().half().numpy())
        written.append(
            write_encoded(
                target, np.concatenate(patches), np.concatenate(cls), store=store, weights=weights, mixer_digest=digest
            )
        )
        if on_slide:
            on_slide(store.stem, "encoded")
    return written
