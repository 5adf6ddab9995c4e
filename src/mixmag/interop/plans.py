"""The tiling plans an exchange is checked against: found in a plans folder, or where a store says its plan is.

Plans are the truth of the grid: which cells, at which float cell size, on which slide of which size. Exports read
the slide's size from them; imports accept exactly the plan's tiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..ids import check_id, is_safe_id
from ..slides.tiling import PLAN_FILENAME, TilingPlan, load_plan
from ..store import SlideStore
from .assemble import InteropError
from .files import slide_name


def read_plan(path: Path) -> TilingPlan:
    """A plan file, or InteropError saying which file and how to remake it."""
    try:
        return load_plan(path)
    except FileNotFoundError:
        raise InteropError(
            f"{path}: tiling plan not found; run `mixmag tile` or pass --plans with the plans folder"
        ) from None
    except ValueError as exc:
        raise InteropError(str(exc)) from None


def plans_in(folder: Path, slides: list[str] | None = None) -> list[tuple[Path, TilingPlan]]:
    """(path, plan) of every slide in a plans folder (`mixmag tile --out`), or of the given slide ids."""
    folder = Path(folder)
    if slides:
        paths = [folder / check_id(s, where="--slide") / PLAN_FILENAME for s in slides]
    else:
        paths = sorted(folder.glob(f"*/{PLAN_FILENAME}"))
        if not paths:
            raise InteropError(
                f"{folder}: no tiling plans (*/{PLAN_FILENAME}); pass the folder `mixmag tile --out` wrote"
            )
    return [(p, read_plan(p)) for p in paths]


def plan_for_store(store: SlideStore, plans_dir: Path | None) -> TilingPlan:
    """The plan a store was embedded from (in plans_dir, else where the store recorded it), checked against it."""
    header = store.header
    slide = check_id(header.slide_id, where="the store's slide_id attribute")
    path = Path(plans_dir) / slide / PLAN_FILENAME if plans_dir else Path(str(header.plan_path))
    plan = read_plan(path)
    same_cells = np.array_equal(np.asarray(plan.cells, np.int64).reshape(-1, 2), store.rc.astype(np.int64))
    if (
        plan.slide.slide_id != slide
        or not same_cells
        or abs(plan.cell_px - (header.cell_px if header.cell_px is not None else -1)) > 1e-6
    ):
        raise InteropError(
            f"{path}: this plan is not the one store {slide} was embedded from (other slide, cells or cell "
            "size); pass --plans with the plans folder the store was made from"
        )
    return plan


def files_for_slide(plan: TilingPlan, pattern: str, root: Path) -> list[Path]:
    """Files under root matching pattern (with {name}) for the slide's id or its file name, not both."""
    names = sorted(n for n in {plan.slide.slide_id, slide_name(plan.slide.path)} if is_safe_id(n))
    found = {n: sorted(root.glob(pattern.format(name=n))) for n in names}
    hits = [n for n in names if found[n]]
    if len(hits) > 1:
        raise InteropError(
            f"{plan.slide.slide_id}: {root} holds files named both {hits[0]!r} and {hits[1]!r} for this slide; "
            "keep one set"
        )
    return found[hits[0]] if hits else []
