"""Synthetic per-slide stores: tile embeddings with the structure of real ones, without slides.

Each cell has a latent vector that varies smoothly over the slide; each finer tile's latent is its
parent's plus detail of its own. Every level sees its latents through its own fixed projection, so
a hidden tile is predictable from its parent, children and neighbours, better than from the mean of
its level: what masked embedding modeling has to learn. `structure` (1 by default) dials that down: each tile's
latent becomes structure x its structured latent + sqrt(1 - structure^2) x a latent of its own, so at 0 every tile is
drawn independently (nothing for MEM to learn) and levels, neighbours and parents say nothing of each other.
"""

from __future__ import annotations

import numpy as np

from ..store import SlideStore


def synthetic_store(
    slide_id: str,
    *,
    n_rows: int = 8,
    n_cols: int = 8,
    dim: int = 32,
    n_levels: int = 3,
    t: int = 3,
    context: int | None = None,
    latent: int = 16,
    detail: float = 0.8,
    noise: float = 0.05,
    seed: int = 0,
    projection_seed: int = 1234,
    structure: float = 1.0,
) -> SlideStore:
    if not 0 <= structure <= 1:
        raise ValueError(f"structure must be between 0 and 1, got {structure}")
    rng = np.random.default_rng(seed)
    own_rng = np.random.default_rng([seed, 1])  # apart from rng: at structure 1 the store is what it always was
    proj_rng = np.random.default_rng(projection_seed)  # the "foundation model": shared by all slides
    projections = [proj_rng.normal(size=(latent, dim)) / np.sqrt(latent) for _ in range(n_levels)]
    coarse = rng.normal(size=(n_rows + 2, n_cols + 2, latent))
    cells = (coarse[:-2, :-2] + coarse[1:-1, 1:-1] * 2 + coarse[2:, 2:]) / 2  # spatially smooth
    rc = np.array([(r, c) for r in range(n_rows) for c in range(n_cols)], np.int32)
    latents = cells.reshape(n_rows * n_cols, 1, latent)
    embeddings = {}
    for level in range(n_levels):
        if level:
            parents = np.repeat(
                np.repeat(latents.reshape(-1, 2 ** (level - 1), 2 ** (level - 1), latent), 2, axis=1), 2, axis=2
            )
            latents = (parents + detail * rng.normal(size=parents.shape)).reshape(len(rc), 4**level, latent)
        mixed = latents
        if structure < 1:  # the tile's own latent, scaled to the structured one's spread (each level's differs)
            own = own_rng.normal(size=latents.shape) * latents.std()
            mixed = structure * latents + np.sqrt(1 - structure**2) * own
        emb = np.tanh(mixed @ projections[level]) + noise * rng.normal(size=(len(rc), 4**level, dim))
        embeddings[f"{10 * 2**level / 2:g}x"] = emb.astype(np.float32)
    windows = {"regions": _windows(n_rows, n_cols, t)}
    if context:
        windows["contexts"] = _windows(n_rows, n_cols, context)
    attrs = {
        "slide_id": slide_id,
        "encoder": "synthetic",
        "encoder_weights_digest": f"projection-{projection_seed}",
        "level_mpps": [2.0 / 2**i for i in range(n_levels)],
        "slide_mpp": 0.5,
        "cell_px": 896.0,
        "grid_shape": [n_rows, n_cols],
        "region_size": t,
        "context_size": context,
        "embedding_dim": dim,
    }
    return SlideStore(rc=rc, tissue=np.ones(len(rc), np.float32), embeddings=embeddings, attrs=attrs, windows=windows)


def _windows(n_rows: int, n_cols: int, size: int) -> np.ndarray:
    return np.array([(r, c) for r in range(n_rows - size + 1) for c in range(n_cols - size + 1)], np.int32).reshape(
        -1, 2
    )
