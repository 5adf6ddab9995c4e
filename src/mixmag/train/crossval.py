"""Cross-validation folds of a cohort table: which specimens each fold trains, tunes and tests on.

Folds are scikit-learn's `StratifiedGroupKFold` over specimens, grouped by patient (the table's `patient` column) or
by specimen, and stratified by the task's outcome column (binary and multiclass `label`, survival `event`, regression
quantile bins of `target`), so no patient and no specimen is tested in two folds and each test fold holds about the
cohort's share of every class. Each fold's tune split is carved from its training part the same way (grouped and
stratified, seeded), never from its test fold. The table's own `split` column is ignored: a fold's splits are written
into a derived copy of the table that a normal training run reads.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.model_selection import StratifiedGroupKFold

from ..config import MAX_SEED
from ..data.cohort import check_targets
from ..errors import CohortError
from ..fileio import write_csv_atomic
from ..tables import Table, read_table
from .tasks import STRATIFY_COLUMN

MAX_FOLDS = 100
REGRESSION_BINS = 4  # quantile bins of a regression target that the folds balance


class CrossValConfig(BaseModel):
    """The `cv:` section of a training config: train k folds instead of one run on the table's splits."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    folds: int = Field(5, ge=2, le=MAX_FOLDS)
    tune_fraction: float = Field(0.2, gt=0, le=0.5, description="share of each fold's training part used for tuning")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    group_by: Literal["patient", "specimen"] = Field(
        "patient", description="patient: the table's `patient` column (specimen where the table has none)"
    )


@dataclass(frozen=True)
class CohortUnits:
    """The table read for folding: one entry per specimen, in the table's order."""

    table: Table
    specimens: list[str]
    strata: list[str]  # the value each specimen is stratified by
    groups: list[str]  # the patient (or the specimen itself) no two folds may share
    grouped_by: str  # "patient" or "specimen"
    stratified_by: str  # the column


def read_units(path: str | Path, task: str, cv: CrossValConfig) -> CohortUnits:
    """The specimens of a cohort table with their stratum and group; a specimen whose rows disagree on either is one
    sentence naming the rows."""
    table = read_table(path)
    column = STRATIFY_COLUMN[task]
    patient = "patient" in table.columns and cv.group_by == "patient"
    if cv.group_by == "patient" and "patient" not in table.columns and "group_by" in cv.model_fields_set:
        raise CohortError(f"{path}: cv.group_by = patient needs a 'patient' column; add it or set cv.group_by=specimen")
    needed = [c for c in ("specimen", "slide", column) if c not in table.columns]
    if needed:
        raise CohortError(f"{path}: cross-validation needs the column(s) {', '.join(needed)}; add them to the table")
    check_targets(table, task)
    seen: dict[str, tuple[str, str, int]] = {}
    for line, row in zip(table.lines, table.rows):
        spec = row["specimen"]
        if not spec or not row[column]:
            raise CohortError(f"{path} row {line}: empty 'specimen' or '{column}'; fill it")
        if patient and not row["patient"]:
            raise CohortError(f"{path} row {line}: empty 'patient'; fill it, or set cv.group_by=specimen")
        unit = (row[column], row["patient"] if patient else spec, line)
        first = seen.setdefault(spec, unit)
        if first[:2] != unit[:2]:
            what = column if first[0] != unit[0] else "patient"
            raise CohortError(
                f"{path} rows {first[2]} and {line}: specimen {spec!r} has two values of '{what}'; make them agree"
            )
    specimens = list(seen)
    strata = [seen[s][0] for s in specimens]
    if task == "regression":
        strata = _quantile_bins(path, strata)
    return CohortUnits(
        table, specimens, strata, [seen[s][1] for s in specimens], "patient" if patient else "specimen", column
    )


def _quantile_bins(path: str | Path, values: list[str]) -> list[str]:
    """A regression target cut into quantile bins, so folds balance low and high targets."""
    try:
        numbers = np.array([float(v) for v in values])
    except ValueError:
        raise CohortError(f"{path}: a 'target' value is not a number; fix the column") from None
    edges = np.quantile(numbers, np.linspace(0, 1, REGRESSION_BINS + 1)[1:-1])
    return [f"bin {b}" for b in np.searchsorted(edges, numbers, side="right")]


