"""What the studies' figures share: an axis on the file-only backend, contrasts drawn with their CIs, the axis
finished the same way (zero line, ticks, labels, legend), and a PNG written atomically (a figure is closed
even when writing it fails, so a long study never piles up open figures)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..fileio import atomic_path
from .contrasts import Contrast


def new_axes(figsize: tuple[float, float]):
    """A figure and its one axis on matplotlib's file-only backend (Agg): the studies run without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def finish_axes(
    fig,
    ax,
    path: Path,
    *,
    ticks: Sequence[float],
    tick_labels: Sequence[str],
    xlabel: str,
    ylabel: str,
    title: str,
    zero: bool = False,
) -> Path:
    """Label the axis (a line at zero when it plots differences; the points studied as the x ticks), add a small
    legend, lay it out and save it (`save_png`)."""
    if zero:
        ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(ticks, tick_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def errorbar_contrasts(ax, x, contrasts: list[Contrast], **style) -> None:
    """Each contrast's value x 100 at its x, whiskers to its 95% interval."""
    y = [100 * c.value for c in contrasts]
    err = [[100 * (c.value - c.low) for c in contrasts], [100 * (c.high - c.value) for c in contrasts]]
    ax.errorbar(np.asarray(x), y, yerr=err, **style)


def save_png(fig, path: Path) -> Path:
    """Write the figure to `path` (atomically, 120 dpi) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path
