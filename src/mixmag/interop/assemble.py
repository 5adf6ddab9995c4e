"""A store built from other tools' per-level feature files, strictly, or not at all.

A feature file is one level's tiles of one slide: coordinates (M, 2) level-0 top-lefts and features (M, D). The plan
is the truth: every level of the plan must come in exactly one file, each holding exactly N·4^i distinct tiles of
the plan's N cells (within ±1 level-0 px of mixmag's float grid), all levels from one encoder with one dimension.
Anything else (a short file, duplicate or shifted coordinates, a stale level, mixed encoders, features changed after
mixmag wrote them) is refused with the slide, the level and the reason: a wrong store would train without an error.
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
from .files import features_digest, plain_attrs, recorded_provenance
from .grid import OffGridError, slots_on_grid

MAX_DIM = 65536  # features per tile: far above any encoder's, low enough that a corrupt shape is not read into memory


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


def refuse(plan: TilingPlan, level: str, path: Path | str, reason: str, fix: str) -> InteropError:
    return InteropError(f"{plan.slide.slide_id}: level {level}: {reason} ({path}). Fix: {fix}")


def read_level_file(
    path: Path, plan: TilingPlan, hint: str, declared_mpp: Callable[[dict], float] | None = None
) -> LevelFile:
    """One peer feature file (`features` + `coords` datasets), sizes checked against the plan before any data is read.
    `declared_mpp(coords attributes)` checks the file's own attributes and returns the level they declare."""
    max_tiles = len(plan.cells) * 4 ** (plan.levels.n_levels - 1)
    try:
        with open_hdf5(path) as f:
            features, coords = f.get("features"), f.get("coords")
            if not isinstance(features, h5py.Dataset) or not isinstance(coords, h5py.Dataset):
                raise refuse(plan, "?", path, "no 'features' and 'coords' datasets", hint)
            level_mpp = declared_mpp(plain_attrs(coords.attrs)) if declared_mpp else None
            if level_mpp is not None:
                _declared_level(plan, path, level_mpp)
            fits = coords.ndim == 2 and coords.shape[1] == 2 and features.ndim == 2 and features.shape[1] <= MAX_DIM
            if not fits or coords.shape[0] > max_tiles or features.shape[0] > max_tiles:
                raise refuse(
                    plan,
                    "?",
                    path,
                    f"features {features.shape} and coords {coords.shape} do not fit the plan "
                    f"(at most {max_tiles} tiles of (x, y), at most {MAX_DIM} features each)",
                    "extract features at `mixmag store coords`' tiles",
                )
            fattrs = plain_attrs(features.attrs)
            try:
                recorded, digest = recorded_provenance(fattrs)
            except ValueError as exc:
                raise refuse(plan, "?", path, str(exc), "re-export the store") from None
            encoder = fattrs.get("encoder")
            return LevelFile(
                path=path,
                coords=coords[()],
                features=features[()],
                level_mpp=level_mpp,
                encoder=None if encoder in (None, "None", "") else str(encoder),
                recorded=recorded,
                recorded_digest=digest,
            )
    except OSError as exc:
        raise refuse(plan, "?", path, f"not a readable HDF5 file ({exc})", "re-extract the features") from None


def assemble_store(
    plan: TilingPlan, plan_path: Path, files: list[LevelFile], *, source: str, encoder: str | None = None
) -> SlideStore:
    """The store of `plan` from its per-level files. `source` names the peer ("trident", "clam"); `encoder` is
    the user's name for files that record none (CLAM), and must agree with files that do."""
    by_level = _levels_of(plan, files)
    levels, provenance = [], []
    for i, name in enumerate(plan.levels.names):
        f = by_level[i]
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
        "?",
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


def _encoder_provenance(plan: TilingPlan, name: str, f: LevelFile, source: str, encoder: str | None) -> dict:
    """Encoder provenance of one level: mixmag's own record when the values are still the ones it exported,
    else the encoder name the file (or the user) gives, with weights known only by that name."""
    if f.recorded is not None:
        if features_digest(f.features) != f.recorded_digest:
            raise refuse(
                plan,
                name,
                f.path,
                "the features differ from the ones mixmag exported, so the recorded encoder provenance "
                f"({f.recorded.get('encoder')}, weights {f.recorded.get('encoder_weights_digest')}) "
                "no longer describes them",
                "write new features to a fresh folder (TRIDENT does: features_<encoder>/)",
            )
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
