"""A store built from other tools' per-level feature files, strictly, or not at all.

A feature file is one level's tiles of one slide: coordinates (M, 2) level-0 top-lefts and features (M, D). The plan
is the truth: every level of the plan must come in exactly one file, each holding exactly N·4^i distinct tiles of
the plan's N cells (within ±1 level-0 px of mixmag's float grid), all levels from one encoder with one dimension.
Anything else (a short file, duplicate, shifted or non-numeric coordinates, a stale level, mixed encoders, another
slide's file under this slide's name, features or coordinates changed after mixmag wrote them, values a float16 store
cannot hold) is refused with the slide, the level and the reason: a wrong store would train without an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import MixmagError
from ..fileio import open_hdf5
from ..geometry import magnification_name
from ..slides.tiling import TilingPlan
from ..store import ENCODER_FIELDS, SlideStore, plan_provenance, store_from_plan
from .files import SLIDE_ATTR, features_digest, plain_attrs, recorded_provenance, slide_name, tiles_digest
from .grid import TOLERANCE_PX, OffGridError, rounded_origins, slots_on_grid

MAX_DIM = 65536  # features per tile: far above any encoder's, low enough that a corrupt shape is not read into memory
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504: stores hold float16, anything larger would be Inf there


class InteropError(MixmagError):
    """A foreign file mixmag will not turn into a store (or a store it cannot export), with the reason and the fix."""


@dataclass
class LevelFile:
    """One level's features of one slide, as read from a peer's file (nothing checked yet but shapes)."""

    path: Path
    coords: np.ndarray
    features: np.ndarray
    level_mpp: float | None = None  # the level the file declares (None: the file does not say; found from its tiles)
    encoder: str | None = None  # the encoder name the file records
    recorded: dict | None = None  # mixmag's own encoder provenance, when mixmag wrote the file
    recorded_digest: str | None = None
    digest_kind: str | None = None  # "tiles" (coordinates and features) or "features" (older exports)
    claims: dict[str, str] | None = None  # the slide the file's own attributes name: {attribute: value}


def refuse(plan: TilingPlan, level: str, path: Path | str, reason: str, fix: str) -> InteropError:
    return InteropError(f"{plan.slide.slide_id}: level {level}: {reason} ({path}). Fix: {fix}")


def read_level_file(
    path: Path, plan: TilingPlan, hint: str, declared_mpp: Callable[[dict], float] | None = None
) -> LevelFile:
    """One peer feature file (`features` + `coords` datasets), sizes checked against the plan before any data is read.
    `declared_mpp(coords attributes)` checks the file's own attributes and returns the level they declare."""
    max_tiles = len(plan.cells) * 4 ** (plan.levels.n_levels - 1)
    level = "?"  # until the file declares its level (TRIDENT's do; CLAM's are placed by their tile count)
    try:
        with open_hdf5(path) as f:
            features, coords = f.get("features"), f.get("coords")
            if not isinstance(features, h5py.Dataset) or not isinstance(coords, h5py.Dataset):
                raise refuse(plan, level, path, "no 'features' and 'coords' datasets", hint)
            cattrs, fattrs = plain_attrs(coords.attrs), plain_attrs(features.attrs)
            level_mpp = declared_mpp(cattrs) if declared_mpp else None
            if level_mpp is not None:
                level = plan.levels.names[_declared_level(plan, path, level_mpp)]
            fits = coords.ndim == 2 and coords.shape[1] == 2 and features.ndim == 2 and features.shape[1] <= MAX_DIM
            if not fits or coords.shape[0] > max_tiles or features.shape[0] > max_tiles:
                raise refuse(
                    plan,
                    level,
                    path,
                    f"features {features.shape} and coords {coords.shape} do not fit the plan "
                    f"(at most {max_tiles} tiles of (x, y), at most {MAX_DIM} features each)",
                    "extract features at `mixmag store coords`' tiles",
                )
            try:
                recorded, digest, kind = recorded_provenance(fattrs)
            except ValueError as exc:
                raise refuse(plan, level, path, str(exc), "re-export the store") from None
            encoder = fattrs.get("encoder")
            return LevelFile(
                path=path,
                coords=coords[()],
                features=features[()],
                level_mpp=level_mpp,
                encoder=None if encoder in (None, "None", "") else str(encoder),
                recorded=recorded,
                recorded_digest=digest,
                digest_kind=kind,
                claims=_slide_claims(cattrs, fattrs),
            )
    except OSError as exc:
        raise refuse(plan, level, path, f"not a readable HDF5 file ({exc})", "re-extract the features") from None


