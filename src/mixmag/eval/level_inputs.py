"""A trained slide model and one slide's store as a `LevelInput`: the embeddings the model reads, the
magnification of each, and a forward function over batches of them (for `eval.attribution`).

Models on precomputed mixer outputs (bags patch / cls) are run from the store's regions through the
mixer that made those outputs, so every measure acts on the same thing: the store's embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.bags import TILE_MODES, region_bag
from ..store import read_index
from ..train.mixer_file import load_mixer
from .attribution import LevelInput
from .explain import region_layout, tile_layout
from .predict import encoded_mixer


def slide_input(trainer, slide: str, store_path: Path) -> LevelInput:
    """The LevelInput of one slide for a trained run (`eval.predict.load_trained` or a fitted Trainer)."""
    config, model = trainer.config, trainer.model.eval()
    store = read_index(store_path)
    names = list(store.level_names)
    if config.bags in TILE_MODES:
        x = trainer.bags(slide).float()
        level = torch.from_numpy(tile_layout(store, config.bags).level)

        def forward(xb, keep):
            return model(xb, torch.ones(xb.shape[:2], dtype=torch.bool) if keep is None else keep)

        return LevelInput(x, level, names, forward, removable=True, attention_level=level)
    if config.bags == "regions":
        x = trainer.bags(slide).float()
        level = torch.from_numpy(region_layout(store, config.region_level).level).reshape(x.shape[:2])
        patch = model.output == "patch"

        def forward(xb, keep):
            return model(xb, torch.ones(xb.shape[:2], dtype=torch.bool))

        return LevelInput(x, level, names, forward, attention_level=level.reshape(-1) if patch else None)
    # patch / cls: precomputed outputs of a frozen mixer; run that mixer on the store's regions
    mixer, _ = load_mixer(encoded_mixer(trainer))
    x = torch.from_numpy(region_bag(store_path).astype(np.float32))
    level = torch.from_numpy(region_layout(store).level).reshape(x.shape[:2])

    def forward(xb, keep):
        b, r, s, d = xb.shape
        contextual, compressed = mixer(xb.reshape(b * r, s, d))
        feats = compressed.reshape(b, r, -1) if config.bags == "cls" else contextual.reshape(b, r * s, -1)
        return model(feats, torch.ones(feats.shape[:2], dtype=torch.bool))

    return LevelInput(x, level, names, forward, attention_level=level.reshape(-1) if config.bags == "patch" else None)
