"""`mixmag doctor` says what `mixmag tile` will make of a slide (issue 30): a slide too small for the configured
regions is named with the region sizes that fit, a reader is called faster only where this slide's measurement agrees,
and a file one reader cannot decode but another reads is not called corrupt."""

from __future__ import annotations

from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.geometry import CellGrid
from mixmag.slides.doctor import BackendCheck, _readable_is_not_corrupt, _speed_follows_measurement, region_fit_note


def test_doctor_says_the_sample_slide_is_too_small_for_3x3_regions_and_what_fits(real_svs):
    result = CliRunner().invoke(app, ["doctor", str(real_svs)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "too small for a 3x3 region of 448 um cells (needs at least 1.34 x 1.34 mm" in out
    assert "the slide is 1.11 x 1.48 mm, 3 x 2 whole cells" in out
    assert "`--region-size 2` fits 1 region" in out and "`--region-size 1` fits 6 regions" in out
    fits = CliRunner().invoke(app, ["doctor", str(real_svs), "--region-size", "2"])
    assert fits.exit_code == 0 and "too small" not in fits.output


def test_region_fit_note_counts_regions_of_every_smaller_size():
    grid = CellGrid(0.5, 5 * 896, 2 * 896 + 10, 448.0)  # 2 x 5 cells
    assert region_fit_note(grid, 0.5, 448.0, 2) is None
    note = region_fit_note(grid, 0.5, 448.0, 3)
    assert "`--region-size 2` fits 2 regions; `--region-size 1` fits 10 regions" in note
    tiny = CellGrid(0.5, 500, 500, 448.0)
    assert "no region size fits" in region_fit_note(tiny, 0.5, 448.0, 3)


def test_faster_follows_the_measurement():
    checks = [
        BackendCheck("openslide", "a JPEG 2000 TIFF: OpenSlide decodes it faster", True, tiles_per_s=39.0),
        BackendCheck("tiffslide", "reads any TIFF pyramid", True, tiles_per_s=71.0),
    ]
    _speed_follows_measurement(checks)
    assert "faster" not in checks[0].reason.split(":")[0]
    assert "on this slide tiffslide read faster (71 vs 39 tiles/s" in checks[0].reason
    agreeing = [
        BackendCheck("tiffslide", "a tiled TIFF: TiffSlide decodes its tiles directly, fastest", True, tiles_per_s=466),
        BackendCheck("openslide", "reads the TIFF flavours TiffSlide may not", True, tiles_per_s=180),
    ]
    _speed_follows_measurement(agreeing)
    assert agreeing[0].reason.endswith("fastest")  # the measurement agrees: unchanged


def test_a_file_another_reader_reads_is_not_called_corrupt():
    error = (
        "/s.ome.tiff: could not decode level 0 at (0, 0) size 10x10: ValueError: x. Fix: the file is probably "
        "corrupt or truncated; re-copy or re-export it."
    )
    checks = [BackendCheck("tiffslide", "r", True), BackendCheck("openslide", "r", True, error=error)]
    _readable_is_not_corrupt(checks, "tiffslide")
    assert "corrupt" not in checks[1].error and "tiffslide reads it, so the file itself is readable" in checks[1].error
    alone = [BackendCheck("openslide", "r", True, error=error)]
    _readable_is_not_corrupt(alone, None)  # no reader reads it: the advice stands
    assert "probably corrupt" in alone[0].error
