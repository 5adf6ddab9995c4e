"""H&E-like tissue defined at every point of a slide, so any window of any size can be rendered on its own.

`tissue_like` draws a whole image at once (fine for test-sized images); a 100,000 x 80,000 px slide needs its
pixels strip by strip with bounded memory, and every pixel must come out the same whichever window it is
rendered in. So each ingredient is a function of the pixel centre's position in microns and of the seed:
the tissue outline (a coarse grid of ellipses, bilinear), the stroma texture (value noise on a 20 um lattice,
cubic, lattice values drawn per lattice row), the pixel noise (a fixed periodic noise patch) and the nuclei
(drawn per 256 um block from the block's own random stream). Levels of a pyramid are the same field rendered
at a coarser pixel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .patterns import GLASS_RGB, NUCLEUS_RGB, STROMA_RGB

TEXTURE_UM = 20.0  # lattice spacing of the stroma texture
NUCLEUS_BLOCK_UM = 256.0  # nuclei are drawn per block of this side, each block from its own random stream
NUCLEUS_RADIUS_UM = (2.5, 4.5)
_MASK_GRID = 1024  # longest side of the coarse grid the tissue outline is drawn on
_NOISE_PERIOD = 509  # px; prime, so the noise patch never lines up with tiles
_SUBPIXEL = 4  # cv2 drawing shift: nuclei centres and radii to 1/16 px
_DRAW_NUCLEI_BELOW_MPP = 2.0  # coarser levels show nuclei as a tint (a 2.5-4.5 um nucleus is under 2 px there)
_MARGIN = 4  # px drawn around each window and cut away
_LATTICE_PAD = 8  # lattice points kept left of x = 0 (a margin may reach below 0)


@dataclass
class TissueField:
    """Tissue over a `width_um` x `height_um` slide; `render` draws any window at any pixel size."""

    width_um: float
    height_um: float
    seed: int = 0
    n_pieces: int = 4
    nuclei_per_mm2: float = 2500.0
    _outline: np.ndarray = field(init=False, repr=False)
    _noise: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0])
        scale = _MASK_GRID / max(self.width_um, self.height_um)
        grid_w, grid_h = max(8, math.ceil(self.width_um * scale)), max(8, math.ceil(self.height_um * scale))
        outline = np.zeros((grid_h, grid_w), np.uint8)
        for _ in range(self.n_pieces):
            center = (int(rng.uniform(0.2, 0.8) * grid_w), int(rng.uniform(0.2, 0.8) * grid_h))
            axes = (int(rng.uniform(0.1, 0.3) * grid_w), int(rng.uniform(0.1, 0.3) * grid_h))
            cv2.ellipse(outline, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
        self._outline = outline.astype(np.float32)
        self._noise = rng.normal(0, 2.0, (_NOISE_PERIOD, _NOISE_PERIOD, 3)).astype(np.float32)

    def render(self, x0: int, y0: int, width: int, height: int, mpp_x: float, mpp_y: float) -> np.ndarray:
        """Pixels [y0, y0 + height) x [x0, x0 + width) of the slide drawn at mpp_x x mpp_y um/px, (h, w, 3) uint8.

        Drawn with a margin: OpenCV's anti-aliased circles come out differently in the row or column where the
        canvas clips them, so the margin takes those pixels and the window is cut from inside it."""
        m = _MARGIN
        padded = self._render_padded(x0 - m, y0 - m, width + 2 * m, height + 2 * m, mpp_x, mpp_y)
        return padded[m : m + height, m : m + width]

    def _render_padded(self, x0: int, y0: int, width: int, height: int, mpp_x: float, mpp_y: float) -> np.ndarray:
        # the margin may reach past the slide's edges: its pixels take the edge's texture and outline
        xs_um = np.clip((np.arange(x0, x0 + width, dtype=np.float64) + 0.5) * mpp_x, 0, self.width_um)
        ys_um = np.clip((np.arange(y0, y0 + height, dtype=np.float64) + 0.5) * mpp_y, 0, self.height_um)
        mask = self._mask(xs_um, ys_um)
        texture = _cubic_field(xs_um, ys_um, self._lattice_rows)
        image = np.empty((height, width, 3), np.float32)
        noise_rows = self._noise[np.arange(y0, y0 + height) % _NOISE_PERIOD]
        noise = np.take(noise_rows, np.arange(x0, x0 + width) % _NOISE_PERIOD, axis=1)
        for c, tint in enumerate((0.4, 1.0, 0.6)):
            tissue = STROMA_RGB[c] + (25.0 * tint) * texture
            np.add(np.where(mask, tissue, np.float32(GLASS_RGB[c])), noise[..., c], out=image[..., c])
        if max(mpp_x, mpp_y) > _DRAW_NUCLEI_BELOW_MPP:  # nuclei under a pixel: tint the tissue by their area share
            share = self.nuclei_per_mm2 * 1e-6 * np.pi * np.mean(np.square(NUCLEUS_RADIUS_UM))
            nucleus = np.array(NUCLEUS_RGB, np.float32) * np.float32(0.95)
            image[mask] = image[mask] * np.float32(1 - share) + nucleus * np.float32(share)
        out = np.clip(image, 0, 255).astype(np.uint8)
        if max(mpp_x, mpp_y) <= _DRAW_NUCLEI_BELOW_MPP:
            self._draw_nuclei(out, x0, y0, mpp_x, mpp_y)
        return out

    def _mask(self, xs_um: np.ndarray, ys_um: np.ndarray) -> np.ndarray:
        """Tissue where the bilinear outline is >= 0.5 (the outline grid's cells cover the slide exactly)."""
        ix, iy, wx, wy = self._outline_coordinates(xs_um, ys_um)
        rows = self._outline[iy] * (1 - wy)[:, None] + self._outline[iy + 1] * wy[:, None]
        return np.take(rows, ix, axis=1) * (1 - wx) + np.take(rows, ix + 1, axis=1) * wx >= 0.5

    def _on_tissue(self, xs_um: np.ndarray, ys_um: np.ndarray) -> np.ndarray:
        """The outline at single points (x_k, y_k), for nuclei centres."""
        ix, iy, wx, wy = self._outline_coordinates(xs_um, ys_um)
        o = self._outline
        top = o[iy, ix] * (1 - wx) + o[iy, ix + 1] * wx
        bottom = o[iy + 1, ix] * (1 - wx) + o[iy + 1, ix + 1] * wx
        return top * (1 - wy) + bottom * wy >= 0.5

    def _outline_coordinates(self, xs_um: np.ndarray, ys_um: np.ndarray) -> tuple[np.ndarray, ...]:
        grid_h, grid_w = self._outline.shape
        fx = np.clip(xs_um * (grid_w / self.width_um) - 0.5, 0, grid_w - 1)
        fy = np.clip(ys_um * (grid_h / self.height_um) - 0.5, 0, grid_h - 1)
        ix, iy = np.minimum(fx.astype(np.int64), grid_w - 2), np.minimum(fy.astype(np.int64), grid_h - 2)
        return ix, iy, (fx - ix).astype(np.float32), (fy - iy).astype(np.float32)

    def _lattice_rows(self, j0: int, j1: int, i0: int, i1: int) -> np.ndarray:
        """Texture lattice values [j0, j1) x [i0, i1): each lattice row is its own seeded normal draw."""
        pad = _LATTICE_PAD
        n_cols = math.ceil(self.width_um / TEXTURE_UM) + 2 * pad
        rows = [np.random.default_rng([self.seed, 1, j + pad]).standard_normal(n_cols) for j in range(j0, j1)]
        return np.stack(rows).astype(np.float32)[:, i0 + pad : i1 + pad]

    def _draw_nuclei(self, image: np.ndarray, x0: int, y0: int, mpp_x: float, mpp_y: float) -> None:
        height, width = image.shape[:2]
        reach = NUCLEUS_RADIUS_UM[1] + max(mpp_x, mpp_y)
        left, right = x0 * mpp_x - reach, (x0 + width) * mpp_x + reach
        top, bottom = y0 * mpp_y - reach, (y0 + height) * mpp_y + reach
        one = 1 << _SUBPIXEL
        for bj in range(max(0, int(top // NUCLEUS_BLOCK_UM)), int(bottom // NUCLEUS_BLOCK_UM) + 1):
            for bi in range(max(0, int(left // NUCLEUS_BLOCK_UM)), int(right // NUCLEUS_BLOCK_UM) + 1):
                xs, ys, radii, shades = self._nuclei_in_block(bi, bj)
                near = (xs > left) & (xs < right) & (ys > top) & (ys < bottom)
                for x, y, r, s in zip(xs[near], ys[near], radii[near], shades[near]):
                    center = (round((x / mpp_x - 0.5 - x0) * one), round((y / mpp_y - 0.5 - y0) * one))
                    radius = max(one, round(r / max(mpp_x, mpp_y) * one))
                    color = tuple(int(min(255, c * s)) for c in NUCLEUS_RGB)
                    cv2.circle(image, center, radius, color, thickness=-1, lineType=cv2.LINE_AA, shift=_SUBPIXEL)

    def _nuclei_in_block(self, bi: int, bj: int) -> tuple[np.ndarray, ...]:
        """Nuclei (x um, y um, radius um, shade) of one block, kept where their centre lies on tissue."""
        rng = np.random.default_rng([self.seed, 2, bj, bi])
        n = int(rng.poisson(self.nuclei_per_mm2 * (NUCLEUS_BLOCK_UM / 1000.0) ** 2))
        xs = (bi + rng.random(n)) * NUCLEUS_BLOCK_UM
        ys = (bj + rng.random(n)) * NUCLEUS_BLOCK_UM
        radii = rng.uniform(*NUCLEUS_RADIUS_UM, n)
        shades = rng.uniform(0.8, 1.1, n)
        keep = (xs < self.width_um) & (ys < self.height_um) & self._on_tissue(xs, ys)
        return xs[keep], ys[keep], radii[keep], shades[keep]


def _cubic_field(xs_um: np.ndarray, ys_um: np.ndarray, lattice) -> np.ndarray:
    """Value noise at the given pixel centres: Keys cubic interpolation of the TEXTURE_UM lattice, row pass
    then column pass, each pixel's sum taken in the same order whatever the window."""
    fx, fy = xs_um / TEXTURE_UM, ys_um / TEXTURE_UM
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    wx, wy = _keys_weights(fx - ix), _keys_weights(fy - iy)
    i0, j0 = int(ix.min()) - 1, int(iy.min()) - 1
    values = lattice(j0, int(iy.max()) + 3, i0, int(ix.max()) + 3)
    rows = sum(values[iy - 1 - j0 + k] * wy[k][:, None] for k in range(4))  # (h, lattice columns)
    cols = ix - 1 - i0
    return sum(np.take(rows, cols + k, axis=1) * wx[k] for k in range(4))


def _keys_weights(t: np.ndarray) -> list[np.ndarray]:
    """Weights of the 4 lattice points around each fractional offset t in [0, 1) (Keys, a = -0.5)."""
    t = t.astype(np.float32)
    return [
        ((-0.5 * t + 1.0) * t - 0.5) * t,
        (1.5 * t - 2.5) * t * t + 1.0,
        ((-1.5 * t + 2.0) * t + 0.5) * t,
        (0.5 * t - 0.5) * t * t,
    ]
