"""Shared fixtures: the real sample slides, generated slides and a small embedding cohort (made once per session)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("COLUMNS", "250")  # rich wraps at 80 columns when not on a terminal
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download; hub code paths must fail fast and say so

import numpy as np
import pytest

from mixmag.synth.embedding_cohort import write_embedding_cohort
from mixmag.synth.patterns import position_code, tissue_like
from mixmag.synth.slide_writer import write_slide

SAMPLE_DATA = Path(__file__).resolve().parent / "data"  # real CC0 slides shipped with the project (PROVENANCE.md)


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The project's own real sample slides: never skipped; a missing file is a failure."""
    assert (SAMPLE_DATA / "CMU-1-Small-Region.svs").is_file(), f"real sample slides missing from {SAMPLE_DATA}"
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def real_svs(sample_data) -> Path:
    return sample_data / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def real_pyramid(sample_data) -> Path:
    return sample_data / "CMU-1-Small-Region.pyramid.tiff"


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """A 24-specimen synthetic embedding cohort (cohort.csv, stores/) with a clear label: read only, shared."""
    folder = tmp_path_factory.mktemp("small_cohort")
    write_embedding_cohort(folder, n_specimens=24, seed=3, signal=2.5)
    return folder


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


_IMAGE_PROBE = (
    "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
    "document.body.dataset.images = imgs.length;"
    "document.body.dataset.broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length; });</script>"
)


@pytest.fixture
def chromium(tmp_path):
    """Render an HTML file in headless Chromium: (screenshot path, console errors, images, broken images).
    Skips where Debian's chromium is not installed (.ci/run installs it where it can)."""
    import re
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed here (Debian package 'chromium'); .ci/run installs it where it can")
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]

    def render(page: Path) -> tuple[Path, list[str], int, int]:
        shot = tmp_path / f"{page.stem}.png"
        result = subprocess.run(
            [*flags, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shot.is_file() and shot.stat().st_size > 10_000, result.stderr[-2000:]
        errors = [
            line
            for line in result.stderr.splitlines()
            if "CONSOLE" in line and ("error" in line.lower() or "Uncaught" in line)
        ]
        probe = tmp_path / f"{page.stem}.probe.html"  # the same page plus a script that counts images that failed
        probe.write_text(
            page.read_text(encoding="utf-8").replace("</body>", _IMAGE_PROBE + "</body>"), encoding="utf-8"
        )
        dom = subprocess.run(
            [*flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        found = re.search(r'data-images="(\d+)" data-broken="(\d+)"', dom)
        assert found, dom[-2000:]
        return shot, errors, int(found.group(1)), int(found.group(2))

    return render
