import numpy as np
import pytest

from mixmag.geometry import CellGrid
from mixmag.slides.tissue import TissueParams, cell_tissue_fractions, segment_tissue, window_fractions
from mixmag.synth.patterns import tissue_like


def test_cell_fractions_are_exact_areas_on_a_fractional_grid():
    # mask 100 x 80 thumbnail px covering a slide of 1000 x 800 level-0 px; tissue = x < 333 level-0 px
    mask = np.zeros((80, 100), bool)
    mask[:, :33] = True
    mask[:, 33] = False
    grid = CellGrid(slide_mpp=1.0, width=1000, height=800, cell_um=150.0)  # 6 x 5 cells of 150 px
    fractions = cell_tissue_fractions(mask, grid)
    assert fractions.shape == (5, 6)
    # tissue covers level-0 x in [0, 330): cells 0, 1 fully, cell 2 covers [300, 450) -> 30/150
    np.testing.assert_allclose(fractions[:, 0], 1.0)
    np.testing.assert_allclose(fractions[:, 1], 1.0)
    np.testing.assert_allclose(fractions[:, 2], 30 / 150, atol=1e-9)
    np.testing.assert_allclose(fractions[:, 3:], 0.0)


def test_cell_fractions_match_brute_force_on_random_masks():
    rng = np.random.default_rng(0)
    mask = rng.random((57, 73)) > 0.5
    grid = CellGrid(slide_mpp=0.37, width=730, height=570, cell_um=448 * 0.37 / 4.3)  # non-integer cells
    fractions = cell_tissue_fractions(mask, grid)
    up = np.repeat(np.repeat(mask, 10, axis=0), 10, axis=1).astype(float)  # level-0 px
    s = grid.cell_px
    for r in range(grid.n_rows):
        for c in range(grid.n_cols):
            # sample the upscaled mask finely inside the cell
            ys = (r * s + (np.arange(200) + 0.5) * s / 200).astype(int)
            xs = (c * s + (np.arange(200) + 0.5) * s / 200).astype(int)
            assert fractions[r, c] == pytest.approx(up[np.ix_(ys, xs)].mean(), abs=0.02)


def test_window_fractions_of_a_large_grid_stay_fractions():
    """A float32 running sum over a 30 x 40 grid drifted to 1.00003 for a full cell, and the plan of any slide larger
    than a few millimetres was refused as damaged ('tissue fractions ... outside 0-1')."""
    rng = np.random.default_rng(0)
    cells = rng.random((30, 40)).astype(np.float32)
    cells[cells > 0.5] = 1.0
    for size in (1, 3):
        win = window_fractions(cells, size)
        assert win.min() >= 0 and win.max() <= 1
        expect = np.lib.stride_tricks.sliding_window_view(cells.astype(np.float64), (size, size)).mean(axis=(2, 3))
        np.testing.assert_allclose(win, expect, atol=1e-6)
    assert np.all(window_fractions(cells, 1)[cells == 1.0] == 1.0)


def test_window_fractions_are_window_means():
    rng = np.random.default_rng(1)
    cells = rng.random((7, 9)).astype(np.float32)
    win = window_fractions(cells, 3)
    assert win.shape == (5, 7)
    for r in range(5):
        for c in range(7):
            assert win[r, c] == pytest.approx(cells[r : r + 3, c : c + 3].mean(), abs=1e-6)
    assert window_fractions(cells[:2], 3).shape == (0, 7)


def test_blank_glass_has_no_tissue():
    params = TissueParams()
    glass = np.full((300, 400, 3), 242, np.uint8) + np.random.default_rng(0).integers(0, 4, (300, 400, 3)).astype(
        np.uint8
    )
    assert not segment_tissue(glass, params).any()


def test_tissue_pieces_are_found():
    params = TissueParams()
    truth = np.zeros((40, 50), bool)
    truth[5:25, 8:30] = True
    truth[28:38, 35:48] = True
    image = tissue_like(500, 400, params.thumbnail_mpp, seed=0, tissue_mask=truth)
    mask = segment_tissue(image, params)
    big_truth = np.repeat(np.repeat(truth, 10, axis=0), 10, axis=1)
    iou = (mask & big_truth).sum() / (mask | big_truth).sum()
    assert iou > 0.9


