"""Attribution drawn over the slide: one heatmap per magnification, the attention on each region, and
the most attended tiles of every magnification as the crops the encoder saw.

Maps are placed with the same lattice the tiler used (cells of `cell_px` level-0 pixels from the slide's
origin; a level-i map has 2^i values per cell side), so a hot square covers exactly its tile.

Colours never mislead by stretching: attention is drawn as its ratio to what uniform attention would give (the map's
total spread evenly over the entries the model saw) on a diverging scale, log2, symmetric and at least 0.5x-2x, so
uniform is the neutral colour, near-uniform attention stays pale and a one-region slide is one neutral square; signed
attributions (gradient x input) diverge around 0. Every colour bar is labelled in the quantity drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from ..errors import MixmagError
from ..eval.explain import SlideAttribution
from ..fileio import atomic_path, output_folder
from ..geometry import Box
from ..ids import path_for_id
from ..markup import plot_text
from ..slides.params import TilingParams
from ..slides.reader import Slide
from ..store import StoreHeader

THUMBNAIL_LONGEST = 900
DIVERGING_CMAP = "RdBu_r"  # blue below, white at neutral, red above
MIN_RATIO_SPAN = 1.0  # log2 units: a ratio scale spans at least 0.5x-2x uniform, so 0.97-1.03x stays near white
MAX_RATIO_SPAN = 5.0  # and at most 1/32x-32x; beyond it colours saturate


@dataclass(frozen=True)
class PanelScale:
    """How one map panel turns values into colours: values are transformed (`to_axis`) onto a symmetric axis
    [-limit, limit] whose centre is the neutral colour (uniform attention, or no effect)."""

    kind: str  # "ratio" (log2 of value over uniform) or "signed" (value, 0 neutral)
    limit: float
    uniform: float = 1.0  # the value uniform attention gives one entry (ratio scales)
    label: str = ""

    def to_axis(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, np.float64)
        if self.kind == "signed":
            return values
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = values / self.uniform
            return np.where(np.isnan(ratio), np.nan, np.log2(np.clip(ratio, 2.0**-self.limit, 2.0**self.limit)))

    def colours(self, values: np.ndarray) -> np.ndarray:
        """RGBA of each value (what a panel draws before its transparency)."""
        import matplotlib

        norm = matplotlib.colors.Normalize(-self.limit, self.limit)
        return matplotlib.colormaps[DIVERGING_CMAP](norm(self.to_axis(values)))

    def ticks(self) -> tuple[list[float], list[str]]:
        """Colour-bar ticks: powers of two in 'x uniform' on ratio scales, five signed values otherwise."""
        if self.kind == "signed":
            positions = list(np.linspace(-self.limit, self.limit, 5))
            return positions, [f"{v:+.2g}" if v else "0" for v in positions]
        step = max(1, int(np.ceil(self.limit / 3)))
        positions = [float(k) for k in range(-int(self.limit), int(self.limit) + 1, step)]
        return positions, [f"{2.0**k:g}x" if k >= 0 else f"1/{2.0**-k:g}x" for k in positions]


def ratio_scale(values: np.ndarray, label: str, uniform: float | None = None) -> PanelScale:
    """A diverging log2 scale of values over `uniform` (default: their mean over finite entries, i.e. uniform
    attention over what the model saw), symmetric, at least MIN_RATIO_SPAN wide; a constant map (one region) is
    neutral, and its colour bar finite."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if uniform is None:
        uniform = float(finite.mean()) if finite.size else 1.0
    if not np.isfinite(uniform) or uniform <= 0:
        return signed_scale(values, label)
    positive = finite[finite > 0] / uniform
    # the 98th percentile of the distance from uniform: a few near-zero entries do not wash out the rest (they
    # saturate at the end of the scale instead)
    spread = float(np.percentile(np.abs(np.log2(positive)), 98)) if positive.size else 0.0
    limit = float(min(max(np.ceil(spread), MIN_RATIO_SPAN), MAX_RATIO_SPAN))
    return PanelScale("ratio", limit, uniform, label)


