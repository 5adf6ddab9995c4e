"""Peer files as mixmag writes and reads them: atomic HDF5 writes, attributes as plain values, and the provenance
mixmag records in its own exports (tied to the values by a digest, so edited features cannot keep it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..fileio import hdf5_atomic
from ..store import SlideStore

# extras mixmag adds to the files it exports (peers ignore attributes they do not read)
PROVENANCE_ATTR = "mixmag_encoder_provenance"
DIGEST_ATTR = "mixmag_features_sha256"


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


def encoder_extras(store: SlideStore, features: np.ndarray) -> dict:
    """The extra attributes an export writes on `features`: the store's encoder provenance and the values' digest."""
    recorded = store.header.encoder_record
    return {PROVENANCE_ATTR: json.dumps(recorded), DIGEST_ATTR: features_digest(features)}


def recorded_provenance(features_attrs: dict) -> tuple[dict | None, str | None]:
    """(provenance, digest) mixmag recorded on exported features; (None, None) on files others wrote.
    Raises ValueError when the record is there but damaged."""
    if PROVENANCE_ATTR not in features_attrs:
        return None, None
    try:
        recorded = json.loads(features_attrs[PROVENANCE_ATTR])
    except (TypeError, json.JSONDecodeError):
        recorded = None
    digest = features_attrs.get(DIGEST_ATTR)
    if not isinstance(recorded, dict) or not isinstance(digest, str):
        raise ValueError(f"a damaged {PROVENANCE_ATTR} / {DIGEST_ATTR} record")
    return recorded, digest
