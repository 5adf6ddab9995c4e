import numpy as np
import pytest

from mixmag.slides.pyramids import iter_cells, iter_regions, read_pyramid, split_tiles
from mixmag.slides.reader import Slide
from mixmag.slides.tiling import TilingParams, make_plan


def test_split_tiles_is_row_major():
    image = np.arange(4 * 6 * 1).reshape(4, 6, 1).repeat(3, axis=2).astype(np.uint8)
    tiles = split_tiles(image, 2)
    assert tiles.shape == (6, 2, 2, 3)
    assert tiles[1, 0, 0, 0] == image[0, 2, 0] and tiles[3, 0, 0, 0] == image[2, 0, 0]


@pytest.fixture(scope="module")
def plan_and_slide(tissue_slide):
    slide = Slide(tissue_slide)
    plan, _, _ = make_plan(slide, TilingParams(), slide_id="tissue")
    yield plan, slide
    slide.close()


def test_region_pyramids_hold_189_tiles_and_match_cell_reads(plan_and_slide):
    plan, slide = plan_and_slide
    region = next(iter_regions(slide, plan))
    assert [t.shape for t in region.tiles] == [(9, 224, 224, 3), (36, 224, 224, 3), (144, 224, 224, 3)]
    assert region.n_tiles == 189
    for dr, dc in [(0, 0), (1, 2), (2, 1)]:
        alone = read_pyramid(slide, plan.grid, plan.levels, region.row + dr, region.col + dc)
        from_region = region.cell(dr, dc)
        for a, b in zip(alone.tiles, from_region.tiles):
            # the same pixels up to rounding of the read box at the region's edge
            assert np.abs(a.astype(int) - b).mean() < 1.0


def test_cells_follow_the_plan_order(plan_and_slide):
    plan, slide = plan_and_slide
    cells = list(iter_cells(slide, plan))
    assert [(c.row, c.col) for c in cells] == [tuple(rc) for rc in plan.cells]
    assert all([t.shape[0] for t in c.tiles] == [1, 4, 16] for c in cells)
    assert all(t.dtype == np.uint8 for t in cells[0].tiles)


def test_derived_levels_agree_with_the_slide_pyramid(real_pyramid):
    with Slide(real_pyramid) as slide:
        plan, _, _ = make_plan(slide, TilingParams(region_size=1), slide_id="cmu")
        derived = read_pyramid(slide, plan.grid, plan.levels, *plan.cells[0])
        from_pyramid = read_pyramid(slide, plan.grid, plan.levels, *plan.cells[0], mode="pyramid")
    # The stored levels were JPEG-compressed again, so pixels differ; what must agree is where they are:
    # no shift of the derived tile matches the stored level better than no shift at all.
    for level, (a, b) in enumerate(zip(derived.tiles, from_pyramid.tiles)):
        a, b = a[0].astype(float), b[0].astype(float)
        m = 8
        errors = {
            (dy, dx): np.abs(a[m + dy : -m + dy, m + dx : -m + dx] - b[m:-m, m:-m]).mean()
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        }
        assert min(errors, key=errors.get) == (0, 0), (level, errors)
    with pytest.raises(ValueError, match="read mode"):
        read_pyramid(slide, plan.grid, plan.levels, 0, 0, mode="bogus")
