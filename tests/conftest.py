"""Shared fixtures: the real sample slides and generated slides (made once per session)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("COLUMNS", "250")  # rich wraps at 80 columns when not on a terminal
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download; hub code paths must fail fast and say so

import numpy as np
import pytest

from mixmag.synth.patterns import position_code, tissue_like
from mixmag.synth.slide_writer import write_slide

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "CMU-1-Small-Region.svs").is_file():
        pytest.skip(f"real sample slides not found in {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_svs(shared_data) -> Path:
    return shared_data / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def real_pyramid(shared_data) -> Path:
    return shared_data / "CMU-1-Small-Region.pyramid.tiff"


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slides")


def make_tissue_slide(folder: Path, name: str, *, mpp: float = 0.5, size=(4000, 3200), seed: int = 0, **kwargs) -> Path:
    path = folder / name
    if not path.exists():
        image = tissue_like(size[0], size[1], mpp, seed=seed, tissue_mask=kwargs.pop("tissue_mask", None))
        write_slide(path, image, mpp, **kwargs)
    return path


def make_position_slide(folder: Path, name: str, *, mpp: float, size_um=(3000.0, 2400.0), **kwargs) -> Path:
    """A lossless slide whose pixels encode their own position (see synth.patterns.position_code)."""
    path = folder / name
    if not path.exists():
        w, h = round(size_um[0] / mpp), round(size_um[1] / mpp)
        image = position_code(w, h, mpp)
        mask = kwargs.pop("tissue_mask", None)
        if mask is not None:
            import cv2

            big = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
            image[~big] = 255
        write_slide(path, image, mpp, compression="deflate", **kwargs)
    return path


@pytest.fixture(scope="session")
def tissue_slide(slide_dir) -> Path:
    """A 2 x 1.6 mm generic pyramid at 0.5 um/px with several tissue pieces."""
    return make_tissue_slide(slide_dir, "tissue.tiff", downsamples=(1, 4, 16), seed=3)
