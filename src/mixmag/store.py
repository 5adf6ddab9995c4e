"""The per-slide store: one HDF5 file of tile embeddings at every level, with full provenance.

Layout (DESIGN §3): /cells/rc (N, 2) int32, /cells/tissue (N,) float32, /emb/<level> (N, 4^i, D)
float16 with sub-tiles row-major, and attributes naming the slide, the tiling and the encoder.
Written under a temporary name and renamed, so a store that exists is complete.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeGuard

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from . import __version__
from .encoders.names import current_name
from .errors import MixmagError, MixmagWarning
from .fileio import hdf5_atomic, open_hdf5
from .ids import ID_RULE, is_safe_id
from .markup import utf8_path
from .slides.tiling import TilingPlan, plan_digest

STORE_FORMAT_VERSION = 1
STORE_SUFFIX = ".h5"
# A store is untrusted input: its header is checked against these before any array is read, so a forged or damaged
# file is one sentence, never a multi-terabyte allocation. They are far above any real slide (a 10 x 10 cm slide at
# 448 um cells is 223 x 223 cells; the widest foundation-model output here is 2560-d).
EMBEDDING_DTYPES = (np.dtype("float16"), np.dtype("float32"))  # float16 as written; float32 from other tools
MAX_CELLS = 1 << 22
MAX_LEVELS = 6
MAX_DIM = 1 << 14
MAX_GRID_SIDE = 1 << 13  # cells per grid side, for stores that do not record their grid (older, synthetic)
MAX_EMBEDDING_BYTES = 256 << 30
_MAX_COMPRESSION = 1100  # deflate cannot shrink data more than about 1032:1


class StoreError(MixmagError):
    pass


class MixedStoresWarning(MixmagWarning):
    """Stores of one cohort made with different tiling, read mode, tissue model or precision."""


NEWER_FIELDS = frozenset({"pooled_from"})  # settings newer than the records (catalog rows, checkpoints) they must equal


class EmbeddingSpace(BaseModel):
    """What fixes what the embeddings mean: the encoder, its weights and output, the dimension, the levels, the tile
    and region size. Stores of two spaces never mix; `mixer.json` records the space a mixer was pretrained in."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    encoder: str | None = None
    encoder_weights_digest: str | None = None
    encoder_output: str | None = None
    embedding_dim: int | None = None
    level_mpps: list[float] | None = None
    tile_px: int | None = None
    region_size: int | None = None
    pooled_from: str | None = None  # coarser levels made from this level's features alone (`mixmag store pool`)

    @field_validator("encoder")
    @classmethod
    def _current_encoder_name(cls, name: str | None) -> str | None:
        """Stores made before presets took TRIDENT's names (`uni`, `prov-gigapath`) share the space of new ones."""
        return current_name(name)

    @classmethod
    def of(cls, value: Self | dict[str, Any]) -> Self:
        """The record itself, or the record of a dict holding its fields (others are ignored)."""
        return value if isinstance(value, cls) else cls.model_validate(value)

    @property
    def space(self) -> EmbeddingSpace:
        """The embedding space alone (a record that holds more gives its part)."""
        return EmbeddingSpace.model_validate(self.model_dump(include=set(EmbeddingSpace.model_fields)))

    def differences(self, other: EmbeddingSpace) -> list[str]:
        """The fields of the space this record sets (older records set fewer) where `other` holds another value."""
        return [
            k
            for k in EmbeddingSpace.model_fields
            if k in self.model_fields_set and getattr(other, k) != getattr(self, k)
        ]

    def key(self) -> str:
        """JSON with sorted keys: equal text for equal settings (catalog rows, checkpoints compare it). A field newer
        than the records it must equal (`pooled_from`) is left out while unset."""
        unset = {k for k in NEWER_FIELDS if getattr(self, k) is None}
        return json.dumps(self.model_dump(exclude=unset), sort_keys=True)


class PipelineSettings(EmbeddingSpace):
    """The embedding space plus how pixels were read, tissue found and the encoder run: a new slide's store must
    repeat these; stores that differ only in these share one embedding space (a warning, not a refusal)."""

    tiling_params: dict[str, Any] | None = None
    read_mode: str | None = None
    context_size: int | None = None
    compute_dtype: str | None = None
    tissue_model: str | None = None

    @property
    def settings(self) -> PipelineSettings:
        """These settings alone (a record that holds more, a store header or pipeline.json, gives its part)."""
        return PipelineSettings.model_validate(self.model_dump(include=set(PipelineSettings.model_fields)))


