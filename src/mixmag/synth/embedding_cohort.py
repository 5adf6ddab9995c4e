"""A synthetic cohort of stores whose label is carried by the embeddings: for tests of slide-level
training without slides. In a positive specimen one slide carries the signal, in some regions only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import write_csv_atomic
from ..store import write_store
from .stores import synthetic_store


def write_embedding_cohort(
    folder: str | Path,
    *,
    n_specimens: int = 60,
    dim: int = 16,
    signal: float = 1.5,
    level: str = "20x",
    seed: int = 0,
    shuffle_labels: bool = False,
) -> Path:
    """Stores in folder/stores, the table in folder/cohort.csv (60% train, 20% tune, 20% test)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    rows = []
    labels = np.array([k % 2 for k in range(n_specimens)])
    splits = ["train"] * int(0.6 * n_specimens) + ["tune"] * int(0.2 * n_specimens)
    splits += ["test"] * (n_specimens - len(splits))
    order = rng.permutation(n_specimens)
    for k in range(n_specimens):
        spec = f"P{k:03d}"
        n_slides = 1 + k % 3
        carrier = int(rng.integers(n_slides))
        for j in range(n_slides):
            slide = f"{spec}-S{j}"
            store = synthetic_store(slide, n_rows=6, n_cols=6, dim=dim, seed=int(rng.integers(1 << 30)))
            if labels[k] and j == carrier:
                emb = store.embeddings[level]
                cells = rng.random(emb.shape[0]) < 0.4  # only some regions carry it
                emb[cells] += signal * direction
            write_store(folder / "stores" / f"{slide}.h5", store)
            rows.append((spec, slide, labels[k], splits[order[k]]))
    if shuffle_labels:
        by_spec = {spec: lab for spec, _, lab, _ in rows}
        specs = sorted(by_spec)
        shuffled = dict(zip(specs, rng.permutation([by_spec[s] for s in specs])))
        rows = [(spec, slide, shuffled[spec], split) for spec, slide, _, split in rows]
    return write_csv_atomic(folder / "cohort.csv", ["specimen", "slide", "label", "split"], rows)
