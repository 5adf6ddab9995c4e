"""Tissue detection on a thumbnail and tissue fractions on the global cell grid.

Default: HSV saturation with median blur and Otsu (floored so blank glass stays background),
morphological closing, small pieces and small holes removed. A user model (any callable, or an
ONNX / TorchScript file) may supply a probability map instead; it is refined the same way.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ..errors import TissueModelError
from ..fileio import file_sha256, open_regular
from ..geometry import CellGrid
from ..weights_io import WeightsFileError, check_zip_records
from .params import TissueParams

TissueModel = Callable[[np.ndarray], np.ndarray]
"""RGB thumbnail (H, W, 3) uint8 -> tissue probability (H, W) float in [0, 1]."""


def segment_tissue(thumbnail: np.ndarray, params: TissueParams, model: TissueModel | None = None) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail taken at params.thumbnail_mpp."""
    mpp = params.thumbnail_mpp
    if model is not None:
        prob = np.asarray(model(thumbnail), dtype=np.float32)
        if prob.shape != thumbnail.shape[:2]:
            raise ValueError(f"tissue model returned shape {prob.shape}, expected {thumbnail.shape[:2]}")
        mask = prob >= params.model_threshold
    else:
        saturation = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV)[..., 1]
        k = _odd(params.median_um / mpp)
        if k >= 3:
            saturation = cv2.medianBlur(saturation, k)
        otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        mask = saturation > max(otsu, params.min_saturation)
    return refine_mask(mask, params)


def refine_mask(mask: np.ndarray, params: TissueParams) -> np.ndarray:
    """Closing, then drop small pieces and fill small holes."""
    mpp = params.thumbnail_mpp
    m = mask.astype(np.uint8)
    k = _odd(params.closing_um / mpp)
    if k >= 3:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    px_per_mm2 = 1e6 / mpp**2
    m = _drop_small_components(m, params.min_component_mm2 * px_per_mm2)
    holes = _drop_small_components(1 - m, params.max_hole_mm2 * px_per_mm2, keep_border=True)
    return (1 - holes).astype(bool)


def _drop_small_components(m: np.ndarray, min_area_px: float, keep_border: bool = False) -> np.ndarray:
    if min_area_px <= 0 or not m.any():
        return m
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area_px
    if keep_border:
        h, w = m.shape
        x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
        keep |= (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    keep[0] = False  # label 0 is the complement
    return keep[labels].astype(np.uint8)


def _odd(size: float) -> int:
    k = int(round(size))
    return k if k % 2 == 1 else k + 1


def cell_tissue_fractions(mask: np.ndarray, grid: CellGrid) -> np.ndarray:
    """Exact area-average of the mask over every grid cell: (n_rows, n_cols) float32 in [0, 1].

    The mask is piecewise constant, so its integral is bilinear inside each mask pixel and the
    integral image interpolated at the (fractional) cell corners gives exact cell areas.
    """
    if grid.n_rows == 0 or grid.n_cols == 0:
        return np.zeros((grid.n_rows, grid.n_cols), np.float32)
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), axis=0), axis=1)
    # cell corners in mask pixels (the thumbnail spans the whole slide)
    xs = np.arange(grid.n_cols + 1) * grid.cell_px * (w / grid.width)
    ys = np.arange(grid.n_rows + 1) * grid.cell_px * (h / grid.height)
    corners = _interp_matrix(ys, h) @ integral @ _interp_matrix(xs, w).T
    areas = np.diff(np.diff(corners, axis=0), axis=1)
    cell_area = np.outer(np.diff(ys), np.diff(xs))
    return np.clip(areas / cell_area, 0.0, 1.0).astype(np.float32)


def _interp_matrix(points: np.ndarray, size: int) -> np.ndarray:
    """Linear-interpolation weights from samples at 0..size to the given fractional points."""
    points = np.clip(points, 0, size)
    lo = np.minimum(np.floor(points).astype(int), size - 1)
    frac = points - lo
    weights = np.zeros((points.size, size + 1))
    rows = np.arange(points.size)
    weights[rows, lo] = 1 - frac
    weights[rows, lo + 1] += frac
    return weights