def _slide_claims(coords_attrs: dict, features_attrs: dict) -> dict[str, str]:
    """The slide names a file's own attributes give: TRIDENT's `name` (coords and features), mixmag's slide id."""
    claims = {}
    for where, attrs in (("features", features_attrs), ("coords", coords_attrs)):
        for key in ("name", SLIDE_ATTR):
            if isinstance(attrs.get(key), str):
                claims[f"{where}.{key}"] = attrs[key]
    return claims


def _check_slide(plan: TilingPlan, level: str, f: LevelFile) -> None:
    """Refuse another slide's file under this slide's name: a file that names a slide names this one (TRIDENT's
    `name` may be the slide file's name, mixmag's slide id must be the id)."""
    slide = plan.slide.slide_id
    for attr, value in (f.claims or {}).items():
        allowed = {slide} if attr.endswith(SLIDE_ATTR) else {slide, slide_name(plan.slide.path)}
        if value not in allowed:
            raise refuse(
                plan,
                level,
                f.path,
                f"the file is slide {value!r}'s (its {attr} attribute), not this slide's",
                "import the files extracted from this slide; a copy of another slide's features would train on the "
                "wrong tissue",
            )


def assemble_store(
    plan: TilingPlan, plan_path: Path, files: list[LevelFile], *, source: str, encoder: str | None = None
) -> SlideStore:
    """The store of `plan` from its per-level files. `source` names the peer ("trident", "clam"); `encoder` is
    the user's name for files that record none (CLAM), and must agree with files that do."""
    by_level = _levels_of(plan, files)
    levels, provenance = [], []
    for i, name in enumerate(plan.levels.names):
        f = by_level[i]
        _check_slide(plan, name, f)
        levels.append(_place(plan, i, f))
        provenance.append(_encoder_provenance(plan, name, f, source, encoder))
    first = provenance[0]
    for name, p, f in zip(plan.levels.names, provenance, (by_level[i] for i in range(len(provenance)))):
        if p != first:
            diff = {k: (first[k], p[k]) for k in first if first[k] != p[k]}
            raise refuse(
                plan,
                name,
                f.path,
                f"made differently from level {plan.levels.names[0]} ({diff})",
                "import the features of one encoder run at every level (TRIDENT: one features_<encoder> folder)",
            )
    return store_from_plan(plan, levels, plan_provenance(plan_path, plan) | first)


def _levels_of(plan: TilingPlan, files: list[LevelFile]) -> dict[int, LevelFile]:
    """Which file is which level: the level the file declares, or else the one whose tile count it has."""
    n = len(plan.cells)
    found: dict[int, LevelFile] = {}
    for f in files:
        counts = [i for i in range(len(plan.levels.mpps)) if n * 4**i == len(f.coords)]
        if f.level_mpp is not None:
            i = _declared_level(plan, f.path, f.level_mpp)
        elif counts:
            i = counts[0]
        else:
            raise refuse(
                plan,
                "?",
                f.path,
                f"the file holds {len(f.coords)} tiles, which is no level's count for the plan's "
                f"{n} cells ({', '.join(f'{name} {n * 4**k}' for k, name in enumerate(plan.levels.names))})",
                "remove files of other tilings or earlier exports from the folder",
            )
        if i in found:
            raise refuse(
                plan,
                plan.levels.names[i],
                f.path,
                f"a second file for this level (the first: {found[i].path})",
                "keep one file per level: remove the stale one",
            )
        found[i] = f
    missing = [name for i, name in enumerate(plan.levels.names) if i not in found]
    if missing:
        raise refuse(
            plan,
            ", ".join(missing),
            "no file",
            f"no features for level(s) {', '.join(missing)}",
            "extract features at every level of the plan (one run per magnification)",
        )
    return found


