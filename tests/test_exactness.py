"""Every 10x and 20x tile lies exactly inside its 5x parent, on any scanner mpp, and the grid is global.

The slides encode position in their pixels (synth.patterns.position_code); decoding a tile's content
gives where it really came from, to a small fraction of a pixel.
"""

import numpy as np
import pytest
from conftest import make_position_slide

from mixmag.geometry import CellGrid, LevelSpec
from mixmag.slides.pyramids import read_pyramid
from mixmag.slides.reader import Slide
from mixmag.slides.tiling import TilingParams, make_plan
from mixmag.synth.patterns import POSITION_PERIODS_UM, circular_error, decode_position

LEVELS = LevelSpec()
CELLS = [(0, 0), (1, 2), (2, 1), (3, 3)]
SIZE_UM = (1850.0, 1850.0)  # 4 x 4 cells


def _offset_px(tile: np.ndarray, level: int, expected_um: tuple[float, float]) -> float:
    """Largest distance, in pixels of the tile's level, between where the tile is and where it should be."""
    mpp = LEVELS.mpp(level)
    x, y = decode_position(tile, mpp)
    return (
        max(
            circular_error(x, expected_um[0], POSITION_PERIODS_UM[0]),
            circular_error(y, expected_um[1], POSITION_PERIODS_UM[1]),
        )
        / mpp
    )


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.2631, 0.4987])
@pytest.mark.parametrize("mode", ["derive", "pyramid"])
def test_every_tile_sits_where_the_grid_says(slide_dir, mpp, mode):
    path = make_position_slide(slide_dir, f"pos-{mpp}.tiff", mpp=mpp, size_um=SIZE_UM, downsamples=(1, 2, 4, 8))
    with Slide(path) as slide:
        grid = CellGrid(slide.mpp, slide.width, slide.height, LEVELS.cell_um)
        assert grid.n_rows >= 4 and grid.n_cols >= 4
        worst = 0.0
        for row, col in CELLS:
            pyramid = read_pyramid(slide, grid, LEVELS, row, col, mode=mode)
            assert [t.shape[0] for t in pyramid.tiles] == [1, 4, 16]
            for level, tiles in enumerate(pyramid.tiles):
                per = 2**level
                for k, tile in enumerate(tiles):
                    box = grid.tile_box(row, col, level, *divmod(k, per))
                    worst = max(worst, _offset_px(tile, level, (box.x0 * mpp, box.y0 * mpp)))
        assert worst <= 1.0, f"a tile is {worst:.2f} px away from its place"


@pytest.mark.parametrize("mpp", [0.25, 0.2631])
def test_children_lie_inside_their_5x_parent(slide_dir, mpp):
    path = make_position_slide(slide_dir, f"pos-{mpp}.tiff", mpp=mpp, size_um=SIZE_UM, downsamples=(1, 2, 4, 8))
    tile_um = [LEVELS.cell_um / 2**i for i in range(3)]
    with Slide(path) as slide:
        grid = CellGrid(slide.mpp, slide.width, slide.height, LEVELS.cell_um)
        for row, col in CELLS:
            pyramid = read_pyramid(slide, grid, LEVELS, row, col)
            parent_x, parent_y = decode_position(pyramid.tiles[0][0], LEVELS.mpp(0))
            for level in (1, 2):
                per = 2**level
                for k, tile in enumerate(pyramid.tiles[level]):
                    r, c = divmod(k, per)
                    expected = ((parent_x + c * tile_um[level]), (parent_y + r * tile_um[level]))
                    assert _offset_px(tile, level, expected) <= 1.0


def test_the_check_detects_a_one_pixel_shift(slide_dir):
    """Negative control: a crop shifted by 2 px at its level is reported as misplaced."""
    mpp = 0.5
    path = make_position_slide(slide_dir, f"pos-{mpp}.tiff", mpp=mpp, size_um=SIZE_UM, downsamples=(1, 2, 4, 8))
    with Slide(path) as slide:
        grid = CellGrid(slide.mpp, slide.width, slide.height, LEVELS.cell_um)
        box = grid.tile_box(2, 2, 2, 3, 1)
        shifted = type(box)(box.x0 + 2, box.y0, box.x1 + 2, box.y1)  # 2 px at 0.5 um/px = 2 tile px
        tile = slide.read_box(shifted, 0.5, (224, 224))
        assert 1.5 < _offset_px(tile, 2, (box.x0 * mpp, box.y0 * mpp)) < 2.5


