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
The ``.pt`` beside each ``.h5`` must hold the same features: CLAM trains on the ``.pt``, mixmag imports the ``.h5``
(which has the coordinates), so a stale or foreign ``.pt`` is refused.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..errors import MixmagError
from ..fileio import atomic_path, read_bytes_limited
from ..ids import path_for_id
from ..slides.tiling import TilingPlan
from ..store import SlideStore
from .assemble import LevelFile, assemble_store, read_level_file, refuse
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
        write_h5(h5_path, {"features": (features, encoder_extras(store, coords, features)), "coords": (coords, {})})
        with atomic_path(pt_path) as tmp, open(tmp, "wb") as handle:  # a file object keeps a full disk's OSError
            torch.save(torch.from_numpy(features), handle)
        written += [h5_path, pt_path]
    return written


def import_slide(folder: Path, plan: TilingPlan, plan_path: Path, encoder: str | None = None) -> SlideStore:
    """The store of one planned slide from CLAM h5 files in `folder/h5_files/` or `folder/*/h5_files/`, each checked
    against the pt_files/ tensor beside it (what CLAM trains on) when there is one."""
    folder = Path(folder)
    paths = files_for_slide(plan, "h5_files/{name}.h5", folder) + files_for_slide(plan, "*/h5_files/{name}.h5", folder)
    if not paths:
        raise refuse(
            plan, "any", folder, "no CLAM h5_files/<slide>.h5 for this slide", "point at CLAM's feature folder(s)"
        )
    files = [read_level_file(p, plan, "point at CLAM's h5_files") for p in paths]
    store = assemble_store(plan, plan_path, files, source=SOURCE, encoder=encoder)  # the h5 files, each at its level
    for f in files:
        check_pt_file(plan, f)
    return store


def check_pt_file(plan: TilingPlan, f: LevelFile) -> None:
    """`pt_files/<slide>.pt` beside `h5_files/<slide>.h5` holds the same features: CLAM trains on the .pt (its default
    input, dataset_generic.py l.339), so features imported from the .h5 must be the ones CLAM saw."""
    pt = f.path.parent.parent / "pt_files" / f"{f.path.stem}.pt"
    if not pt.exists() and not pt.is_symlink():
        return  # CLAM switched to h5 (load_from_h5(True)) reads the .h5 alone
    level = _level_of(plan, f)
    limit = f.features.size * 4 + (1 << 20)  # a float32 (M, D) tensor and torch.save's zip around it
    try:
        data = read_bytes_limited(pt, limit, what="CLAM pt file")
        tensor = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except MixmagError as exc:
        raise refuse(plan, level, pt, str(exc), "re-extract the features with CLAM") from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds on a foreign or damaged file
        raise refuse(plan, level, pt, f"not a readable tensor file ({type(exc).__name__})", "re-extract") from None
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != f.features.shape:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        problem = f"holds {shape}, the .h5 beside it {f.features.shape}"
    elif not torch.equal(tensor.float(), torch.from_numpy(np.asarray(f.features, np.float32))):
        problem = "holds other values than the .h5 beside it"
    else:
        return
    raise refuse(
        plan,
        level,
        pt,
        f"the pt file CLAM trains on {problem} ({f.path.name})",
        "re-extract both files in one CLAM run (extract_features_fp.py writes them together), or remove the stale one",
    )


def _level_of(plan: TilingPlan, f: LevelFile) -> str:
    """The level a CLAM file's tile count names (for messages), or '?'."""
    counts = [name for i, name in enumerate(plan.levels.names) if len(plan.cells) * 4**i == len(f.coords)]
    return counts[0] if counts else "?"