class StoreHeader(PipelineSettings):
    """A store's provenance, all its attributes, as one record: read from and written to the flat HDF5 attributes
    (lists, dicts and None as JSON text), so the file format does not change. Older stores lack some fields (None);
    attributes this mixmag does not know are kept as they are."""

    model_config = ConfigDict(frozen=True, extra="allow")

    format_version: int | None = None
    mixmag_version: str | None = None
    slide_id: str | None = None
    slide_path: str | None = None
    slide_size_bytes: int | None = None
    slide_mtime: float | None = None
    reader_backend: str | None = None
    slide_mpp: float | None = None
    mpp_source: str | None = None
    cell_um: float | None = None
    cell_px: float | None = None
    grid_shape: list[int] | None = None
    level_names: list[str] | None = None
    plan_digest: str | None = None
    plan_path: str | None = None
    read_mpps: list[float] | None = None

    @classmethod
    def of(cls, value: StoreHeader | dict[str, Any]) -> StoreHeader:
        """A header, or the header of the flat attributes `read_attrs` gives."""
        return value if isinstance(value, StoreHeader) else cls.from_attrs(value)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Self:
        """The header of decoded attributes; a value of the wrong type is a StoreError (`header_problems`)."""
        try:
            return cls.model_validate(attrs)
        except ValidationError as exc:
            raise StoreError("invalid store: " + "; ".join(_validation_problems(exc)) + f"; {_UNREADABLE}.") from None

    def to_attrs(self) -> dict[str, Any]:
        """The flat attributes as written: only those the store was given (older stores keep their set)."""
        return self.model_dump(exclude_unset=True)

    def same_making(self, other: StoreHeader) -> bool:
        """Made from the same plan by the same encoder, weights, output, dimension and read mode: an embed rerun
        keeps such a store."""
        return self.plan_digest == other.plan_digest and all(
            getattr(self, k) == getattr(other, k) for k in ENCODER_FIELDS if k != "compute_dtype"
        )

    @property
    def encoder_record(self) -> dict[str, Any]:
        """Who made the embeddings (encoder, weights, output, dimension, precision, read mode), as exports record
        it next to the features they write (`mixmag.interop.files:encoder_extras`)."""
        return {k: getattr(self, k) for k in ENCODER_FIELDS}


ENCODER_FIELDS = ("encoder", "encoder_weights_digest", "encoder_output", "embedding_dim", "compute_dtype", "read_mode")


def _validation_problems(exc: ValidationError) -> list[str]:
    return [
        f"attribute {'.'.join(map(str, e['loc']))} is {e.get('input')!r} ({e['msg'].lower()})" for e in exc.errors()
    ]


def header_problems(attrs: dict[str, Any]) -> list[str]:
    """Attributes whose value does not fit the header's type (a number that is text, a list that is not)."""
    try:
        StoreHeader.model_validate(attrs)
    except ValidationError as exc:
        return _validation_problems(exc)
    return []


@dataclass
class SlideStore:
    """A store in memory: cells, tissue, one embedding array per level (coarsest first), provenance."""

    rc: np.ndarray
    tissue: np.ndarray
    embeddings: dict[str, np.ndarray]
    attrs: dict[str, Any]
    windows: dict[str, np.ndarray] = field(default_factory=dict)  # "regions" / "contexts": top-left (row, col)

    @property
    def header(self) -> StoreHeader:
        """The attributes as a typed record (a store read from a file was checked; one built in memory is here)."""
        return StoreHeader.from_attrs(self.attrs)

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
        write_store_into(f, store)
    return path


def write_store_into(f: h5py.File, store: SlideStore) -> None:
    """A store's datasets and attributes into an open HDF5 file (`write_store`'s one layout; also used in memory to
    measure what a store will take, `mixmag.stages.bill`)."""
    f.create_dataset("cells/rc", data=store.rc.astype(np.int32))
    f.create_dataset("cells/tissue", data=store.tissue.astype(np.float32))
    for name, emb in store.embeddings.items():
        f.create_dataset(f"emb/{name}", data=emb.astype(np.float16), chunks=_chunks(emb))
    for name, rc in store.windows.items():
        f.create_dataset(f"windows/{name}", data=np.asarray(rc, np.int32).reshape(-1, 2))
    header = StoreHeader.from_attrs(
        {"format_version": STORE_FORMAT_VERSION, "mixmag_version": __version__}
        | store.attrs
        | {"level_names": list(store.embeddings)}
    )
    for key, value in header.to_attrs().items():
        f.attrs[key] = _attr(value)


