"""Peer files as mixmag writes and reads them: atomic HDF5 writes, attributes as plain values, and the provenance
mixmag records in its own exports (tied to the coordinates and values by one digest, so edited features, or
coordinates permuted or transposed against them, cannot keep it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..fileio import hdf5_atomic
from ..store import SlideStore

# extras mixmag adds to the files it exports (peers ignore attributes they do not read)
PROVENANCE_ATTR = "mixmag_encoder_provenance"
TILES_DIGEST_ATTR = "mixmag_tiles_sha256"  # coordinates and features together (exports from this version on)
DIGEST_ATTR = "mixmag_features_sha256"  # features alone: older exports, still read (assemble checks their row order)
SLIDE_ATTR = "mixmag_slide_id"


# TRIDENT names a slide by its file name without the extension, counting these as one (trident/IO.py l.17-26)
COMPOUND_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.zarr")


def slide_name(slide_path: str) -> str:
    """The name TRIDENT gives a slide file: its file name without the extension (trident/wsi_objects/WSI.py l.153)."""
    name = Path(slide_path).name
    for suffix in COMPOUND_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def write_h5(path: Path, datasets: dict[str, tuple[np.ndarray, dict]]) -> Path:
    """One HDF5 file of datasets with their attributes, written atomically (built in memory: see `hdf5_atomic`)."""
    with hdf5_atomic(path) as f:
        for key, (data, attrs) in datasets.items():
            dset = f.create_dataset(key, data=data)
            for k, v in attrs.items():
                dset.attrs[k] = v
    return Path(path)


def plain_attrs(attrs) -> dict:
    """HDF5 attributes as plain Python values (strings decoded, numpy scalars unwrapped)."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def features_digest(features: np.ndarray) -> str:
    """sha256 of the features as little-endian float32: ties mixmag's recorded provenance to these very values."""
    return hashlib.sha256(np.ascontiguousarray(features, "<f4").tobytes()).hexdigest()


def tiles_digest(coords: np.ndarray, features: np.ndarray) -> str:
    """sha256 of the coordinates (little-endian int64) and the features (little-endian float32) row by row: a row's
    features stay tied to its tile, so permuting, transposing or editing either side breaks it."""
    digest = hashlib.sha256(b"mixmag tiles v1")
    digest.update(np.asarray(coords.shape, "<i8").tobytes() + np.asarray(features.shape, "<i8").tobytes())
    digest.update(np.ascontiguousarray(np.rint(coords), "<i8").tobytes())
    digest.update(np.ascontiguousarray(features, "<f4").tobytes())
    return digest.hexdigest()


def encoder_extras(store: SlideStore, coords: np.ndarray, features: np.ndarray) -> dict:
    """The extra attributes an export writes on `features`: the slide, the store's encoder provenance and the digest
    of the coordinates and values together."""
    recorded = store.header.encoder_record
    return {
        SLIDE_ATTR: str(store.header.slide_id),
        PROVENANCE_ATTR: json.dumps(recorded),
        TILES_DIGEST_ATTR: tiles_digest(coords, features),
    }


def recorded_provenance(features_attrs: dict) -> tuple[dict | None, str | None, str | None]:
    """(provenance, digest, kind) mixmag recorded on exported features, kind "tiles" (coordinates and features, this
    version's exports) or "features" (older exports); (None, None, None) on files others wrote.
    Raises ValueError when the record is there but damaged."""
    if PROVENANCE_ATTR not in features_attrs:
        return None, None, None
    try:
        recorded = json.loads(features_attrs[PROVENANCE_ATTR])
    except (TypeError, json.JSONDecodeError):
        recorded = None
    kind = "tiles" if TILES_DIGEST_ATTR in features_attrs else "features"
    digest = features_attrs.get(TILES_DIGEST_ATTR if kind == "tiles" else DIGEST_ATTR)
    if not isinstance(recorded, dict) or not isinstance(digest, str):
        raise ValueError(f"a damaged {PROVENANCE_ATTR} / {TILES_DIGEST_ATTR} record")
    return recorded, digest, kind
