import math

import pytest

from mixmag.geometry import CellGrid, LevelSpec, magnification_name, sequence_length, token_slots


def test_sequence_length_matches_paper():
    assert sequence_length(3, 3) == 189
    assert sequence_length(1, 3) == 21
    assert sequence_length(2, 1) == 4
    assert len(token_slots(3, 3)) == 189


def test_token_slots_are_level_major_then_row_major():
    slots = token_slots(3, 3)
    assert slots[0] == (0, 0, 0) and slots[8] == (0, 2, 2)
    assert slots[9] == (1, 0, 0) and slots[9 + 35] == (1, 5, 5)
    assert slots[45] == (2, 0, 0) and slots[-1] == (2, 11, 11)
    assert slots[10] == (1, 0, 1)


def test_level_spec_defaults():
    levels = LevelSpec()
    assert levels.mpps == (2.0, 1.0, 0.5)
    assert levels.names == ("5x", "10x", "20x")
    assert levels.cell_um == 448.0
    assert levels.finest_cell_px == 896
    assert [levels.tiles_per_cell(i) for i in range(3)] == [1, 4, 16]
    assert magnification_name(0.25) == "40x"
    with pytest.raises(ValueError):
        LevelSpec(n_levels=0)


def test_grid_counts_only_whole_cells():
    # The CMU sample: 2220 x 2967 px at 0.499 um/px holds 2 x 3 whole 448 um cells.
    grid = CellGrid(0.499, 2220, 2967, 448.0)
    assert math.isclose(grid.cell_px, 448 / 0.499)
    assert (grid.n_cols, grid.n_rows) == (2, 3)


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.2631, 0.4987])
def test_tiles_partition_their_cell_at_every_level(mpp):
    grid = CellGrid(mpp, 20000, 20000, 448.0)
    for row, col in [(0, 0), (3, 7), (11, 2)]:
        cell = grid.cell_box(row, col)
        for level in range(4):
            n = 2**level
            boxes = [grid.tile_box(row, col, level, r, c) for r in range(n) for c in range(n)]
            assert math.isclose(sum(b.width * b.height for b in boxes), cell.width * cell.height, rel_tol=1e-9)
            assert math.isclose(min(b.x0 for b in boxes), cell.x0) and math.isclose(max(b.x1 for b in boxes), cell.x1)
            assert math.isclose(min(b.y0 for b in boxes), cell.y0) and math.isclose(max(b.y1 for b in boxes), cell.y1)


def test_cell_boundaries_are_global_and_not_rounded():
    grid = CellGrid(0.2631, 30000, 30000, 448.0)
    s = 448.0 / 0.2631
    box = grid.window_box(5, 9, 3)
    assert (box.x0, box.y0) == (9 * s, 5 * s)
    assert box.x1 == 12 * s and box.y1 == 8 * s
    assert box.x0 != round(box.x0)  # kept as a float: only reads round
    with pytest.raises(ValueError):
        grid.tile_box(0, 0, 1, 2, 0)
