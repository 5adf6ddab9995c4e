"""The cohort table: specimens of one or more slides, a binary label and a split, checked on load.

CSV columns: specimen, slide, label, split (train / tune / test), optional `store` (path to the
slide's store; default <stores>/<slide>.h5). Every problem names the rows at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import place_stores
from ..errors import CohortError
from ..ids import ID_RULE, is_safe_id
from ..tables import read_table

SPLITS = ("train", "tune", "test")
REQUIRED = ("specimen", "slide", "label", "split")


@dataclass(frozen=True)
class Specimen:
    specimen_id: str
    label: int
    split: str
    slides: tuple[str, ...]


@dataclass
class Cohort:
    path: Path
    specimens: dict[str, Specimen]
    stores: dict[str, Path] = field(default_factory=dict)

    def split(self, name: str) -> list[Specimen]:
        return [s for s in self.specimens.values() if s.split == name]

    def specimen_of(self) -> dict[str, str]:
        return {slide: s.specimen_id for s in self.specimens.values() for slide in s.slides}

    def summary(self) -> dict:
        return {
            name: {
                "specimens": len(self.split(name)),
                "positive": sum(s.label for s in self.split(name)),
                "slides": sum(len(s.slides) for s in self.split(name)),
            }
            for name in SPLITS
        }


def load_cohort(path: str | Path, stores_dir: str | Path | None = None, *, require_stores: bool = True) -> Cohort:
    path = Path(path)
    table = read_table(path)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise CohortError(
            f"{path}: missing column(s) {', '.join(missing)}; need {', '.join(REQUIRED)} (+ optional store). Found: "
            f"{', '.join(table.columns) or 'none'}."
        )
    rows = table.rows
    if not rows:
        raise CohortError(f"{path}: the table has no rows.")
    problems: list[str] = []
    seen_slide: dict[str, int] = {}
    spec_rows: dict[str, list[tuple[int, dict]]] = {}
    for line, row in zip(table.lines, rows):
        for col in REQUIRED:
            if not row.get(col):
                problems.append(f"row {line}: empty '{col}'")
        if row.get("label") and row["label"] not in ("0", "1"):
            problems.append(f"row {line}: label {row['label']!r} is not binary (0 or 1)")
        if row.get("split") and row["split"] not in SPLITS:
            problems.append(f"row {line}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
        slide = row.get("slide")
        if slide and not is_safe_id(slide):  # it names the slide's store and heatmap files
            problems.append(f"row {line}: slide id {slide!r} is not a safe file name (use {ID_RULE})")
        elif slide:
            if slide in seen_slide:
                problems.append(f"rows {seen_slide[slide]} and {line}: slide {slide!r} listed twice")
            seen_slide.setdefault(slide, line)
        if row.get("specimen"):
            spec_rows.setdefault(row["specimen"], []).append((line, row))
    for spec, items in spec_rows.items():
        splits = {r["split"] for _, r in items}
        if len(splits) > 1:
            problems.append(
                f"rows {', '.join(str(n) for n, _ in items)}: specimen {spec!r} is in several splits "
                f"({', '.join(sorted(splits))}); a specimen's slides must share one split"
            )
        labels = {r["label"] for _, r in items}
        if len(labels) > 1:
            problems.append(f"rows {', '.join(str(n) for n, _ in items)}: specimen {spec!r} has conflicting labels")
    if problems:
        raise CohortError(f"{path}: " + "; ".join(problems) + ".")
    specimens = {
        spec: Specimen(spec, int(items[0][1]["label"]), items[0][1]["split"], tuple(r["slide"] for _, r in items))
        for spec, items in spec_rows.items()
    }
    for name in SPLITS:
        group = [s for s in specimens.values() if s.split == name]
        if not group:
            raise CohortError(f"{path}: the {name} split is empty; every split needs specimens of both classes.")
        if len({s.label for s in group}) < 2:
            raise CohortError(
                f"{path}: the {name} split has only label {group[0].label}; it needs both classes (AUROC is undefined "
                "otherwise)."
            )
    stores, explicit = {}, set()
    for row in rows:
        if row.get("store"):
            explicit.add(row["slide"])
            p = Path(row["store"])
            stores[row["slide"]] = p if p.is_absolute() else path.parent / p
        elif stores_dir is not None:
            stores[row["slide"]] = Path(stores_dir) / f"{row['slide']}.h5"
    if stores_dir is not None:  # a sharded stores folder (stores in sub-folders): the catalog knows where
        stores |= place_stores(stores_dir, [s for s in stores if s not in explicit])
    if require_stores:
        absent = [(seen_slide[s], s) for s, p in stores.items() if not p.is_file()]
        if len(stores) < len(seen_slide):
            absent += [(seen_slide[s], s) for s in seen_slide if s not in stores]
        if absent:
            listed = ", ".join(f"row {n}: {s}" for n, s in sorted(absent)[:10])
            raise CohortError(
                f"{path}: no store for {len(absent)} slide(s) ({listed}); run `mixmag embed` for them or fix the "
                "'slide'/'store' column."
            )
    return Cohort(path, specimens, stores)
