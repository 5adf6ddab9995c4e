"""The per-slide store: one HDF5 file of tile embeddings at every level, with full provenance.

Layout (DESIGN §3): /cells/rc (N, 2) int32, /cells/tissue (N,) float32, /emb/<level> (N, 4^i, D)
float16 with sub-tiles row-major, and attributes naming the slide, the tiling and the encoder.
Written under a temporary name and renamed, so a store that exists is complete.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .errors import MixmagError, MixmagWarning
from .fileio import hdf5_atomic
from .slides.tiling import TilingPlan, plan_digest

STORE_FORMAT_VERSION = 1
STORE_SUFFIX = ".h5"
# provenance that must agree between the stores a model was trained on and the ones it predicts on
STORE_MUST_MATCH = ("encoder", "encoder_weights_digest", "encoder_output", "embedding_dim", "level_mpps", "tile_px", "region_size")


# how pixels were read, tissue found and the encoder run: stores that differ here still share one embedding space
STORE_SHOULD_MATCH = ("tiling_params", "read_mode", "context_size", "compute_dtype", "tissue_model")


class StoreError(MixmagError):
    pass


class MixedStoresWarning(MixmagWarning):
    """Stores of one cohort made with different tiling, read mode, tissue model or precision."""


@dataclass
class SlideStore:
    """A store in memory: cells, tissue, one embedding array per level (coarsest first), provenance."""

    rc: np.ndarray
    tissue: np.ndarray
    embeddings: dict[str, np.ndarray]
    attrs: dict
    windows: dict[str, np.ndarray] = field(default_factory=dict)  # "regions" / "contexts": top-left (row, col)

    @property
    def level_names(self) -> list[str]:
        return list(self.embeddings)

    @property
    def dim(self) -> int:
        return int(next(iter(self.embeddings.values())).shape[-1])

    def __len__(self) -> int:
        return int(self.rc.shape[0])


def store_path(out_dir: str | Path, slide_id: str) -> Path:
    return Path(out_dir) / f"{slide_id}{STORE_SUFFIX}"


def write_store(path: str | Path, store: SlideStore) -> Path:
    """Validate, then write atomically (built in memory, one write to a unique temporary name, fsync, rename)."""
    path = Path(path)
    problems = store_problems(store)
    if problems:
        raise StoreError(f"{path}: refusing to write an invalid store: " + "; ".join(problems))
    with hdf5_atomic(path) as f:
        f.create_dataset("cells/rc", data=store.rc.astype(np.int32))
        f.create_dataset("cells/tissue", data=store.tissue.astype(np.float32))
        for name, emb in store.embeddings.items():
            f.create_dataset(f"emb/{name}", data=emb.astype(np.float16), chunks=_chunks(emb))
        for name, rc in store.windows.items():
            f.create_dataset(f"windows/{name}", data=np.asarray(rc, np.int32).reshape(-1, 2))
        attrs = {"format_version": STORE_FORMAT_VERSION, "mixmag_version": __version__} | store.attrs
        attrs["level_names"] = list(store.embeddings)
        for key, value in attrs.items():
            f.attrs[key] = _attr(value)
    return path


def store_size_lower_bound(n_cells: int, n_levels: int, dim: int) -> int:
    """Bytes a store's float16 embeddings take at least (HDF5 adds headers, cells and attributes on top)."""
    return n_cells * sum(4**i for i in range(n_levels)) * dim * 2


def _chunks(emb: np.ndarray) -> tuple[int, ...] | None:
    if emb.shape[0] == 0:
        return None
    return (min(emb.shape[0], 64),) + emb.shape[1:]


def _attr(value):
    if isinstance(value, (dict, list, tuple)) or value is None:
        return json.dumps(value)
    return value


def pipeline_settings(attrs: dict) -> dict:
    """How a store was made, as far as new slides' stores must repeat it: the provenance that must
    match, plus the tiling parameters and read mode that produce it."""
    return {k: attrs.get(k) for k in (*STORE_MUST_MATCH, *STORE_SHOULD_MATCH)}


def embedding_space(settings: dict) -> dict:
    """The part of a store's provenance (pipeline_settings) that fixes what its embeddings mean."""
    return {k: settings.get(k) for k in STORE_MUST_MATCH}


def shared_settings(paths: Sequence[str | Path]) -> dict:
    """The pipeline settings a set of stores (a cohort, a pretraining folder) has in common.

    Refuses stores made with another encoder, weights, output, levels, tile or region size: their
    embeddings live in different spaces, and one model over them would be silently wrong. Warns
    where they differ only in tiling, read mode, tissue model or precision; the most common value is kept."""
    return settings_in_common([(pipeline_settings(read_attrs(p)), 1, Path(p)) for p in paths])


def settings_in_common(groups: Sequence[tuple[dict, int, Path]]) -> dict:
    """shared_settings over groups of stores: (pipeline settings, how many stores have them, one of them);
    a catalog checks a million stores as a handful of distinct settings."""
    if not groups:
        raise StoreError("no stores given")
    kept = {}
    for key in (*STORE_MUST_MATCH, *STORE_SHOULD_MATCH):
        counts: dict[str, list] = {}
        for s, n, example in groups:
            entry = counts.setdefault(json.dumps(s[key], sort_keys=True), [0, example])
            entry[0] += n
        common = max(counts, key=lambda v: counts[v][0])
        kept[key] = json.loads(common)
        if len(counts) == 1:
            continue
        detail = "; ".join(f"{v} in {n} store(s), e.g. {g}" for v, (n, g) in sorted(counts.items(), key=lambda i: -i[1][0]))
        if key in STORE_MUST_MATCH:
            raise StoreError(f"the stores were made differently ({key}: {detail}); embeddings of different encoders or "
                             "tilings cannot be mixed: re-tile/re-embed the odd ones with the others' settings "
                             "(`mixmag embed --force`), or keep them in separate folders")
        warnings.warn(MixedStoresWarning(f"the stores differ in {key} ({detail}); recorded for prediction: {common}"), stacklevel=3)
    return kept


