"""The format writers of mixmag.synth.slide_formats for tests: a writer whose package is absent skips the test
with the command that installs it (CI installs the dev extra, so they run there)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mixmag.synth import slide_formats as formats
from mixmag.synth.slide_formats import slide_pixels  # noqa: F401 - re-exported for the tests


def need(module: str) -> None:
    """Skip, naming the install command, when an optional package is absent."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: {formats.INSTALL[module]}")


def write_dicom(source: Path, folder: Path, description: str | None = None) -> Path:
    need("wsidicomizer")
    return formats.write_dicom(source, folder, description)


def write_ome_zarr(image: np.ndarray, mpp: float, path: Path, n_levels: int = 3, **kwargs) -> Path:
    need("ome_zarr")
    return formats.write_ome_zarr(image, mpp, path, n_levels, **kwargs)


def write_czi(image: np.ndarray, mpp: float | None, path: Path, tile: int = 1024) -> Path:
    need("pylibCZIrw")
    return formats.write_czi(image, mpp, path, tile)
