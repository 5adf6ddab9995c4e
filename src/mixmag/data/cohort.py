"""The cohort table: specimens of one or more slides, their target and a split, checked on load.

CSV columns: specimen, slide, split (train / tune / test), the task's target columns, optional `store` (path to the
slide's store; default <stores>/<slide>.h5). Targets by task type (`TASK_COLUMNS`): binary `label` (0 or 1),
multiclass `label` (a class name), survival `time` (> 0) and `event` (0 or 1), regression `target` (a number).
Every problem names the rows at fault.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import place_stores
from ..errors import CohortError
from ..ids import ID_RULE, is_safe_id
from ..tables import read_table

SPLITS = ("train", "tune", "test")
REQUIRED = ("specimen", "slide", "label", "split")  # a binary table's (the default task's) columns
TASK_COLUMNS = {
    "binary": ("label",),
    "multiclass": ("label",),
    "survival": ("time", "event"),
    "regression": ("target",),
}


@dataclass(frozen=True)
class Specimen:
    """One specimen. `label`: 0/1 (binary), the class index (multiclass), the event (survival), 0 (regression)."""

    specimen_id: str
    label: int
    split: str
    slides: tuple[str, ...]
    time: float = 0.0  # survival: time to the event or to censoring
    target: float = 0.0  # regression


@dataclass
class Cohort:
    path: Path
    specimens: dict[str, Specimen]
    stores: dict[str, Path] = field(default_factory=dict)
    task: str = "binary"
    classes: tuple[str, ...] = ()  # multiclass: the class names, in the order of the model's outputs

    def split(self, name: str) -> list[Specimen]:
        return [s for s in self.specimens.values() if s.split == name]

    def specimen_of(self) -> dict[str, str]:
        return {slide: s.specimen_id for s in self.specimens.values() for slide in s.slides}

    def summary(self) -> dict:
        return {
            name: {
                "specimens": len(self.split(name)),
                "positive": sum(s.label for s in self.split(name)) if self.task in ("binary", "survival") else 0,
                "slides": sum(len(s.slides) for s in self.split(name)),
            }
            for name in SPLITS
        }

    def check_folds(self, folds: int) -> None:
        """Refuse a cross-validation into `folds` folds that some class (binary, multiclass) or the events (survival)
        cannot fill: each fold's test part needs one of each."""
        if self.task == "regression":
            return
        counts = Counter(s.label for s in self.specimens.values())
        if self.task == "survival":
            short = [] if counts[1] >= folds else [("specimens with an event", counts[1])]
        else:
            names = self.classes or ("0", "1")
            short = [(f"class {name!r}", counts[k]) for k, name in enumerate(names) if counts[k] < folds]
        if short:
            what, count = short[0]
            raise CohortError(
                f"{self.path}: {what}: {count} specimen(s), fewer than the {folds} folds; use fewer folds or add "
                "specimens"
            )


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _target_problem(task: str, row: dict, classes: tuple[str, ...] | None) -> str | None:
    """What is wrong with a row's target for this task type (empty cells are reported elsewhere), or None."""
    if task == "binary" and row.get("label") and row["label"] not in ("0", "1"):
        return f"label {row['label']!r} is not binary (0 or 1)"
    if task == "multiclass" and row.get("label") and classes is not None and row["label"] not in classes:
        return f"class {row['label']!r} is not among the config's classes ({', '.join(classes)}); add it to `classes`"
    if task == "survival":
        time = _number(row["time"]) if row.get("time") else 1.0
        if time is None or time <= 0:
            return f"time {row['time']!r} is not a positive number (time to the event or to censoring)"
        if row.get("event") and row["event"] not in ("0", "1"):
            return f"event {row['event']!r} is not 0 (censored) or 1 (event)"
    if task == "regression" and row.get("target") and _number(row["target"]) is None:
        return f"target {row['target']!r} is not a finite number"
    return None


def _listed(problems: list[str], most: int = 10) -> str:
    """Problems joined into one sentence: the first `most`, then how many more (a whole column of one mistake, e.g.
    every event written '1.0', is one sentence, not one clause a row)."""
    more = f"; and {len(problems) - most} more" if len(problems) > most else ""
    return "; ".join(problems[:most]) + more


def check_targets(table, task: str) -> None:
    """Refuse a table whose task columns hold values the task cannot read (a time that is not a positive number, an
    event that is not 0 / 1, a target that is not finite), naming the table's rows: cross-validation stratifies on
    these columns before any fold's table is loaded, and must not name a derived fold table or advise fewer folds."""
    problems = []
    for line, row in zip(table.lines, table.rows):
        problem = _target_problem(task, row, None)
        if problem:
            problems.append(f"row {line}: {problem}")
    if problems:
        raise CohortError(f"{table.path}: {_listed(problems)}.")