def test_grid_is_global_whatever_the_tissue_layout(slide_dir):
    mpp = 0.4987
    left = np.zeros((8, 8), bool)
    left[1:7, 0:5] = True
    right = np.zeros((8, 8), bool)
    right[0:6, 3:8] = True
    params = TilingParams(region_size=2)
    plans = []
    for name, mask in (("left", left), ("right", right)):
        path = make_position_slide(
            slide_dir, f"layout-{name}.tiff", mpp=mpp, size_um=(2750.0, 2750.0), tissue_mask=mask, downsamples=(1, 4)
        )
        with Slide(path) as slide:
            plan, _, _ = make_plan(slide, params, slide_id=name)
            plans.append(plan)
            checked = 0
            for row, col in plan.regions:
                assert row % 2 == 0 and col % 2 == 0  # windows sit on the global lattice
                pyramid = read_pyramid(slide, plan.grid, LEVELS, row, col, 2)
                for dr in range(2):
                    for dc in range(2):
                        tile = pyramid.cell(dr, dc).tiles[0][0]
                        if (tile == 255).all(axis=2).any():
                            continue  # touches glass: no position code to read
                        r, c = row + dr, col + dc
                        assert _offset_px(tile, 0, (c * plan.cell_px * mpp, r * plan.cell_px * mpp)) <= 1.0
                        checked += 1
            assert checked >= 4
    a, b = plans
    assert a.cell_px == b.cell_px and (a.n_rows, a.n_cols) == (b.n_rows, b.n_cols)
    assert set(a.regions) != set(b.regions)
    shared = set(a.cells) & set(b.cells)
    assert shared, "the two layouts should share some cells"


@pytest.mark.parametrize("fmt", ["openslide", "omezarr", "czi", "dicom", "slideio"])
def test_every_backend_puts_tiles_where_the_grid_says(slide_dir, fmt):
    """The same position check through every backend, on the same pixels written in its format."""
    from slide_formats import slide_pixels, write_czi, write_dicom, write_ome_zarr

    mpp = 0.4987
    tiff = make_position_slide(
        slide_dir, f"pos-{mpp}.svs", mpp=mpp, size_um=SIZE_UM, downsamples=(1, 2, 4), flavor="aperio"
    )
    if fmt == "omezarr":
        path = write_ome_zarr(slide_pixels(tiff), mpp, slide_dir / f"pos-{mpp}.ome.zarr")
    elif fmt == "czi":
        path = write_czi(slide_pixels(tiff), mpp, slide_dir / f"pos-{mpp}.czi")
    elif fmt == "dicom":
        path = write_dicom(tiff, slide_dir / f"pos-{mpp}-dicom")
    else:
        path = tiff
    backend = "auto" if fmt in ("omezarr", "czi", "dicom") else fmt
    if fmt == "slideio":
        from slide_formats import need

        need("slideio")
    with Slide(path, backend=backend) as slide:
        assert slide.mpp == pytest.approx(mpp)
        grid = CellGrid(slide.mpp, slide.width, slide.height, LEVELS.cell_um)
        for mode in ("derive", "pyramid"):
            worst = 0.0
            for row, col in CELLS[:2]:
                pyramid = read_pyramid(slide, grid, LEVELS, row, col, mode=mode)
                for level, tiles in enumerate(pyramid.tiles):
                    for k, tile in enumerate(tiles):
                        box = grid.tile_box(row, col, level, *divmod(k, 2**level))
                        worst = max(worst, _offset_px(tile, level, (box.x0 * mpp, box.y0 * mpp)))
            assert worst <= 1.0, f"{fmt} {mode}: a tile is {worst:.2f} px away from its place"