def store_size_lower_bound(n_cells: int, n_levels: int, dim: int) -> int:
    """Bytes a store's float16 embeddings take at least (HDF5 adds headers, cells and attributes on top)."""
    return int(n_cells * sum(4**i for i in range(n_levels)) * dim * 2)


def _chunks(emb: np.ndarray) -> tuple[int, ...] | None:
    if emb.shape[0] == 0:
        return None
    return (min(emb.shape[0], 64),) + emb.shape[1:]


def _attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)) or value is None:
        return json.dumps(value)
    return value


def shared_settings(paths: Sequence[str | Path]) -> PipelineSettings:
    """The shared settings: the pipeline settings a set of stores (a cohort, a pretraining folder) has in common.

    Refuses stores made with another encoder, weights, output, levels, tile or region size: their
    embeddings live in different spaces, and one model over them would be silently wrong. Warns
    where they differ only in tiling, read mode, tissue model or precision; the most common value is kept."""
    return shared_settings_of_groups([(read_header(p).settings, 1, Path(p)) for p in paths])


def shared_settings_of_groups(groups: Sequence[tuple[PipelineSettings, int, Path]]) -> PipelineSettings:
    """The shared settings of groups of stores: (pipeline settings, how many stores have them, one of them);
    a catalog checks a million stores as a handful of distinct settings."""
    if not groups:
        raise StoreError("no stores given")
    kept = {}
    for key in PipelineSettings.model_fields:
        counts: dict[str, list[Any]] = {}
        for s, n, example in groups:
            entry = counts.setdefault(json.dumps(getattr(s, key), sort_keys=True), [0, example])
            entry[0] += n
        common = max(counts, key=lambda v: counts[v][0])
        kept[key] = json.loads(common)
        if len(counts) == 1:
            continue
        detail = "; ".join(
            f"{v} in {n} store(s), e.g. {g}" for v, (n, g) in sorted(counts.items(), key=lambda i: -i[1][0])
        )
        if key in EmbeddingSpace.model_fields:
            raise StoreError(
                f"the stores were made differently ({key}: {detail}); embeddings of different encoders or "
                "tilings cannot be mixed: re-tile/re-embed the odd ones with the others' settings "
                "(`mixmag embed --force`), or keep them in separate folders"
            )
        warnings.warn(
            MixedStoresWarning(f"the stores differ in {key} ({detail}); recorded for prediction: {common}"),
            stacklevel=3,
        )
    return PipelineSettings.model_validate(kept)


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The flat attributes, decoded (JSON text back to lists, dicts and None); `read_header` types them."""
    with open_hdf5(path) as f:
        return decode_attrs(f.attrs)


def decode_attrs(attrs: h5py.AttributeManager) -> dict[str, Any]:
    return {k: _decode_attr(v) for k, v in attrs.items()}


def read_header(path: str | Path) -> StoreHeader:
    """A store's provenance as one typed record, from its attributes alone (no dataset is read)."""
    try:
        return StoreHeader.from_attrs(read_attrs(path))
    except StoreError as exc:
        raise StoreError(f"{path}: {exc}") from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:  # not HDF5, gone, damaged
        why = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise StoreError(f"{path}: not a readable mixmag store ({type(exc).__name__}: {why}); {_UNREADABLE}.") from None


def _decode_attr(value: Any) -> Any:
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
    attrs: dict[str, Any]
    dim: int = 0  # embedding dimension D

    @property
    def header(self) -> StoreHeader:
        return StoreHeader.from_attrs(self.attrs)


def read_index(path: str | Path) -> StoreIndex:
    """The index of a store: cheap next to read_store on a large slide (no embeddings are read). The header is
    checked first (shapes, dtypes, sizes) and the cells must lie in the slide's grid."""
    path = Path(path)
    with _open_store(path) as (f, attrs, names):
        index = StoreIndex(
            rc=f["cells/rc"][()],
            windows={name: f[f"windows/{name}"][()] for name in f.get("windows", {})},
            level_names=names,
            attrs=attrs,
            dim=int(f[f"emb/{names[0]}"].shape[-1]),
        )
    problems = _id_problems(attrs) + _geometry_problems(attrs) + _cell_problems(
        index.rc, index.windows, attrs
    ) or header_problems(attrs)
    if problems:
        raise StoreError(f"{path}: invalid store: " + "; ".join(problems))
    return index