def window_fractions(cell_fractions: np.ndarray, size: int) -> np.ndarray:
    """Mean tissue fraction of every size x size window, indexed by its top-left cell."""
    n_rows, n_cols = cell_fractions.shape
    if n_rows < size or n_cols < size:
        return np.zeros((max(0, n_rows - size + 1), max(0, n_cols - size + 1)), np.float32)
    s = np.zeros((n_rows + 1, n_cols + 1), np.float64)
    # summed in float64: a float32 running sum over a large grid drifts (1.00003 for a full cell), and a plan with a
    # fraction above 1 is refused as damaged; the differences of sums are then clipped to what a mean can be
    s[1:, 1:] = np.cumsum(np.cumsum(cell_fractions, axis=0, dtype=np.float64), axis=1)
    sums = s[size:, size:] - s[:-size, size:] - s[size:, :-size] + s[:-size, :-size]
    return np.clip(sums / size**2, 0.0, 1.0).astype(np.float32)


def tissue_model_id(model: TissueModel | None) -> str | None:
    """What identifies a tissue model in plans and stores: `<file>#<sha256[:16]>` for a loaded file,
    the function's name for a callable, None for the built-in detector."""
    if model is None:
        return None
    return getattr(model, "mixmag_id", None) or f"callable:{getattr(model, '__qualname__', type(model).__name__)}"


def file_digest(path: Path) -> str:
    return file_sha256(path, "tissue model")[:16]


def load_tissue_model(path: str | Path) -> TissueModel:
    """A tissue model from an ONNX, torch.export (.pt2) or TorchScript file mapping (1, 3, H, W) float RGB in [0, 1] to
    (1, 1, H, W) or (1, H, W) probabilities (logits are not accepted: apply a sigmoid in the model)."""
    path = Path(path)
    if not path.is_file():
        raise TissueModelError(f"{path}: tissue model not found")
    try:
        model = _load_tissue_model(path)
    except (RuntimeError, OSError) as exc:  # the runtime's own words for a damaged or foreign file
        raise TissueModelError(f"{path}: cannot load the tissue model ({exc})") from exc
    model.mixmag_id = f"{path.resolve()}#{file_digest(path)}"
    return model


def _load_tissue_model(path: Path) -> TissueModel:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError as exc:
            raise TissueModelError(f"{path}: ONNX tissue models need onnxruntime (pip install onnxruntime)") from exc
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(rgb: np.ndarray) -> np.ndarray:
            return np.asarray(session.run(None, {name: _to_nchw(rgb)})[0]).reshape(rgb.shape[:2])

        return run_onnx
    if suffix == ".pt2":
        import torch

        program = torch.export.load(_checked_zip(path)).module()

        def run_exported(rgb: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return program(torch.from_numpy(_to_nchw(rgb))).numpy().reshape(rgb.shape[:2])

        return run_exported
    if suffix in {".pt", ".ts", ".torchscript"}:
        try:
            import torch
        except ImportError as exc:
            raise TissueModelError(f"{path}: TorchScript tissue models need PyTorch") from exc
        module = torch.jit.load(_checked_zip(path), map_location="cpu").eval()

        def run_torchscript(rgb: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(_to_nchw(rgb))).numpy().reshape(rgb.shape[:2])

        return run_torchscript
    raise TissueModelError(
        f"{path}: unknown tissue model format {suffix!r}; use .onnx, a torch.export .pt2 or a TorchScript .pt/.ts file"
    )


def _checked_zip(path: Path) -> io.BytesIO:
    """The bytes of a TorchScript or torch.export file (a zip, like a checkpoint) whose records passed the same
    bounds as a checkpoint's, so a decompression bomb is refused before torch inflates anything."""
    fix = "export the tissue model again with torch.jit.save or torch.export.save"
    with open_regular(path, "tissue model") as handle:
        try:
            check_zip_records(handle, path, fix=fix)
        except WeightsFileError as exc:
            raise TissueModelError(str(exc)) from None
        handle.seek(0)
        return io.BytesIO(handle.read())


def _to_nchw(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