def check_fold_counts(units: CohortUnits, folds: int) -> None:
    """Every class needs at least one specimen group per fold; otherwise one sentence naming the class and the fix."""
    groups_of: dict[str, set[str]] = {}
    for stratum, group in zip(units.strata, units.groups):
        groups_of.setdefault(stratum, set()).add(group)
    few = {s: len(g) for s, g in groups_of.items() if len(g) < folds}
    if len(groups_of) < 2:
        raise CohortError(
            f"{units.table.path}: every specimen has {units.stratified_by} {units.strata[0]!r}; cross-validation needs "
            "at least two classes"
        )
    if few:
        stratum, n = min(few.items(), key=lambda kv: kv[1])
        raise CohortError(
            f"{units.table.path}: {units.stratified_by} {stratum!r} has {n} {units.grouped_by}(s), fewer than the "
            f"{folds} folds; set cv.folds to {max(n, 2)} or fewer, or add {units.grouped_by}s of that class"
        )


@dataclass(frozen=True)
class Fold:
    """One fold's specimens by split ("train", "tune", "test"), in the table's order."""

    index: int
    splits: dict[str, list[str]]

    def split_of(self) -> dict[str, str]:
        return {spec: name for name, specs in self.splits.items() for spec in specs}


def make_folds(units: CohortUnits, cv: CrossValConfig) -> list[Fold]:
    """k folds: each specimen tested in exactly one, no group in two test folds, tune carved from the training part."""
    check_fold_counts(units, cv.folds)
    x = np.zeros(len(units.specimens))
    y, groups = np.array(units.strata), np.array(units.groups)
    folds = []
    with warnings.catch_warnings():  # sklearn warns of small classes; check_fold_counts said what matters
        warnings.simplefilter("ignore", UserWarning)
        outer = StratifiedGroupKFold(n_splits=cv.folds, shuffle=True, random_state=cv.seed)
        for i, (rest, test) in enumerate(outer.split(x, y, groups)):
            inner = StratifiedGroupKFold(
                n_splits=max(2, round(1 / cv.tune_fraction)), shuffle=True, random_state=cv.seed + i
            )
            train, tune = next(inner.split(x[rest], y[rest], groups[rest]))
            chosen = {"train": rest[train], "tune": rest[tune], "test": test}
            fold = Fold(i, {k: [units.specimens[j] for j in sorted(v)] for k, v in chosen.items()})
            _check_fold(units, fold)
            folds.append(fold)
    return folds


def _check_fold(units: CohortUnits, fold: Fold) -> None:
    """A fold whose train, tune or test split misses a class cannot be trained or scored on it: one sentence with the
    fix."""
    if units.stratified_by == "target":
        return
    stratum = dict(zip(units.specimens, units.strata))
    every = set(units.strata)
    for name in ("train", "tune", "test"):
        missing = every - {stratum[s] for s in fold.splits[name]}
        if missing:
            raise CohortError(
                f"{units.table.path}: fold {fold.index}'s {name} split has no specimen with {units.stratified_by} "
                f"{sorted(missing)[0]!r}; use fewer folds (cv.folds), a larger cv.tune_fraction, or another cv.seed"
            )


def fold_table(units: CohortUnits, fold: Fold) -> tuple[list[str], list[list[str]]]:
    """The cohort table with the fold's splits in its `split` column (added when the table has none) and every
    `store` path absolute (a relative one is relative to the original table's folder)."""
    columns = list(units.table.columns) + ([] if "split" in units.table.columns else ["split"])
    where, base = fold.split_of(), units.table.path.parent
    rows = []
    for row in units.table.rows:
        cells = row | {"split": where[row["specimen"]]}
        if cells.get("store") and not Path(cells["store"]).is_absolute():
            cells["store"] = str((base / cells["store"]).resolve())
        rows.append([cells[c] for c in columns])
    return columns, rows


def write_fold_table(path: Path, units: CohortUnits, fold: Fold) -> Path:
    """The fold's derived cohort table (the same content on a rerun: folds are seeded). Its cells are the user's, as
    they are: the table is mixmag's input, and a class '+ve' escaped for spreadsheets would come back as "'+ve"."""
    return write_csv_atomic(path, *fold_table(units, fold), escape_formulas=False)


def split_counts(units: CohortUnits, fold: Fold) -> dict[str, dict[str, int]]:
    """How many specimens of each stratum each split of a fold holds (for the summary and the tests)."""
    stratum = dict(zip(units.specimens, units.strata))
    return {name: dict(sorted(Counter(stratum[s] for s in specs).items())) for name, specs in fold.splits.items()}