def signed_scale(values: np.ndarray, label: str) -> PanelScale:
    """A diverging scale around 0 for signed attributions, symmetric over the largest magnitude (finite when all 0)."""
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    return PanelScale("signed", peak if peak > 0 else 1.0, label=label)


def open_store_slide(header: StoreHeader | dict) -> Slide:
    """The slide a store was made from, read the way the tiler read it (same backend and mpp)."""
    header = StoreHeader.of(header)
    if not header.slide_path or header.slide_mpp is None:
        raise MixmagError(
            f"store of {header.slide_id!r} names no slide file (imported or synthetic); heatmaps need the slide"
        )
    return Slide(header.slide_path, mpp=header.slide_mpp, backend=header.reader_backend or "auto")


def thumbnail(slide: Slide, longest: int = THUMBNAIL_LONGEST) -> tuple[np.ndarray, float]:
    """The whole slide with its longest side about `longest` px, and thumbnail px per level-0 px."""
    target_mpp = max(slide.mpp, max(slide.width, slide.height) * slide.mpp / longest)
    image = slide.thumbnail(target_mpp)
    return image, image.shape[1] / slide.width


def map_on_thumbnail(level_map: np.ndarray, unit_px: float, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) picture of a map whose entries are unit_px x unit_px level-0 squares; NaN where no entry."""
    h, w = shape
    rows = np.floor((np.arange(h) + 0.5) / scale / unit_px).astype(np.int64)
    cols = np.floor((np.arange(w) + 0.5) / scale / unit_px).astype(np.int64)
    out = np.full((h, w), np.nan, np.float32)
    in_r, in_c = rows < level_map.shape[0], cols < level_map.shape[1]
    out[np.ix_(in_r, in_c)] = level_map[np.ix_(rows[in_r], cols[in_c])]
    return out


def region_map(a: SlideAttribution, shape_cells: tuple[int, int]) -> np.ndarray:
    """Cell-unit map with each accepted region's attention over its t x t cells."""
    out = np.full(shape_cells, np.nan, np.float32)
    t = a.region_size
    for (r, c), w in zip(a.regions, a.region_weight):
        out[r : r + t, c : c + t] = w
    return out


