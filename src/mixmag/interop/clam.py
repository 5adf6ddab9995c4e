"""CLAM (mahmoodlab/CLAM, read at commit 53e2409): the per-slide feature files its training reads.

The format, as CLAM writes it (extract_features_fp.py) and reads it (dataset_modules/dataset_generic.py):

One data folder per feature set, ``<data_dir>/pt_files/<slide_id>.pt`` and ``<data_dir>/h5_files/<slide_id>.h5``
(folders made at extract_features_fp.py l.72-74; read at dataset_generic.py l.338 and l.346). ``<slide_id>`` is the
``slide_id`` column of CLAM's dataset CSV (dataset_generic.py l.328).

``h5_files/<slide_id>.h5``: ``features`` float32 (M, D) (extract_features_fp.py l.42) and ``coords`` int32 (M, 2),
level-0 (x, y) top-lefts (l.38), no attributes (save_hdf5 with attr_dict=None, l.45; utils/file_utils.py l.16-33).
CLAM reads both datasets whole when switched to h5 (``load_from_h5(True)``, dataset_generic.py l.346-353).

``pt_files/<slide_id>.pt``: the same features as one float32 tensor (M, D), ``torch.save``d (l.117) and read by
``torch.load`` (dataset_generic.py l.339), CLAM's default input.

mixmag writes one data folder per magnification, ``<out>/<level>/`` (``5x``, ``10x``, ``20x``), so CLAM is pointed at
one of them (``--data_root_dir``/``data_dir``). CLAM files name no level and no encoder: on import the level is the one
whose tile count (N·4^i) the file holds and whose grid its coordinates lie on, and the encoder comes from ``--encoder``
(or from the ``mixmag_*`` record mixmag adds to the ``features`` attributes of its own exports, which CLAM ignores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_path
from ..ids import path_for_id
from ..slides.tiling import TilingPlan
from ..store import SlideStore
from .assemble import assemble_store, read_level_file, refuse
from .files import encoder_extras, write_h5
from .grid import rounded_origins
from .plans import files_for_slide

SOURCE = "clam"


def export_store(store: SlideStore, out: Path) -> list[Path]:
    """`<out>/<level>/h5_files/<slide>.h5` and `<out>/<level>/pt_files/<slide>.pt` for every level of a store."""
    header = store.header
    slide, cell_px = header.slide_id, float(header.cell_px or 0)
    written = []
    for level, (name, emb) in enumerate(store.embeddings.items()):
        data_dir = path_for_id(out, name, what="level name", where=f"store {slide}")
        h5_path = path_for_id(data_dir / "h5_files", slide, ".h5", where="the store's slide_id attribute")
        pt_path = path_for_id(data_dir / "pt_files", slide, ".pt", where="the store's slide_id attribute")
        features = emb.reshape(-1, emb.shape[-1]).astype(np.float32)
        coords = rounded_origins(store.rc, cell_px, level).astype(np.int32)
        write_h5(h5_path, {"features": (features, encoder_extras(store, features)), "coords": (coords, {})})
        with atomic_path(pt_path) as tmp, open(tmp, "wb") as handle:  # a file object keeps a full disk's OSError
            torch.save(torch.from_numpy(features), handle)
        written += [h5_path, pt_path]
    return written


def import_slide(folder: Path, plan: TilingPlan, plan_path: Path, encoder: str | None = None) -> SlideStore:
    """The store of one planned slide from CLAM h5 files in `folder/h5_files/` or `folder/*/h5_files/`."""
    folder = Path(folder)
    paths = files_for_slide(plan, "h5_files/{name}.h5", folder) + files_for_slide(plan, "*/h5_files/{name}.h5", folder)
    if not paths:
        raise refuse(
            plan, "any", folder, "no CLAM h5_files/<slide>.h5 for this slide", "point at CLAM's feature folder(s)"
        )
    return assemble_store(
        plan,
        plan_path,
        [read_level_file(p, plan, "point at CLAM's h5_files") for p in paths],
        source=SOURCE,
        encoder=encoder,
    )
