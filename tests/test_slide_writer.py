"""Synthetic slides written tile by tile / strip by strip: the same pixels as the pattern drawn whole, files that
OpenSlide and TiffSlide open with the right levels and mpp, and memory that does not grow with the slide."""

import tracemalloc

import numpy as np
import openslide
import pytest
import tiffslide
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.slides.reader import Slide
from mixmag.synth import slide_writer
from mixmag.synth.patterns import PositionPattern, position_code
from mixmag.synth.slide_writer import ArraySource, PatternSource, level_sizes, pyramid_levels, write_slide
from mixmag.synth.tissue_field import TissueField

WINDOWS = [(0, 0, 256, 256), (256, 0, 256, 256), (100, 37, 301, 211), (512, 256, 188, 244), (37, 400, 663, 100)]


@pytest.mark.parametrize("mpp", [0.5, 2.0, 8.0])
def test_tissue_windows_are_the_whole_field_cut(mpp):
    """Every window drawn alone equals the same window of the field drawn whole (nuclei crossing window edges
    included), at level 0 and at coarser level pixel sizes."""
    field = TissueField(700 * 0.5, 500 * 0.5, seed=3, nuclei_per_mm2=20000.0)
    w, h = round(350 / mpp), round(250 / mpp)
    whole = field.render(0, 0, w, h, mpp, mpp)
    assert whole.std() > 5  # tissue, glass and nuclei, not a flat image
    for x, y, ww, hh in WINDOWS:
        ww, hh = min(ww, w - x), min(hh, h - y)
        if ww > 0 and hh > 0:
            np.testing.assert_array_equal(field.render(x, y, ww, hh, mpp, mpp), whole[y : y + hh, x : x + ww])


def test_position_pattern_windows_are_the_position_code():
    code = position_code(700, 500, 0.3)
    pattern = PositionPattern(700 * 0.3, 500 * 0.3)
    for x, y, w, h in WINDOWS:
        np.testing.assert_array_equal(pattern.render(x, y, w, h, 0.3, 0.3), code[y : y + h, x : x + w])


def test_array_levels_are_still_area_downsampled():
    """Arrays (the demo's cohort, the tests' slides) keep their pixels: level k is INTER_AREA of level 0."""
    import cv2

    image = position_code(1000, 700, 0.5)
    levels = pyramid_levels(image, (1, 4, 16))
    assert [lv.shape[:2] for lv in levels] == [(700, 1000), (175, 250), (44, 62)]
    np.testing.assert_array_equal(levels[2], cv2.resize(image, (62, 44), interpolation=cv2.INTER_AREA))
    assert level_sizes((1000, 700), (1, 4, 16)) == [(1000, 700), (250, 175), (62, 44)]


