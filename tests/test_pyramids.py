import numpy as np
import pytest

from mixmag.geometry import CellGrid, LevelSpec
from mixmag.slides.pyramids import iter_cells, iter_regions, read_pyramid, split_tiles
from mixmag.slides.reader import Slide, halve, halve_tiles
from mixmag.slides.tiling import TilingParams, make_plan
from mixmag.synth.patterns import tissue_like
from mixmag.synth.slide_writer import write_slide


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


def _frame_pyramid(slide, grid, levels, row, col, size, **opts):
    """`derive` the way it was first written: one frame per level, halved whole, then cut into tiles."""
    side = size * levels.finest_cell_px
    images = [slide.read_box(grid.window_box(row, col, size), levels.finest_mpp, (side, side), **opts)]
    for _ in range(levels.n_levels - 1):
        images.append(halve(images[-1]))
    return [split_tiles(im, levels.tile_px) for im in reversed(images)]


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.4987])
def test_tiles_read_straight_from_the_decoder_equal_frames_cut_into_tiles(slide_dir, mpp):
    """The direct reader decodes into the tiles (reduced by 2 on a 40x level, kept or resampled otherwise) and halves
    tile by tile: the same pixels, to the bit, as reading a frame, halving it and cutting it; at the slide's edge
    (white glass) and for regions too."""
    image = tissue_like(2900, 2500, mpp, seed=5, tissue_mask=np.ones((4, 4), bool))
    path = write_slide(slide_dir / f"tiles-{mpp}.svs", image, mpp, downsamples=(1, 4), flavor="aperio", tile=240)
    levels = LevelSpec()
    with Slide(path) as slide:
        grid = CellGrid(slide.mpp, slide.width, slide.height, levels.cell_um)
        checked = 0
        for (row, col), size in [((0, 0), 1), ((1, 1), 1), ((grid.n_rows - 1, grid.n_cols - 1), 1), ((0, 0), 2)]:
            for opts in ({}, {"keep_within": 0.01}):
                tiles = read_pyramid(slide, grid, levels, row, col, size, **opts).tiles
                expected = _frame_pyramid(slide, grid, levels, row, col, size, **opts)
                assert [t.shape for t in tiles] == [t.shape for t in expected]
                assert all(np.array_equal(a, b) for a, b in zip(tiles, expected))
                checked += 1
        assert checked == 8


def test_halving_tiles_equals_halving_the_frame():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (8 * 6, 8 * 6, 3), dtype=np.uint8)  # 6 x 6 tiles of 8 px
    fine = split_tiles(frame, 8)
    coarse = np.full((9, 8, 8, 3), 7, np.uint8)
    halve_tiles(fine, 6, coarse)
    assert np.array_equal(coarse, split_tiles(halve(frame), 8))


def test_direct_tiles_refuse_a_shape_that_does_not_hold_the_read(tissue_slide):
    with Slide(tissue_slide) as slide:
        reader = slide._direct[0]
        with pytest.raises(ValueError, match="do not hold"):
            reader.read_tiles(0, 0, 448, 448, 1, np.empty((3, 224, 224, 3), np.uint8))


def test_stacked_tiles_are_the_levels_in_one_array_without_a_copy(plan_and_slide):
    plan, slide = plan_and_slide
    for mode in ("derive", "pyramid"):
        pyramid = read_pyramid(slide, plan.grid, plan.levels, *plan.cells[0], mode=mode)
        stacked = pyramid.stacked()
        assert np.array_equal(stacked, np.concatenate(pyramid.tiles))
        assert np.shares_memory(stacked, pyramid.tiles[-1]) == (mode == "derive")
        assert pyramid.cell(0, 0).stacked().shape == stacked.shape
