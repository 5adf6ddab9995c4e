import numpy as np
import pytest

from mixmag.errors import MppError
from mixmag.slides.metadata import resolve_mpp
from mixmag.slides.reader import Slide
from mixmag.synth.slide_writer import write_slide

IMAGE = np.full((600, 700, 3), 200, np.uint8)


def test_override_wins_and_is_checked():
    assert resolve_mpp("s.svs", {"openslide.mpp-x": "0.25"}, 0.5).value == 0.5
    with pytest.raises(MppError, match="implausible"):
        resolve_mpp("s.svs", {}, 352.8)


def test_vendor_property_is_used():
    got = resolve_mpp("s.svs", {"openslide.mpp-x": "0.2631", "openslide.mpp-y": "0.2631"})
    assert (got.value, got.source) == (0.2631, "openslide.mpp-x")


def test_non_square_pixels_are_an_error():
    with pytest.raises(MppError, match="non-square"):
        resolve_mpp("s.svs", {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.5"})


def test_missing_mpp_names_slide_and_fix(tmp_path):
    path = write_slide(tmp_path / "nompp.tiff", IMAGE, None)
    with pytest.raises(MppError) as info:
        Slide(path)
    message = str(info.value)
    assert "nompp.tiff" in message and "--mpp" in message and "no microns-per-pixel" in message
    assert Slide(path, mpp=0.5).mpp_source == "override"


def test_72_dpi_is_rejected_as_implausible(tmp_path):
    path = write_slide(tmp_path / "dpi72.tiff", IMAGE, None, resolution_dpi=72)
    with pytest.raises(MppError) as info:
        Slide(path)
    message = str(info.value)
    assert "dpi72.tiff" in message and "352.8" in message and "72 dpi" in message and "--mpp" in message


@pytest.mark.parametrize(
    ("flavor", "source_word"),
    [("generic", "mpp"), ("aperio", "mpp"), ("ome", "OME"), ("ome-strips", "OME")],
)
def test_each_flavor_carries_its_mpp(tmp_path, flavor, source_word):
    path = write_slide(tmp_path / f"s-{flavor}.tiff", IMAGE, 0.2631, flavor=flavor, downsamples=(1, 2))
    slide = Slide(path)
    assert slide.mpp == pytest.approx(0.2631, rel=1e-6)
    assert source_word in slide.mpp_source