def _declared_level(plan: TilingPlan, path: Path, level_mpp: float) -> int:
    """The plan's level a file declares itself to be, or a refusal (a stale level of another tiling)."""
    for i, mpp in enumerate(plan.levels.mpps):
        if abs(mpp - level_mpp) <= 1e-3 * mpp:
            return i
    raise refuse(
        plan,
        magnification_name(level_mpp),
        path,
        f"the file is at {magnification_name(level_mpp)} ({level_mpp:g} um/px), which is not one of "
        f"the plan's levels {', '.join(plan.levels.names)}",
        "remove files of other tilings or earlier exports from the folder",
    )


def _place(plan: TilingPlan, level: int, f: LevelFile) -> np.ndarray:
    """(N, 4^i, D) float32: every feature put in its cell and sub-tile by its coordinates."""
    name = plan.levels.names[level]
    n, per_cell = len(plan.cells), 4**level
    if f.coords.ndim != 2 or f.coords.shape[1] != 2 or f.coords.dtype.kind not in "iuf":
        raise refuse(
            plan,
            name,
            f.path,
            f"coords have shape {f.coords.shape} and dtype {f.coords.dtype}, expected (M, 2) numbers",
            "re-extract the features",
        )
    if f.features.ndim != 2 or f.features.dtype.kind != "f" or f.features.shape[0] != f.coords.shape[0]:
        raise refuse(
            plan,
            name,
            f.path,
            f"features have shape {f.features.shape} and dtype {f.features.dtype} for {len(f.coords)} "
            "coords, expected (M, D) floats, one row per coordinate",
            "re-extract the features",
        )
    if len(f.coords) != n * per_cell:
        raise refuse(
            plan,
            name,
            f.path,
            f"{len(f.coords)} tiles, but the plan's {n} cells have {n * per_cell} at {name} "
            f"({per_cell} per cell): tiles are missing or extra",
            "re-extract the features at `mixmag store coords`' tiles",
        )
    if not np.isfinite(f.features).all():
        rows = int((~np.isfinite(f.features)).any(axis=1).sum())
        raise refuse(plan, name, f.path, f"{rows} feature rows hold NaN or Inf", "re-extract the features (try fp32)")
    big = np.abs(f.features) > FLOAT16_MAX
    if big.any():
        rows = np.flatnonzero(big.any(axis=1))
        raise refuse(
            plan,
            name,
            f.path,
            f"{rows.size} feature rows hold values beyond float16's range (e.g. {float(f.features[big][0]):g} in row "
            f"{rows[0]}; stores hold float16, at most {FLOAT16_MAX:g}), which the store would hold as Inf",
            "scale or normalise the features (most encoders' outputs lie far below this), then import them",
        )
    _check_coordinates(plan, name, f)
    try:
        slots = slots_on_grid(f.coords, np.asarray(plan.cells).reshape(-1, 2), plan.cell_px, level)
    except OffGridError as exc:
        raise refuse(
            plan,
            name,
            f.path,
            str(exc),
            "extract features at mixmag's tiles: `mixmag store coords`, then your tool with those coordinates",
        ) from None
    out = np.zeros((n * per_cell, f.features.shape[1]), np.float32)
    out[slots] = f.features
    return out.reshape(n, per_cell, -1)


def _check_coordinates(plan: TilingPlan, name: str, f: LevelFile) -> None:
    """Every coordinate a number on the slide: a NaN or a huge value is named as what it is, not as some cell."""
    coords = np.asarray(f.coords, np.float64)
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise refuse(
            plan,
            name,
            f.path,
            f"{int(bad.sum())} coordinates are not numbers (NaN or Inf), e.g. row {row}: {f.coords[row].tolist()}",
            "re-extract the features at `mixmag store coords`' tiles",
        )
    size = np.array([plan.slide.width, plan.slide.height], np.float64)
    outside = ((coords < -TOLERANCE_PX) | (coords > size)).any(axis=1)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        x, y = coords[row]
        raise refuse(
            plan,
            name,
            f.path,
            f"{int(outside.sum())} coordinates lie outside the {plan.slide.width} x {plan.slide.height} px slide, "
            f"e.g. row {row}: ({x:g}, {y:g})",
            "re-extract the features at `mixmag store coords`' tiles",
        )