@pytest.mark.parametrize("flavor", ["generic", "aperio", "ome", "ome-strips"])
def test_pattern_slide_has_the_pattern_pixels_levels_and_mpp(tmp_path, monkeypatch, flavor):
    """Written strip by strip (spans of 192 columns, 64-px tiles, lossless): each level read back is the pattern
    drawn whole at that level's pixel size; OpenSlide and TiffSlide see the levels and the exact mpp."""
    monkeypatch.setattr(slide_writer, "_SPAN_PX", 192)
    size, mpp = (900, 620), 0.2631
    field = TissueField(size[0] * mpp, size[1] * mpp, seed=1, nuclei_per_mm2=20000.0)
    path = write_slide(
        tmp_path / "s.tiff",
        PatternSource(field, size, mpp),
        mpp,
        downsamples=(1, 4),
        tile=64,
        compression="deflate",
        flavor=flavor,
    )
    expected_sizes = [size] if flavor == "ome-strips" else [(900, 620), (225, 155)]
    with Slide(path) as slide:  # mixmag's reader: mpp from the TIFF tags, the Aperio text or the OME-XML
        assert slide.mpp == pytest.approx(mpp, rel=1e-6)
    with tiffslide.TiffSlide(path) as ts:
        assert ts.level_dimensions == tuple(expected_sizes)
        for k, (w, h) in enumerate(expected_sizes):
            got = np.asarray(ts.read_region((0, 0), k, (w, h), as_array=True))[..., :3]
            scale = (mpp * size[0] / w, mpp * size[1] / h)
            np.testing.assert_array_equal(got, field.render(0, 0, w, h, *scale))
    if flavor in ("generic", "aperio"):  # OpenSlide reads OME-TIFF as a one-level generic TIFF and refuses strips
        with openslide.OpenSlide(path) as osl:
            assert osl.level_dimensions == tuple(expected_sizes)
            assert float(osl.properties["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-6)
            assert osl.properties["openslide.vendor"] == ("aperio" if flavor == "aperio" else "generic-tiff")


def _peak_bytes(tmp_path, size, flavor) -> int:
    mpp = 0.5
    source = PatternSource(PositionPattern(size[0] * mpp, size[1] * mpp), size, mpp)
    tracemalloc.start()
    try:
        write_slide(tmp_path / f"{size[0]}-{flavor}.tiff", source, mpp, downsamples=(1, 4, 16), flavor=flavor)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("flavor", "large"), [("aperio", (4096, 3072)), ("ome", (4096, 3072)), ("ome-strips", (2048, 6144))]
)
def test_memory_does_not_grow_with_the_slide(tmp_path, monkeypatch, flavor, large):
    """A slide with 4x the pixels peaks at about the same traced memory, far below one copy of its image.
    (A plain strip TIFF holds one full-width strip of 64 rows, so there the larger slide is taller.)"""
    monkeypatch.setattr(slide_writer, "_SPAN_PX", 512)
    small_peak = _peak_bytes(tmp_path, (2048, 1536), flavor)
    large_peak = _peak_bytes(tmp_path, large, flavor)
    assert large_peak < 1.3 * small_peak
    assert large_peak < large[0] * large[1] * 3 / 4


def test_jpeg_strips_wider_than_jpeg_allows_are_refused_before_any_work(tmp_path):
    source = PatternSource(PositionPattern(70000.0, 10.0), (70000, 10), 1.0)
    with pytest.raises(ValueError, match="65535 px.*deflate"):
        write_slide(tmp_path / "wide.tiff", source, 1.0, flavor="ome-strips")
    assert not list(tmp_path.iterdir())


def test_array_source_checks_the_image():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        ArraySource(np.zeros((10, 10), np.uint8))


def test_synth_slide_command_writes_position_strips_and_names_bad_flavors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "p.ome.tiff"
    args = ["synth", "slide", str(out), "--width", "700", "--height", "500", "--mpp", "0.3", "--content", "position"]
    result = runner.invoke(app, [*args, "--flavor", "ome-strips", "--compression", "deflate"])
    assert result.exit_code == 0, result.output
    with tiffslide.TiffSlide(out) as ts:
        got = np.asarray(ts.read_region((0, 0), 0, (700, 500), as_array=True))[..., :3]
    np.testing.assert_array_equal(got, position_code(700, 500, 0.3))
    result = runner.invoke(app, [*args, "--flavor", "tiled"])
    assert result.exit_code == 2 and "unknown slide flavor 'tiled'" in result.output


def test_a_slide_that_cannot_fit_the_free_space_is_refused_before_any_write(tmp_path, monkeypatch):
    """A zero too many in --width (2,000,000 x 2,000,000 px) would fill a shared disk before the write failed."""
    out = tmp_path / "new" / "huge.tiff"
    result = CliRunner().invoke(app, ["synth", "slide", str(out), "--width", "2000000", "--height", "2000000"])
    assert result.exit_code != 0 and "needs at least" in result.output and "free" in result.output
    assert not out.exists() and not list(tmp_path.rglob("*.tiff*"))
    usage = slide_writer.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(slide_writer.shutil, "disk_usage", lambda p: usage._replace(free=10_000))
    with pytest.raises(slide_writer.DiskFullError, match="huge.tiff"):  # 1000 x 1000 px uncompressed: 3 MB > 10 kB
        write_slide(out, PatternSource(PositionPattern(300.0, 300.0), (1000, 1000), 0.3), 0.3, compression="none")
    assert not out.exists()