def _row_problems(task: str, table, classes: tuple[str, ...] | None) -> tuple[list[str], dict, dict]:
    """Problems of single rows, the first row of each slide and each specimen's rows."""
    problems: list[str] = []
    seen_slide: dict[str, int] = {}
    spec_rows: dict[str, list[tuple[int, dict]]] = {}
    for line, row in zip(table.lines, table.rows):
        for col in ("specimen", "slide", "split", *TASK_COLUMNS[task]):
            if not row.get(col):
                problems.append(f"row {line}: empty '{col}'")
        problem = _target_problem(task, row, classes)
        if problem:
            problems.append(f"row {line}: {problem}")
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
    return problems, seen_slide, spec_rows


def _specimen_problems(task: str, spec_rows: dict) -> list[str]:
    problems = []
    for spec, items in spec_rows.items():
        lines = ", ".join(str(n) for n, _ in items)
        splits = {r["split"] for _, r in items}
        if len(splits) > 1:
            problems.append(
                f"rows {lines}: specimen {spec!r} is in several splits "
                f"({', '.join(sorted(splits))}); a specimen's slides must share one split"
            )
        if len({tuple(r[c] for c in TASK_COLUMNS[task]) for _, r in items}) > 1:
            what = "labels" if task in ("binary", "multiclass") else " / ".join(TASK_COLUMNS[task]) + " values"
            problems.append(f"rows {lines}: specimen {spec!r} has conflicting {what}")
    return problems


def _specimen(task: str, spec: str, row: dict, slides: tuple[str, ...], classes: tuple[str, ...]) -> Specimen:
    if task == "survival":
        return Specimen(spec, int(row["event"]), row["split"], slides, time=float(row["time"]))
    if task == "regression":
        return Specimen(spec, 0, row["split"], slides, target=float(row["target"]))
    label = classes.index(row["label"]) if task == "multiclass" else int(row["label"])
    return Specimen(spec, label, row["split"], slides)


def _split_problem(task: str, name: str, group: list[Specimen], classes: tuple[str, ...]) -> str | None:
    """Why a split cannot be evaluated for this task type, or None."""
    if not group:
        return f"the {name} split is empty; every split needs specimens"
    if task == "binary" and len({s.label for s in group}) < 2:
        return f"the {name} split has only label {group[0].label}; it needs both classes (AUROC is undefined otherwise)"
    if task == "multiclass":
        absent = [c for k, c in enumerate(classes) if not any(s.label == k for s in group)]
        if absent:
            return (
                f"the {name} split has no specimen of class {', '.join(map(repr, absent))}; every split needs every "
                "class (a one-vs-rest AUROC is undefined otherwise)"
            )
    if task == "survival" and not any(s.label for s in group):
        return f"the {name} split has no event; it needs some (the C-index is undefined otherwise)"
    if task == "regression" and len({s.target for s in group}) < 2:
        return f"the {name} split's targets are all equal; it needs varying ones (a correlation is undefined otherwise)"
    return None


def table_task(path: str | Path) -> str:
    """The task type a cohort table's columns name, for readers that need only its splits and slides (pretraining's
    held-out test slides): survival (time + event), regression (target), binary (labels 0 / 1), else multiclass."""
    table = read_table(Path(path))
    if {"time", "event"} <= set(table.columns):
        return "survival"
    if "target" in table.columns:
        return "regression"
    labels = {r.get("label") for r in table.rows}
    return "binary" if labels <= {"0", "1"} or "label" not in table.columns else "multiclass"


def load_cohort(
    path: str | Path,
    stores_dir: str | Path | None = None,
    *,
    require_stores: bool = True,
    task: str = "binary",
    classes: list[str] | tuple[str, ...] | None = None,
) -> Cohort:
    """The table checked for its task type (`classes`: a multiclass task's class list; default the table's, sorted)."""
    path = Path(path)
    table = read_table(path)
    needed = ("specimen", "slide", *TASK_COLUMNS[task], "split")
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise CohortError(
            f"{path}: missing column(s) {', '.join(missing)}; a {task} task needs {', '.join(needed)} (+ optional "
            f"store). Found: {', '.join(table.columns) or 'none'}."
        )
    rows = table.rows
    if not rows:
        raise CohortError(f"{path}: the table has no rows.")
    given = tuple(classes) if classes is not None else None
    problems, seen_slide, spec_rows = _row_problems(task, table, given)
    problems += _specimen_problems(task, spec_rows)
    if problems:
        raise CohortError(f"{path}: {_listed(problems)}.")
    names = given or (tuple(sorted({r["label"] for r in rows})) if task == "multiclass" else ())
    if task == "multiclass" and len(names) < 2:
        raise CohortError(f"{path}: a multiclass task needs at least two classes; found {', '.join(names)}.")
    specimens = {
        spec: _specimen(task, spec, items[0][1], tuple(r["slide"] for _, r in items), names)
        for spec, items in spec_rows.items()
    }
    for name in SPLITS:
        problem = _split_problem(task, name, [s for s in specimens.values() if s.split == name], names)
        if problem:
            raise CohortError(f"{path}: {problem}.")
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
    return Cohort(path, specimens, stores, task, names)
