"""`resample_tolerance`: a slide level close to a target mpp is read as it is (issue 29), and the store says so."""

import numpy as np
import pytest
from pydantic import ValidationError

from mixmag.geometry import Box, CellGrid, LevelSpec
from mixmag.slides.params import TilingParams
from mixmag.slides.pyramids import read_mpps, read_pyramid
from mixmag.slides.reader import Slide, kept_mpp, plan_read


def test_a_level_within_the_tolerance_is_read_without_resampling():
    box = Box(100.2, 200.7, 100.2 + 2693.4, 200.7 + 2693.4)  # three 448 um cells at 0.499 um/px
    exact = plan_read([1.0, 4.0], 0.499, box, 0.5, (2688, 2688))
    assert exact.width in (2693, 2694) and exact.out_width == 2688  # read the exact box, resample it to 2688
    kept = plan_read([1.0, 4.0], 0.499, box, 0.5, (2688, 2688), keep_within=0.01)
    assert (kept.level, kept.x, kept.y) == (0, 100, 201)  # the box's origin, rounded once
    assert (kept.width, kept.height, kept.out_width, kept.out_height) == (2688, 2688, 2688, 2688)


def test_a_level_outside_the_tolerance_is_still_resampled():
    box = Box(0, 0, 1700.0, 1700.0)
    plan = plan_read([1.0], 0.2631, box, 0.5, (894, 894), keep_within=0.02)  # 0.2631 vs 0.5: far from it
    assert (plan.width, plan.out_width) == (1700, 894)
    assert kept_mpp([0.2631], 0.5, keep_within=0.02) == 0.5
    assert kept_mpp([0.499, 1.996], 0.5, keep_within=0.01) == 0.499
    assert kept_mpp([0.499, 1.996], 2.0, keep_within=0.01) == 1.996
    assert kept_mpp([0.499, 1.996], 0.5) == 0.5  # the default keeps nothing


def test_tolerance_is_bounded_and_left_out_of_records_at_its_default():
    with pytest.raises(ValidationError):
        TilingParams(resample_tolerance=0.2)
    assert "resample_tolerance" not in TilingParams().recorded()  # older stores' records stay equal
    assert TilingParams(resample_tolerance=0.01).recorded()["resample_tolerance"] == 0.01
    assert TilingParams(resample_tolerance=0.01).read_options["keep_within"] == 0.01


def test_real_slide_tiles_are_the_raw_pixels_and_the_real_mpp_is_recorded(real_svs):
    """The CMU slide is scanned at 0.499 um/px: with a 1% tolerance the 20x tiles are the slide's own pixels (no
    resampling: pixel for pixel a plain read of the level), 10x and 5x their exact halvings; without it they are
    resampled to 0.5 um/px and differ."""
    slide = Slide(real_svs)
    levels = LevelSpec()
    grid = CellGrid(slide.mpp, slide.width, slide.height, levels.cell_um)
    kept = read_pyramid(slide, grid, levels, 1, 1, keep_within=0.01)
    exact = read_pyramid(slide, grid, levels, 1, 1)
    box = grid.window_box(1, 1, 1)
    raw = slide._read_raw(0, round(box.x0), round(box.y0), 896, 896)
    fine = kept.tiles[-1]
    assert np.array_equal(np.concatenate([np.concatenate(list(fine[r * 4 : r * 4 + 4]), 1) for r in range(4)]), raw)
    assert not np.array_equal(kept.tiles[-1], exact.tiles[-1])
    neighbour = read_pyramid(slide, grid, levels, 1, 2)
    same_place = np.abs(kept.tiles[0].astype(int) - exact.tiles[0]).mean()  # same tissue, 0.2% scale apart
    assert same_place < np.abs(neighbour.tiles[0].astype(int) - exact.tiles[0]).mean() / 2


def test_plan_records_the_mpp_its_tiles_have(real_svs):
    from mixmag.slides.tiling import make_plan

    slide = Slide(real_svs)
    plan, _, _ = make_plan(slide, TilingParams(resample_tolerance=0.01, tissue_threshold=0.0), slide_id="cmu")
    assert read_mpps(plan) == pytest.approx([1.996, 0.998, 0.499])
    assert read_mpps(plan, "pyramid") == pytest.approx([2.0, 1.0, 0.499])  # only the finest is near a slide level
    exact, _, _ = make_plan(slide, TilingParams(tissue_threshold=0.0), slide_id="cmu")
    assert read_mpps(exact) == pytest.approx([2.0, 1.0, 0.5])