def read_attrs(path: str | Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: _decode_attr(v) for k, v in f.attrs.items()}


def _decode_attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{n":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class StoreIndex:
    """Where a store's embeddings lie, without reading them: cells, windows, level names, provenance."""

    rc: np.ndarray
    windows: dict[str, np.ndarray]
    level_names: list[str]
    attrs: dict


def read_index(path: str | Path) -> StoreIndex:
    """The index of a store: cheap next to read_store on a large slide (no embeddings are read)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
            return StoreIndex(
                rc=f["cells/rc"][()],
                windows={name: f[f"windows/{name}"][()] for name in f.get("windows", {})},
                level_names=list(attrs.get("level_names") or f["emb"]),
                attrs=attrs,
            )
    except (OSError, KeyError) as exc:
        raise StoreError(f"{path}: not a readable mixmag store ({type(exc).__name__}: {exc}); delete it and re-run `mixmag embed`.") from exc


def read_store(path: str | Path, *, validate: bool = True) -> SlideStore:
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: store not found; run `mixmag embed` first.")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
            names = attrs.get("level_names") or list(f["emb"])
            store = SlideStore(
                rc=f["cells/rc"][()],
                tissue=f["cells/tissue"][()],
                embeddings={name: f[f"emb/{name}"][()] for name in names},
                attrs=attrs,
                windows={name: f[f"windows/{name}"][()] for name in f.get("windows", {})},
            )
    except (OSError, KeyError) as exc:
        raise StoreError(f"{path}: not a readable mixmag store ({type(exc).__name__}: {exc}); delete it and re-run `mixmag embed`.") from exc
    if validate:
        problems = store_problems(store)
        if problems:
            raise StoreError(f"{path}: invalid store: " + "; ".join(problems))
    return store


def store_problems(store: SlideStore) -> list[str]:
    """Everything wrong with a store: shapes, dtypes, non-finite values, missing provenance."""
    problems = []
    n = store.rc.shape[0] if store.rc.ndim == 2 else -1
    if store.rc.ndim != 2 or store.rc.shape[1] != 2:
        problems.append(f"cells/rc has shape {store.rc.shape}, expected (N, 2)")
    if store.tissue.shape != (n,):
        problems.append(f"cells/tissue has shape {store.tissue.shape}, expected ({n},)")
    if n > 0 and len({tuple(r) for r in store.rc.tolist()}) != n:
        problems.append("cells/rc holds duplicate cells")
    dims = set()
    for i, (name, emb) in enumerate(store.embeddings.items()):
        expected = 4**i
        if emb.ndim != 3 or emb.shape[0] != n or emb.shape[1] != expected:
            problems.append(f"emb/{name} has shape {emb.shape}, expected ({n}, {expected}, D)")
        if emb.dtype.kind != "f":
            problems.append(f"emb/{name} has dtype {emb.dtype}, expected float")
        elif emb.size and not np.isfinite(emb).all():
            bad = int((~np.isfinite(emb)).any(axis=(1, 2)).sum()) if emb.ndim == 3 else -1
            problems.append(f"emb/{name} holds NaN or Inf values ({bad} cells)")
        if emb.ndim == 3:
            dims.add(emb.shape[2])
    if len(dims) > 1:
        problems.append(f"levels disagree on the embedding dimension: {sorted(dims)}")
    for key in ("slide_id", "encoder", "encoder_weights_digest", "level_mpps", "slide_mpp"):
        if key not in store.attrs:
            problems.append(f"provenance attribute {key!r} missing")
    return problems


def plan_provenance(plan_path: str | Path, plan: TilingPlan) -> dict:
    """The store attributes that name the slide and the tiling plan a store's cells come from; the encoder's part
    (name, weights, output, precision, read mode) is added by whoever made the embeddings."""
    return {
        "slide_id": plan.slide.slide_id,
        "slide_path": plan.slide.path,
        "slide_size_bytes": plan.slide.size_bytes,
        "slide_mtime": plan.slide.mtime,
        "reader_backend": plan.slide.backend,
        "slide_mpp": plan.slide.mpp,
        "mpp_source": plan.slide.mpp_source,
        "level_mpps": list(plan.levels.mpps),
        "tile_px": plan.params.tile_px,
        "cell_um": plan.levels.cell_um,
        "cell_px": plan.cell_px,
        "region_size": plan.params.region_size,
        "context_size": plan.params.context_size,
        "tiling_params": plan.params.model_dump(),
        "tissue_model": plan.tissue_model,
        "plan_digest": plan_digest(plan_path),
        "plan_path": str(Path(plan_path).resolve()),
    }


def store_from_plan(plan: TilingPlan, levels: Sequence[np.ndarray], attrs: dict) -> SlideStore:
    """A store of a plan's cells (in plan order), its tissue and windows, with one embedding array per level."""
    return SlideStore(
        rc=np.asarray(plan.cells, np.int32).reshape(-1, 2),
        tissue=np.asarray(plan.cell_tissue, np.float32),
        embeddings=dict(zip(plan.levels.names, levels)),
        attrs=attrs,
        windows={"regions": np.asarray(plan.regions, np.int32).reshape(-1, 2),
                 "contexts": np.asarray(plan.contexts, np.int32).reshape(-1, 2)},
    )
