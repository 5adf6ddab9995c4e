"""`mixmag store import`: a store per tiling plan, built from TRIDENT's or CLAM's feature files made at mixmag's
tiles (strictly: `mixmag.interop.assemble`), and written into the stores folder under the slide's id."""

from __future__ import annotations

from pathlib import Path

from ..ids import path_for_id
from ..slides.tiling import TilingPlan
from ..store import SlideStore, write_store
from . import clam, trident

IMPORTERS = {"trident": trident.import_slide, "clam": clam.import_slide}


def import_store(
    folder: Path, plan_path: Path, plan: TilingPlan, out: Path, format: str, encoder: str | None = None
) -> tuple[Path, SlideStore]:
    """The slide's store, built from `folder`'s files in `format` (trident or clam) and written to out/<slide>.h5."""
    target = path_for_id(out, plan.slide.slide_id, ".h5", where=str(plan_path))
    store = IMPORTERS[format](folder, plan, plan_path, encoder)
    write_store(target, store)
    return target, store


def plans_without_cells(found: list[tuple[Path, TilingPlan]]) -> list[str]:
    """The slides whose plan has no tissue cell (no store can be built for them), sorted."""
    return sorted(plan.slide.slide_id for _, plan in found if not plan.cells)
