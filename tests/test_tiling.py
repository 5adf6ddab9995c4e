import os

import numpy as np
import pytest
from conftest import make_tissue_slide
from pydantic import ValidationError

from mixmag.errors import ResolutionError
from mixmag.slides.reader import Slide
from mixmag.slides.tiling import TilingParams, cells_of_windows, load_plan, make_plan, plan_is_current, save_plan
from mixmag.synth.slide_writer import write_slide


def test_params_validate():
    with pytest.raises(ValidationError):
        TilingParams(region_size=3, context_size=2)
    with pytest.raises(ValidationError):
        TilingParams(tissue_threshold=1.5)
    with pytest.raises(ValidationError):
        TilingParams(regionsize=3)  # a typo is an error, not ignored


def test_plan_of_a_tissue_slide(tissue_slide):
    with Slide(tissue_slide) as slide:
        plan, thumbnail, mask = make_plan(slide, TilingParams(), slide_id="tissue")
    assert plan.status == "ok" and plan.regions and not plan.warnings
    assert thumbnail.shape[:2] == mask.shape
    grid = np.array(plan.tissue_grid)
    assert grid.shape == (plan.n_rows, plan.n_cols)
    for (r, c), f in zip(plan.regions, plan.region_tissue):
        assert r % 3 == 0 and c % 3 == 0
        assert f >= 0.45
        assert f == pytest.approx(grid[r : r + 3, c : c + 3].mean(), abs=1e-5)
    assert plan.cells == cells_of_windows(plan.regions, 3)
    assert len(plan.cells) == 9 * len(plan.regions)  # non-overlapping
    # every accepted-looking window on the lattice was accepted
    for r in range(0, plan.n_rows - 2, 3):
        for c in range(0, plan.n_cols - 2, 3):
            assert ((r, c) in plan.regions) == (grid[r : r + 3, c : c + 3].mean() >= 0.45 - 1e-6)


def test_overlapping_regions_and_contexts(tissue_slide):
    with Slide(tissue_slide) as slide:
        dense, _, _ = make_plan(slide, TilingParams(region_size=2, region_stride=1, context_size=3), slide_id="t")
    assert len(dense.regions) > len(set((r // 2, c // 2) for r, c in dense.regions))
    assert dense.contexts and all(f >= 0.45 for f in dense.context_tissue)
    assert set(cells_of_windows(dense.contexts, 3)) <= set(dense.cells)


def test_plan_round_trip_and_currency(tmp_path, slide_dir):
    path = make_tissue_slide(slide_dir, "currency.tiff", size=(2000, 2000), seed=5)
    params = TilingParams(region_size=2)
    with Slide(path) as slide:
        plan, _, _ = make_plan(slide, params, slide_id="currency")
    target = save_plan(plan, tmp_path / "currency" / "plan.json")
    assert load_plan(target) == plan
    assert plan_is_current(target, path, params, None, "auto")
    assert not plan_is_current(target, path, TilingParams(region_size=2, tissue_threshold=0.5), None, "auto")
    assert not plan_is_current(target, path, params, 0.5, "auto")
    assert not plan_is_current(target, path, params, None, "openslide")
    os.utime(path, (1, 1))
    assert not plan_is_current(target, path, params, None, "auto")
    target.write_text("{not json")
    assert not plan_is_current(target, path, params, None, "auto")
    with pytest.raises(ValueError, match="not a valid mixmag tiling plan"):
        load_plan(target)


def test_slide_smaller_than_a_region_gives_an_empty_plan(real_svs):
    with Slide(real_svs) as slide:
        plan, _, _ = make_plan(slide, TilingParams(), slide_id="small")
    assert plan.status == "too_small" and plan.regions == [] and plan.cells == []
    assert "smaller than one 3 x 3 region" in plan.warnings[0] and "--region-size" in plan.warnings[0]
    with Slide(real_svs) as slide:
        plan1, _, _ = make_plan(slide, TilingParams(region_size=1), slide_id="small")
    assert plan1.status == "ok" and (plan1.n_rows, plan1.n_cols) == (3, 2) and plan1.regions


def test_blank_slide_has_no_tissue(slide_dir):
    blank = np.full((2000, 2000, 3), 243, np.uint8)
    path = write_slide(slide_dir / "blank.tiff", blank, 0.5)
    with Slide(path) as slide:
        plan, _, mask = make_plan(slide, TilingParams(region_size=1), slide_id="blank")
    assert plan.status == "no_tissue" and not plan.regions and not mask.any()
    assert "no tissue" in plan.warnings[0]


def test_finer_than_scan_needs_explicit_permission(slide_dir):
    path = make_tissue_slide(slide_dir, "coarse-scan.tiff", mpp=0.8, size=(1500, 1500), seed=2)
    with Slide(path) as slide:
        with pytest.raises(ResolutionError, match="coarse-scan.tiff"):
            make_plan(slide, TilingParams(region_size=1), slide_id="coarse")
        plan, _, _ = make_plan(slide, TilingParams(region_size=1, allow_upsample=True), slide_id="coarse")
    assert plan.status == "ok"