def test_small_specks_are_dropped_and_small_holes_filled():
    params = TissueParams(min_component_mm2=0.05, max_hole_mm2=0.05)
    mask = np.zeros((200, 200), bool)
    mask[50:150, 50:150] = True  # 0.64 mm2 piece at 8 um/px
    mask[95:100, 95:100] = False  # small hole
    mask[10:13, 10:13] = True  # speck
    image = np.where(mask[..., None], np.array([220, 130, 180], np.uint8), np.array([242, 241, 243], np.uint8))
    out = segment_tissue(image.astype(np.uint8), params)
    assert out[97, 97] and not out[11, 11]


def test_a_user_model_replaces_thresholding():
    params = TissueParams()
    image = np.full((100, 120, 3), 242, np.uint8)

    def left_half(rgb):
        prob = np.zeros(rgb.shape[:2], np.float32)
        prob[:, : rgb.shape[1] // 2] = 0.9
        return prob

    mask = segment_tissue(image, params, model=left_half)
    assert mask[:, :60].all() and not mask[:, 60:].any()
    with pytest.raises(ValueError, match="shape"):
        segment_tissue(image, params, model=lambda rgb: np.zeros((3, 3)))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_tissue_model_files(tmp_path):
    import torch

    from mixmag.slides.tissue import load_tissue_model

    class TopHalf(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            prob = torch.zeros_like(x[:, :1])
            prob[:, :, : x.shape[2] // 2] = 1.0
            return prob

    exported = tmp_path / "tissue.pt2"
    torch.export.save(torch.export.export(TopHalf(), (torch.zeros(1, 3, 80, 60),)), str(exported))
    scripted = tmp_path / "tissue.pt"
    torch.jit.script(TopHalf()).save(str(scripted))  # deprecated by PyTorch, still supported here
    for path in (exported, scripted):
        model = load_tissue_model(path)
        mask = segment_tissue(np.full((80, 60, 3), 240, np.uint8), TissueParams(), model=model)
        assert mask[:40].all() and not mask[40:].any()
    with pytest.raises(ValueError, match="unknown tissue model format"):
        bad = tmp_path / "m.pkl"
        bad.write_bytes(b"x")
        load_tissue_model(bad)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_plans_and_runs_remember_the_tissue_model(tmp_path):
    import shutil
    from types import SimpleNamespace

    import torch
    from conftest import make_tissue_slide
    from typer.testing import CliRunner

    from mixmag.cli import app
    from mixmag.errors import RunMismatchError
    from mixmag.slides.tiling import load_plan
    from mixmag.stages.predict import tissue_model_for_run

    class Everything(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ones_like(x[:, :1])

    model = tmp_path / "tissue.pt"
    torch.jit.script(Everything()).save(str(model))
    slide = make_tissue_slide(tmp_path, "s.tiff", size=(2000, 1600))

    def tile(*extra):
        result = CliRunner().invoke(app, ["tile", str(slide), "--out", str(tmp_path / "tiles"), *extra])
        assert result.exit_code == 0, result.output
        return result.output

    assert "tiled" in tile()
    assert "tiled in" in tile("--tissue-model", str(model))  # another tissue model: not the same plan
    assert "skipped" in tile("--tissue-model", str(model))
    recorded = load_plan(tmp_path / "tiles" / "s" / "plan.json").tissue_model
    assert recorded.startswith(str(model.resolve())) and "#" in recorded
    run = SimpleNamespace(pipeline={"tissue_model": recorded})
    assert tissue_model_for_run(run) is not None
    moved = tmp_path / "moved.pt"
    shutil.move(model, moved)
    with pytest.raises(RunMismatchError, match="--tissue-model PATH"):
        tissue_model_for_run(run)
    assert tissue_model_for_run(run, moved) is not None
    other = tmp_path / "other.pt"
    torch.jit.script(torch.nn.Identity()).save(str(other))
    with pytest.raises(RunMismatchError, match="not the tissue model"):
        tissue_model_for_run(run, other)
    with pytest.raises(RunMismatchError, match="built-in tissue detector"):
        tissue_model_for_run(SimpleNamespace(pipeline={"tissue_model": None}), other)