def _check_recorded_digest(plan: TilingPlan, name: str, f: LevelFile) -> None:
    """mixmag's own export, still tile for tile: each tile's features the ones exported for it. The digest is taken
    over the rows put back in store order by their coordinates, so rows reordered together (coordinates with their
    features) still match, while coordinates permuted, transposed or moved against the features, or edited values,
    do not. This version's digest covers coordinates and features; older exports' the features alone, checked the same
    way (their rows were written in store order)."""
    recorded = f.recorded or {}
    described = (
        f"so the recorded encoder provenance ({recorded.get('encoder')}, weights "
        f"{recorded.get('encoder_weights_digest')}) no longer describes them"
    )
    fix = "write new features to a fresh folder (TRIDENT does: features_<encoder>/), or export the store again"
    level = plan.levels.names.index(name)
    cells = np.asarray(plan.cells).reshape(-1, 2)
    slots = slots_on_grid(f.coords, cells, plan.cell_px, level)  # each row's tile (_place checked they are all there)
    in_order = np.empty_like(f.features)
    in_order[slots] = f.features
    if f.digest_kind == "tiles":
        intact = tiles_digest(rounded_origins(cells, plan.cell_px, level), in_order) == f.recorded_digest
    else:
        intact = features_digest(in_order) == f.recorded_digest
    if intact:
        return
    if np.array_equal(slots, np.arange(len(slots))):  # the coordinates as written: the values were edited
        raise refuse(plan, name, f.path, f"the features differ from the ones mixmag exported, {described}", fix)
    raise refuse(
        plan,
        name,
        f.path,
        "the coordinates no longer match the features row for row as mixmag exported them (rows permuted, "
        f"coordinates transposed or moved against the features, or values edited), {described}",
        fix,
    )


def _encoder_provenance(plan: TilingPlan, name: str, f: LevelFile, source: str, encoder: str | None) -> dict:
    """Encoder provenance of one level: mixmag's own record when the values are still the ones it exported,
    else the encoder name the file (or the user) gives, with weights known only by that name."""
    if f.recorded is not None:
        _check_recorded_digest(plan, name, f)
        if f.encoder not in (None, f.recorded.get("encoder")) or encoder not in (None, f.recorded.get("encoder")):
            raise refuse(
                plan,
                name,
                f.path,
                f"the file names encoder {f.encoder or encoder!r} but mixmag recorded {f.recorded.get('encoder')!r}",
                "write new features to a fresh folder",
            )
        if f.recorded.get("embedding_dim") != f.features.shape[1]:
            raise refuse(
                plan,
                name,
                f.path,
                f"features are {f.features.shape[1]}-dimensional, mixmag recorded {f.recorded.get('embedding_dim')}",
                "write new features to a fresh folder",
            )
        return {k: f.recorded.get(k) for k in ENCODER_FIELDS}
    if f.encoder and encoder and f.encoder != encoder:
        raise refuse(
            plan,
            name,
            f.path,
            f"the file was made with encoder {f.encoder!r}, not {encoder!r}",
            "drop --encoder or name the file's encoder",
        )
    name_used = f.encoder or encoder
    if not name_used:
        raise refuse(
            plan,
            name,
            f.path,
            "the file does not record its encoder",
            "pass --encoder NAME (the patch encoder that made it)",
        )
    return {
        "encoder": name_used,
        "encoder_weights_digest": f"{source}:{name_used}",
        "encoder_output": source,
        "embedding_dim": int(f.features.shape[1]),
        "compute_dtype": None,
        "read_mode": source,
    }