def top_tiles(a: SlideAttribution, level: int, k: int) -> list[tuple[int, int, float]]:
    """(row, col, value) of the k highest entries of a level's map, in that level's tile units."""
    m = a.level_maps[a.level_names[level]]
    finite = np.flatnonzero(np.isfinite(m.ravel()))
    if finite.size == 0:
        return []
    best = finite[np.argsort(-m.ravel()[finite], kind="stable")[:k]]
    return [(int(i // m.shape[1]), int(i % m.shape[1]), float(m.ravel()[i])) for i in best]


def read_level_square(slide: Slide, header: StoreHeader, level: int, row: int, col: int, side: int = 1) -> np.ndarray:
    """side x side tiles of a level's grid from (row, col), read at that level's mpp with the tiler's
    tolerance, as the encoder saw them."""
    unit = float(header.cell_px or 0) / 2**level
    try:
        params = TilingParams.model_validate(header.tiling_params or {})
    except ValidationError as exc:
        raise MixmagError(
            f"the store's tiling_params are not tiling settings ({exc.errors()[0]['msg']}); re-embed the slide."
        ) from None
    box = Box(col * unit, row * unit, (col + side) * unit, (row + side) * unit)
    px = int(header.tile_px or 0) * side
    return slide.read_box(box, float((header.level_mpps or [])[level]), (px, px), **params.read_options)


def tile_crop(slide: Slide, header: StoreHeader | dict, level: int, row: int, col: int) -> np.ndarray:
    """The level's tile at (row, col) of its grid."""
    return read_level_square(slide, StoreHeader.of(header), level, row, col)


def top_regions(a: SlideAttribution, k: int) -> list[tuple[int, int, float]]:
    """(row, col, attention) of the k regions the model attended most."""
    order = np.argsort(-a.region_weight, kind="stable")[:k]
    return [(int(a.regions[i][0]), int(a.regions[i][1]), float(a.region_weight[i])) for i in order]


def region_views(
    slide: Slide, header: StoreHeader, a: SlideAttribution, row: int, col: int
) -> list[tuple[np.ndarray, str]]:
    """One region at each magnification: the whole region at the coarsest level (the most attended
    finer tiles outlined), then the most attended tile of each finer level inside it, as read."""
    t, px = a.region_size, int(header.tile_px or 0)
    whole = read_level_square(slide, header, 0, row, col, t).copy()
    views = [(whole, f"{a.level_names[0]}: region ({row}, {col})")]
    import cv2

    for i in range(1, len(a.level_names)):
        s = 2**i
        window = a.level_maps[a.level_names[i]][row * s : (row + t) * s, col * s : (col + t) * s]
        if window.size == 0 or not np.isfinite(window).any():
            continue
        r, c = np.unravel_index(np.nanargmax(window), window.shape)
        views.append((tile_crop(slide, header, i, row * s + r, col * s + c), f"{a.level_names[i]}: top tile"))
        side = px / s  # that tile's outline on the coarsest view
        color = (255, 255, 255) if i == 1 else (0, 255, 255)
        cv2.rectangle(
            whole, (round(c * side), round(r * side)), (round((c + 1) * side) - 1, round((r + 1) * side) - 1), color, 2
        )
    return views


def draw_heatmaps(
    a: SlideAttribution,
    header: StoreHeader | dict,
    out_dir: Path,
    *,
    top_k: int = 4,
    formats: tuple[str, ...] = ("png",),
) -> list[Path]:
    """<slide>_maps.<fmt> (thumbnail, region attention, one map per magnification), <slide>_top.<fmt>
    (top-k tiles of each magnification) and <slide>_regions.<fmt> (top regions at every magnification)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path_for_id(out_dir, a.slide_id, what="slide id", where="heatmaps")  # every picture is named after it
    output_folder(out_dir.parent, out_dir.name, "heatmaps folder")  # a linked heatmaps/ never writes elsewhere
    header = StoreHeader.of(header)
    with open_store_slide(header) as slide:
        thumb, px_scale = thumbnail(slide)
        crops = [
            [(tile_crop(slide, header, i, r, c), v) for r, c, v in top_tiles(a, i, top_k)]
            for i in range(len(a.level_names))
        ]
        regions = (
            [(w, region_views(slide, header, a, r, c)) for r, c, w in top_regions(a, min(top_k, 3))]
            if a.region_size
            else []
        )
    panels = map_panels(a, float(header.cell_px or 0))
    written = []
    shape = thumb.shape[:2]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.4 * len(panels), 3.6 * shape[0] / shape[1] + 0.7), squeeze=False
    )
    for ax, (title, values, unit, scale) in zip(axes[0], panels):
        ax.imshow(thumb if values is None else _grey(thumb))
        if values is not None:
            _draw_map(fig, ax, map_on_thumbnail(values, unit, px_scale, shape), scale)
        ax.set_title(plot_text(title), fontsize=8)  # level names come from the store
        ax.set_axis_off()
    neutral = "white = uniform attention" if a.method.startswith("AB") else "white = no effect"
    fig.suptitle(f"{plot_text(a.slide_id)}: score {a.score:.3f} ({a.method}; {neutral})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    written += _save(fig, out_dir / f"{a.slide_id}_maps", formats)

    k = max((len(c) for c in crops), default=0)
    if k:
        fig, axes = plt.subplots(len(crops), k, figsize=(2.1 * k, 2.3 * len(crops)), squeeze=False)
        for i, row in enumerate(crops):
            for j in range(k):
                ax = axes[i][j]
                ax.set_axis_off()
                if j < len(row):
                    image, value = row[j]
                    ax.imshow(image)
                    level = plot_text(a.level_names[i])
                    ax.set_title(f"{level} #{j + 1}: {value_label(value, panels[-1][3])}", fontsize=8)
        fig.suptitle(f"{plot_text(a.slide_id)}: most attended tiles per magnification", fontsize=10)
        fig.tight_layout()
        written += _save(fig, out_dir / f"{a.slide_id}_top", formats)
    if regions:
        n = max(len(v) for _, v in regions)
        fig, axes = plt.subplots(len(regions), n, figsize=(2.6 * n, 2.8 * len(regions)), squeeze=False)
        for k, (weight, views) in enumerate(regions):
            for j in range(n):
                ax = axes[k][j]
                ax.set_axis_off()
                if j < len(views):
                    ax.imshow(views[j][0])
                    name = plot_text(views[j][1])  # level names come from the store
                    ax.set_title(f"#{k + 1} ({weight:.3f}) {name}" if j == 0 else name, fontsize=8)
        fig.suptitle(
            f"{plot_text(a.slide_id)}: most attended regions, at each magnification (outlines: the finer top tiles)",
            fontsize=10,
        )
        fig.tight_layout()
        written += _save(fig, out_dir / f"{a.slide_id}_regions", formats)
    return written


def level_title(a: SlideAttribution, name: str) -> str:
    """'20x: 77% of attention, 76% of tokens -> 1.01x uniform': a share is read against its token proportion, since
    uniform attention already gives a level its share of the tokens."""
    tokens = a.token_fraction.get(name)
    if not tokens:
        return f"{name}: not in this model's bags"
    what = "attention" if a.method.startswith("AB") else "attribution"
    share = a.level_share.get(name, 0.0)
    return f"{name}: {100 * share:.0f}% of {what}, {100 * tokens:.0f}% of tokens -> {share / tokens:.2f}x uniform"


def map_panels(
    a: SlideAttribution, cell_px: float
) -> list[tuple[str, np.ndarray | None, float | None, PanelScale | None]]:
    """(title, map, level-0 px per map entry, colour scale) of each panel: the slide, the regions' attention, then
    one map per magnification on one shared scale (so the levels compare)."""
    rows_cells = max((m.shape[0] for m in a.level_maps.values()), default=0)
    cols_cells = max((m.shape[1] for m in a.level_maps.values()), default=0)
    panels: list = [("slide", None, None, None)]
    if len(a.region_weight):
        region_scale = ratio_scale(a.region_weight, "attention on the region / uniform")
        title = f"regions: AB-MIL attention ({len(a.region_weight)} region{'s' if len(a.region_weight) > 1 else ''})"
        panels.append((title, region_map(a, (rows_cells, cols_cells)), cell_px, region_scale))
    every = np.concatenate([m.ravel() for m in a.level_maps.values()]) if a.level_maps else np.zeros(0)
    if a.method.startswith("AB"):
        level_scale = ratio_scale(every, "attention on the tile / uniform")
    else:
        level_scale = signed_scale(every, f"{a.method} (signed)")
    for i, name in enumerate(a.level_names):
        panels.append((level_title(a, name), a.level_maps[name], cell_px / 2**i, level_scale))
    return panels


def value_label(value: float, scale: PanelScale | None) -> str:
    """A tile's value in the unit its map's colour shows: 'x uniform' for attention, signed otherwise."""
    if scale is not None and scale.kind == "ratio":
        return f"{value / scale.uniform:.2f}x uniform"
    return f"{value:+.3g}"


def _draw_map(fig, ax, picture: np.ndarray, scale: PanelScale) -> None:
    """One map over the pale slide, in its diverging colours, with a labelled colour bar."""
    if not np.isfinite(picture).any():
        ax.text(0.5, 0.5, "not used by this model", transform=ax.transAxes, ha="center", color="black")
        return
    im = ax.imshow(
        np.ma.masked_invalid(scale.to_axis(picture)),
        cmap=DIVERGING_CMAP,
        alpha=0.85,
        vmin=-scale.limit,
        vmax=scale.limit,
        interpolation="nearest",
    )
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    positions, labels = scale.ticks()
    bar.set_ticks(positions, labels=labels)
    bar.ax.tick_params(labelsize=7)
    bar.set_label(scale.label, fontsize=7)


def _grey(rgb: np.ndarray) -> np.ndarray:
    """A pale greyscale copy so the colour map reads on top of H&E."""
    g = rgb.mean(axis=2, keepdims=True)
    return (155 + 0.4 * g).clip(0, 255).astype(np.uint8).repeat(3, axis=2)


def _save(fig, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    try:
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight")
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
