"""TRIDENT (mahmoodlab/TRIDENT, read at commit a91fa84): patch coordinate files and patch feature files.

The format, as TRIDENT writes it and as its own code reads it:

Layout ``<job>/<mag>x_<patch_size>px_<overlap>px_overlap/`` (Processor.py l.529; run_batch_of_slides.py l.329 names it
from ``--mag`` as ``f"{float(mag):g}"``), holding ``patches/<name>_patches.h5`` (WSI.py l.747) and
``features_<encoder>/<name>.h5`` (Processor.py l.763, WSI.py l.1026). ``<name>`` is the slide file's name without its
extension (WSI.py l.153; trident/IO.py l.17-26 counts .ome.tif(f) and .ome.zarr as one extension).

``patches/<name>_patches.h5`` (IO.coords_to_h5, l.646-688):
  ``coords`` int64 (M, 2), level-0 (x, y) top-left of every patch, with attributes
  ``patch_size`` int (px at the target magnification), ``patch_size_level0`` int (TRIDENT: patch_size · level0_mag //
  target_mag), ``level0_magnification``, ``target_magnification``, ``overlap`` int, ``name`` str, ``savetodir`` str,
  ``level0_width`` int, ``level0_height`` int.

``features_<encoder>/<name>.h5`` (WSI.extract_patch_features, l.1026-1034):
  ``features`` float32 (M, D) with attributes ``name``, ``savetodir``, ``encoder`` (the encoder's enc_name);
  ``coords`` int64 (M, 2) carrying every attribute of the patches file's coords (read with
  ``dict(f['coords'].attrs)``, IO.py l.603).

What TRIDENT's code needs from them: feature extraction at given coordinates reads ``patch_size``,
``level0_magnification`` and ``target_magnification`` (WSI.py l.930-946); its WSIPatcher then reads
round(patch_size · (10/target_mag) / (10/level0_mag)) level-0 px at each (x, y) and resizes to patch_size
(WSIPatcher.py l.135-147). Slide encoders (Titan, Prov-GigaPath, CARE: load.py l.351, 443, 477) read
``patch_size_level0`` from ``dict(f['coords'].attrs)`` (WSI.py l.1105, cast to int at l.1140); ``visualize_coords``
needs the same three as extraction (WSI.py l.775-782).

mixmag's choices within that format:
  - ``level0_magnification`` = 10 / slide mpp exactly (a float), not TRIDENT's bucketed integer (40 for 0.2631 um/px,
    WSI._fetch_magnification), so that TRIDENT reads mixmag's footprint: a 224 px 20x tile of a 0.2631 um/px slide is
    425.7 level-0 px, which TRIDENT then reads as 426 (with 40 it would read 448, 5% more tissue).
  - ``target_magnification`` = 10 / level mpp (5.0, 10.0, 20.0); ``patch_size`` = the tile size; ``overlap`` 0;
    ``patch_size_level0`` = the footprint rounded DOWN, the exact float in ``mixmag_patch_size_level0``. TRIDENT's
    slide encoders (CARE, Prov-GigaPath) place each patch on a grid at ``coords // patch_size_level0``; mixmag's
    rounded origins step by the floor or the ceiling of the footprint, so only the floor gives every patch its own
    grid position (with the rounded 426 at 0.2631 um/px, 36 of 720 positions received two patches, silently).
  - every extra attribute is named ``mixmag_*`` (TRIDENT copies the coords' extras into its feature files, so an import
    can check them): ``mixmag_slide_id``, ``mixmag_level_mpp``, ``mixmag_cell_px`` on coords; on exported features the
    store's encoder provenance, the slide id and the digest of coordinates and features together (files.encoder_extras).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..geometry import magnification_name
from ..ids import check_id, path_for_id
from ..slides.tiling import TilingPlan
from ..store import SlideStore
from .assemble import InteropError, assemble_store, read_level_file, refuse
from .files import encoder_extras, write_h5
from .grid import TOLERANCE_PX, rounded_origins
from .plans import files_for_slide, slide_name

SOURCE = "trident"


def job_folder(level_mpp: float, tile_px: int) -> str:
    """TRIDENT's folder for one magnification: what `run_batch_of_slides.py --mag M --patch_size P` looks in."""
    return f"{10 / level_mpp:g}x_{tile_px}px_0px_overlap"


def coords_attrs(plan: TilingPlan, level: int, name: str, savetodir: Path) -> dict:
    """The attributes of one level's `coords`, in TRIDENT's names and types, plus mixmag's extras."""
    level_mpp = plan.levels.mpp(level)
    footprint = plan.params.tile_px * level_mpp / plan.slide.mpp
    return {
        "patch_size": int(plan.params.tile_px),
        "patch_size_level0": int(math.floor(footprint + 1e-9)),  # floor: see the module docstring
        "level0_magnification": 10 / plan.slide.mpp,
        "target_magnification": 10 / level_mpp,
        "overlap": 0,
        "name": name,
        "savetodir": str(savetodir),
        "level0_width": int(plan.slide.width),
        "level0_height": int(plan.slide.height),
        "mixmag_patch_size_level0": float(footprint),
        "mixmag_slide_id": plan.slide.slide_id,
        "mixmag_level_mpp": float(level_mpp),
        "mixmag_cell_px": float(plan.cell_px),
    }