def read_store(path: str | Path, *, validate: bool = True, levels: Sequence[str] | None = None) -> SlideStore:
    """The whole store, or with `levels` only those levels' embeddings (a 20x bag need not read 5x and 10x; levels the
    store lacks are left out, `attrs["level_names"]` still names all). The header is checked before anything is read."""
    path = Path(path)
    with _open_store(path) as (f, attrs, names):
        if levels is not None:
            attrs["level_names"] = names  # each level read keeps its index (4^i tiles a cell) for the checks
        store = SlideStore(
            rc=f["cells/rc"][()],
            tissue=f["cells/tissue"][()],
            embeddings={name: f[f"emb/{name}"][()] for name in names if levels is None or name in levels},
            attrs=attrs,
            windows={name: f[f"windows/{name}"][()] for name in f.get("windows", {})},
        )
    if validate:
        problems = store_problems(store)
        if problems:
            raise StoreError(f"{path}: invalid store: " + "; ".join(problems))
    return store


_UNREADABLE = "delete it and re-run `mixmag embed`"


@contextmanager
def _open_store(path: Path) -> Iterator[tuple[h5py.File, dict[str, Any], list[str]]]:
    """An open store whose header passed `layout_problems`, its attributes and level names; any failure to read
    it is a StoreError naming the file."""
    if not path.is_file():
        raise StoreError(f"{path}: store not found; run `mixmag embed` first.")
    try:
        with open_hdf5(path) as f:
            attrs = decode_attrs(f.attrs)
            problems = layout_problems(f, attrs)
            if problems:
                raise StoreError(f"{path}: invalid store: " + "; ".join(problems) + f"; {_UNREADABLE}.")
            yield f, attrs, _level_names(f, attrs)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise StoreError(f"{path}: not a readable mixmag store ({type(exc).__name__}: {exc}); {_UNREADABLE}.") from exc


def _level_names(f: h5py.File, attrs: dict[str, Any]) -> list[str]:
    names = attrs.get("level_names")
    return list(names) if isinstance(names, list) else list(f.get("emb", {}))


