"""The 20x-only rival (issue 25 item 4; the idea of MSPN, 2026): every coarser level's tokens made from the finest
level's features alone, each coarse tile the mean of the finest tiles inside it. A model on such stores sees "several
magnifications" although the encoder never ran at 5x or 10x; the same model on the real stores then says what the
encoder's own coarse features add, and the rival would save embedding those tiles (5 of every 21 at three levels).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import MixmagError
from ..fileio import make_folder
from ..ids import check_id
from ..store import SlideStore, read_store, store_path, write_store


def pool_from_finest(store: SlideStore) -> SlideStore:
    """The store with each coarser level replaced by block means of the finest level (same shapes, dtype and cells);
    its header says so (`pooled_from`), which makes it another embedding space: a model never mixes the two."""
    names = store.level_names
    finest = names[-1]
    fine = store.embeddings[finest]
    n, per_cell, dim = fine.shape
    side = math.isqrt(per_cell)
    if side * side != per_cell or side != 2 ** (len(names) - 1):
        raise MixmagError(
            f"store {store.attrs.get('slide_id')!r}: level {finest} has {per_cell} tiles a cell, not the "
            f"{4 ** (len(names) - 1)} of the finest of {len(names)} levels; it cannot be pooled."
        )
    grid = fine.astype(np.float32).reshape(n, side, side, dim)
    pooled = {}
    for i, name in enumerate(names[:-1]):
        k = 2**i  # tiles a side at level i
        block = side // k
        means = grid.reshape(n, k, block, k, block, dim).mean(axis=(2, 4))
        pooled[name] = means.reshape(n, k * k, dim).astype(store.embeddings[name].dtype)
    pooled[finest] = fine
    return replace(store, embeddings=pooled, attrs=store.attrs | {"pooled_from": finest})


def write_pooled(path: Path, out_dir: Path) -> Path:
    """Pool one store file into `out_dir` (same file name); refuses to write over the store it reads."""
    store = read_store(path)
    target = store_path(make_folder(out_dir), check_id(store.header.slide_id, where=str(path)))
    if target.resolve() == Path(path).resolve():
        raise MixmagError(f"{path}: pooling would overwrite the store it reads; give another --out folder.")
    if store.attrs.get("pooled_from"):
        raise MixmagError(f"{path}: its coarser levels are already pooled from {store.attrs['pooled_from']}.")
    return write_store(target, pool_from_finest(store))