def write_coords(plan: TilingPlan, job: Path) -> list[Path]:
    """`<job>/<mag>x_<tile>px_0px_overlap/patches/<name>_patches.h5` for every level: mixmag's tiles as TRIDENT
    patch coordinates, named as TRIDENT names the slide file so its feature extraction finds them."""
    name = slide_name(plan.slide.path)
    cells = np.asarray(plan.cells, np.int64).reshape(-1, 2)
    written = []
    for level in range(plan.levels.n_levels):
        folder = Path(job) / job_folder(plan.levels.mpp(level), plan.params.tile_px)
        path = path_for_id(folder / "patches", name, "_patches.h5", what="TRIDENT slide name", where=plan.slide.path)
        write_h5(
            path, {"coords": (rounded_origins(cells, plan.cell_px, level), coords_attrs(plan, level, name, folder))}
        )
        written.append(path)
    return written


def export_store(store: SlideStore, plan: TilingPlan, out: Path) -> list[Path]:
    """`<out>/<mag>x_<tile>px_0px_overlap/features_<encoder>/<slide>.h5` per level, as TRIDENT's feature extraction
    writes them (the plan gives the slide's size)."""
    slide, encoder = store.header.slide_id, str(store.header.encoder)
    written = []
    for level, emb in enumerate(store.embeddings.values()):
        folder = Path(out) / job_folder(plan.levels.mpp(level), plan.params.tile_px)
        features_dir = path_for_id(folder, f"features_{encoder}", what="encoder folder", where=f"store {slide}")
        path = path_for_id(features_dir, slide, ".h5", where="the store's slide_id attribute")
        features = emb.reshape(-1, emb.shape[-1]).astype(np.float32)
        coords = rounded_origins(store.rc, plan.cell_px, level)
        features_attrs = {"name": slide, "savetodir": str(features_dir), "encoder": encoder} | encoder_extras(
            store, coords, features
        )
        write_h5(
            path, {"features": (features, features_attrs), "coords": (coords, coords_attrs(plan, level, slide, folder))}
        )
        written.append(path)
    return written


def encoders_in(job: Path, tile_px: int) -> list[str]:
    """Encoder names with a features_<encoder> folder under any of the job's mixmag-sized magnification folders."""
    return sorted(
        {
            p.name.removeprefix("features_")
            for p in Path(job).glob(f"*x_{tile_px}px_0px_overlap/features_*")
            if p.is_dir()
        }
    )


def import_slide(job: Path, plan: TilingPlan, plan_path: Path, encoder: str | None = None) -> SlideStore:
    """The store of one planned slide from TRIDENT feature files under `job`; each file's level is the one its own
    attributes declare, whatever folder it sits in."""
    job = Path(job)
    if encoder is not None:
        check_id(encoder, what="encoder name", where="--encoder")
    if encoder is None:
        found = encoders_in(job, plan.params.tile_px)
        if len(found) != 1:
            what = f"features of several encoders ({', '.join(found)})" if found else "no features_<encoder> folders"
            raise InteropError(
                f"{job}: {what} under *x_{plan.params.tile_px}px_0px_overlap/; "
                + (
                    "pass --encoder NAME"
                    if found
                    else "run TRIDENT's feature extraction on `mixmag store coords`' output first"
                )
            )
        encoder = found[0]
    paths = files_for_slide(plan, f"*x_{plan.params.tile_px}px_0px_overlap/features_{encoder}/{{name}}.h5", job)
    if not paths:
        raise InteropError(
            f"{plan.slide.slide_id}: no TRIDENT feature files for this slide in {job}/*x_{plan.params.tile_px}"
            f"px_0px_overlap/features_{encoder}/. Fix: extract features at every magnification"
        )
    files = [
        read_level_file(
            p, plan, "point at TRIDENT's job folder", lambda attrs, p=p: _check_coords_attrs(plan, p, attrs)
        )
        for p in paths
    ]
    return assemble_store(plan, plan_path, files, source=SOURCE, encoder=encoder)


def _check_coords_attrs(plan: TilingPlan, path: Path, attrs: dict) -> float:
    """The level mpp the file declares, after checking it was extracted at mixmag's tiles of this slide."""
    target = attrs.get("target_magnification")
    if not isinstance(target, (int, float)) or not target > 0:
        raise refuse(
            plan,
            "?",
            path,
            "coords have no target_magnification attribute",
            "use TRIDENT feature files, or --format clam for CLAM files",
        )
    level_mpp = 10 / float(target)
    name = magnification_name(level_mpp)
    tile_px = plan.params.tile_px
    problems = []
    if attrs.get("patch_size") != tile_px:
        problems.append(f"patch_size {attrs.get('patch_size')}, mixmag's tiles are {tile_px} px")
    level0_mag = attrs.get("level0_magnification")
    if isinstance(level0_mag, (int, float)) and level0_mag > 0 and isinstance(attrs.get("patch_size"), (int, float)):
        read_px = attrs["patch_size"] * level0_mag / float(target)
        exact = tile_px * level_mpp / plan.slide.mpp
        if abs(read_px - exact) > TOLERANCE_PX:
            problems.append(
                f"TRIDENT read {read_px:.1f} level-0 px per tile (level0_magnification {level0_mag:g}), "
                f"mixmag's {name} tiles are {exact:.1f} px"
            )
    else:
        problems.append("no level0_magnification attribute")
    if (attrs.get("level0_width"), attrs.get("level0_height")) != (plan.slide.width, plan.slide.height):
        problems.append(
            f"a slide of {attrs.get('level0_width')} x {attrs.get('level0_height')} px, the plan's is "
            f"{plan.slide.width} x {plan.slide.height}"
        )
    if attrs.get("overlap", 0) != 0:
        problems.append(f"overlap {attrs.get('overlap')}")
    if problems:
        raise refuse(
            plan,
            name,
            path,
            "not extracted at mixmag's tiles of this slide: " + "; ".join(problems),
            "write coordinates with `mixmag store coords` and extract features with TRIDENT at them",
        )
    return level_mpp