def layout_problems(f: h5py.File, attrs: dict[str, Any]) -> list[str]:
    """What is wrong with a store's header, from the declared shapes, dtypes and storage alone (nothing is read):
    the datasets a store must have, consistent with each other and within MAX_* limits."""
    names = attrs.get("level_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return [f"attribute level_names is {names!r}, not a list of level names"]
    names = _level_names(f, attrs)
    for group in ("cells", "emb", "windows"):
        if group in f and not isinstance(f[group], h5py.Group):
            return [f"{group} is not a group of datasets"]
    needed = ["cells/rc", "cells/tissue"] + [f"emb/{n}" for n in names] + [f"windows/{n}" for n in f.get("windows", {})]
    absent = [n for n in needed if not isinstance(f.get(n), h5py.Dataset)]
    if absent:
        return [f"no dataset {', '.join(absent)}"]
    if not names:
        return ["no embeddings (emb/<level>)"]
    if len(names) > MAX_LEVELS:
        return [f"{len(names)} levels declared (at most {MAX_LEVELS})"]
    rc, tissue = f["cells/rc"], f["cells/tissue"]
    problems = []
    if rc.ndim != 2 or rc.shape[1] != 2 or rc.dtype.kind not in "iu":
        problems.append(f"cells/rc is {rc.dtype} {rc.shape}, expected integer (N, 2)")
    n = rc.shape[0] if rc.ndim else -1
    if n > MAX_CELLS:
        problems.append(f"cells/rc declares {n} cells (at most {MAX_CELLS})")
    if tissue.shape != (n,) or tissue.dtype.kind != "f":
        problems.append(f"cells/tissue is {tissue.dtype} {tissue.shape}, expected float ({n},)")
    for name in f.get("windows", {}):
        w = f[f"windows/{name}"]
        if w.ndim != 2 or w.shape[1] != 2 or w.dtype.kind not in "iu" or w.shape[0] > MAX_CELLS:
            problems.append(f"windows/{name} is {w.dtype} {w.shape}, expected integer (W, 2) with W <= {MAX_CELLS}")
    total = 0
    for i, name in enumerate(names):
        emb = f[f"emb/{name}"]
        if emb.ndim != 3 or emb.shape[0] != n or emb.shape[1] != 4**i or not 1 <= emb.shape[2] <= MAX_DIM:
            problems.append(
                f"emb/{name} declares shape {emb.shape}, expected ({n}, {4**i}, D) with 1 <= D <= {MAX_DIM}"
            )
        if emb.dtype not in EMBEDDING_DTYPES:
            problems.append(f"emb/{name} is {emb.dtype}; embeddings are float16 (or float32)")
        total += emb.size * emb.dtype.itemsize
    if total > MAX_EMBEDDING_BYTES:
        problems.append(f"the embeddings declare {total / 2**30:.0f} GiB (at most {MAX_EMBEDDING_BYTES >> 30} GiB)")
    if problems:
        return problems
    for dset in (rc, tissue, *(f[f"emb/{n}"] for n in names)):
        stored = dset.id.get_storage_size()
        filtered = bool(dset.compression) or bool(getattr(dset, "_filters", None))
        if dset.size and (stored * _MAX_COMPRESSION < dset.nbytes if filtered else stored < dset.nbytes):
            problems.append(
                f"{dset.name} declares {dset.nbytes} bytes but the file holds {stored} for it (truncated or forged)"
            )
    return problems


def _id_problems(attrs: dict[str, Any]) -> list[str]:
    sid = attrs.get("slide_id")
    if "slide_id" in attrs and not is_safe_id(sid):  # it names exported files and heatmaps
        return [f"attribute slide_id {sid!r} is not a safe file name ({ID_RULE})"]
    return []


def _geometry_problems(attrs: dict[str, Any]) -> list[str]:
    """The numbers that place cells on the slide (cell_px, slide_mpp, level_mpps) must be finite and positive, and a
    cell's level-0 pixel position must fit the int32 coordinates TRIDENT and CLAM files hold."""
    problems = []
    for key in ("cell_px", "slide_mpp", "cell_um"):
        value = attrs.get(key)
        if key in attrs and not (_is_number(value) and math.isfinite(value) and value > 0):
            problems.append(f"attribute {key} {value!r} is not a finite positive number")
    mpps = attrs.get("level_mpps")
    if "level_mpps" in attrs and not (
        isinstance(mpps, list) and all(_is_number(m) and math.isfinite(m) and m > 0 for m in mpps)
    ):
        problems.append(f"attribute level_mpps {mpps!r} is not a list of finite positive numbers")
    if problems or not _is_number(attrs.get("cell_px")):
        return problems
    grid = attrs.get("grid_shape")
    side = max(grid) if isinstance(grid, list) and grid and all(isinstance(v, int) for v in grid) else MAX_GRID_SIDE
    if (side + 1) * attrs["cell_px"] >= 2**31:
        problems.append(f"attribute cell_px {attrs['cell_px']!r} puts cells beyond 2^31 level-0 pixels")
    return problems


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _cell_problems(rc: np.ndarray, windows: dict[str, np.ndarray], attrs: dict[str, Any]) -> list[str]:
    """Cells and windows must lie in the slide's grid (its recorded grid_shape, else MAX_GRID_SIDE a side)."""
    grid = attrs.get("grid_shape")
    if grid is not None and not (
        isinstance(grid, list) and len(grid) == 2 and all(isinstance(v, int) and 0 <= v <= MAX_GRID_SIDE for v in grid)
    ):
        return [f"attribute grid_shape {grid!r} is not [rows, cols] with at most {MAX_GRID_SIDE} a side"]
    rows, cols = grid or (MAX_GRID_SIDE, MAX_GRID_SIDE)
    where = f"the slide's {rows} x {cols} grid" if grid else f"a {MAX_GRID_SIDE} x {MAX_GRID_SIDE} grid"
    problems = []
    for name, cells, size in [
        ("cells/rc", rc, 1),
        *((f"windows/{k}", w, _window_size(k, attrs)) for k, w in windows.items()),
    ]:
        if cells.ndim != 2 or cells.shape[1] != 2 or not cells.size:
            continue
        low, high = cells.min(axis=0), cells.max(axis=0)
        if low.min() < 0 or high[0] + size > rows or high[1] + size > cols:
            problems.append(
                f"{name} holds cells outside {where} (rows {low[0]}..{high[0] + size - 1}, cols "
                f"{low[1]}..{high[1] + size - 1})"
            )
    return problems


def _window_size(kind: str, attrs: dict[str, Any]) -> int:
    size = attrs.get("context_size") if kind == "contexts" else attrs.get("region_size")
    return size if isinstance(size, int) and size > 0 else 1


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
    names = store.attrs.get("level_names")
    names = names if isinstance(names, list) and set(store.embeddings) <= set(names) else list(store.embeddings)
    for name, emb in store.embeddings.items():
        expected = 4 ** names.index(name)  # a store read with only some levels keeps each level's own index
        if emb.ndim != 3 or emb.shape[0] != n or emb.shape[1] != expected:
            problems.append(f"emb/{name} has shape {emb.shape}, expected ({n}, {expected}, D)")
        if emb.dtype.kind != "f":
            problems.append(f"emb/{name} has dtype {emb.dtype}, expected float")
        elif emb.size and not all_finite(emb):
            bad = int((~np.isfinite(emb)).any(axis=(1, 2)).sum()) if emb.ndim == 3 else -1
            problems.append(f"emb/{name} holds NaN or Inf values ({bad} cells)")
        if emb.ndim == 3:
            dims.add(emb.shape[2])
    if len(dims) > 1:
        problems.append(f"levels disagree on the embedding dimension: {sorted(dims)}")
    declared = store.attrs.get("embedding_dim")
    if declared is not None and len(dims) == 1 and declared != next(iter(dims)):
        problems.append(f"attribute embedding_dim is {declared!r} but the embeddings are {next(iter(dims))}-d")
    for key in ("slide_id", "encoder", "encoder_weights_digest", "level_mpps", "slide_mpp"):
        if key not in store.attrs:
            problems.append(f"provenance attribute {key!r} missing")
    problems += _id_problems(store.attrs) + _geometry_problems(store.attrs)
    if store.rc.ndim == 2 and store.rc.dtype.kind in "iu":
        problems += _cell_problems(store.rc, store.windows, store.attrs)
    return problems or header_problems(store.attrs)  # the types last: today's sentences stay where they apply


_EXPONENT_BITS = {2: (np.uint16, 0x7C00), 4: (np.uint32, 0x7F800000), 8: (np.uint64, 0x7FF0000000000000)}
_FINITE_CHECK_BLOCK = 1 << 18  # elements a block: the block's temporaries stay in cache, none of the bag's size


def all_finite(values: np.ndarray) -> bool:
    """np.isfinite(values).all() in a tenth of the time for IEEE floats (checked on every bag read: ~30 MB a slide):
    a value is NaN or Inf exactly when its exponent bits are all ones, i.e. when its bits without the sign, read as an
    unsigned integer, reach the exponent mask. Checked a block at a time, so no temporary as large as the bag is
    allocated (fresh pages for one cost more than the check)."""
    bits = _EXPONENT_BITS.get(values.dtype.itemsize) if values.dtype.kind == "f" else None
    if bits is None or not values.flags.c_contiguous:
        return bool(np.isfinite(values).all())
    view, exponent = bits
    magnitude = view((1 << (8 * values.dtype.itemsize - 1)) - 1)
    flat = values.reshape(-1).view(view)
    for start in range(0, flat.size, _FINITE_CHECK_BLOCK):
        if (flat[start : start + _FINITE_CHECK_BLOCK] & magnitude).max() >= exponent:
            return False
    return True


def plan_provenance(plan_path: str | Path, plan: TilingPlan) -> dict[str, Any]:
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
        "grid_shape": [plan.n_rows, plan.n_cols],  # cells/rc must lie inside it (checked whenever a store is read)
        "region_size": plan.params.region_size,
        "context_size": plan.params.context_size,
        "tiling_params": plan.params.recorded(),
        "tissue_model": plan.tissue_model,
        "plan_digest": plan_digest(plan_path),
        "plan_path": str(utf8_path(Path(plan_path).resolve(), "tiling plan")),  # HDF5 text is UTF-8
    }


def store_from_plan(plan: TilingPlan, levels: Sequence[np.ndarray], attrs: dict[str, Any]) -> SlideStore:
    """A store of a plan's cells (in plan order), its tissue and windows, with one embedding array per level."""
    return SlideStore(
        rc=np.asarray(plan.cells, np.int32).reshape(-1, 2),
        tissue=np.asarray(plan.cell_tissue, np.float32),
        embeddings=dict(zip(plan.levels.names, levels)),
        attrs=attrs,
        windows={
            "regions": np.asarray(plan.regions, np.int32).reshape(-1, 2),
            "contexts": np.asarray(plan.contexts, np.int32).reshape(-1, 2),
        },
    )
