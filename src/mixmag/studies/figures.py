"""What the studies' figures share: contrasts drawn with their CIs, and a PNG written atomically (a figure is closed
even when writing it fails, so a long study never piles up open figures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_path
from .contrasts import Contrast


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
