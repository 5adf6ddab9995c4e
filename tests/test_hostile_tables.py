"""Hostile cohort tables and shard counts for the surfaces of the outcome tasks and the shared work: survival,
regression and multiclass columns under cross-validation, class names a spreadsheet would read as formulas, a
column of one mistake, and shard counts of a billion. Each case runs the command a user would and asserts one
sentence naming the user's own file (never a derived one), or that the values come through as they were."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from hostile_world import tile_and_embed
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.tables import read_table
from mixmag.train.crossval import CrossValConfig, make_folds, read_units, write_fold_table
from mixmag.workers import balanced_part, balanced_parts

CV = dict(folds=3, tune_fraction=0.34, group_by="specimen")


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_sentence(result, code: int, *needles: str) -> str:
    """The command failed with `code` and said why in one error line (no traceback) holding every needle."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], (needle, result.output)
    return lines[0]


def _task_table(small_cohort: Path, folder: Path, task: str, edit=lambda k, row: None) -> Path:
    """The small cohort's table as a `task` table (values by specimen), each row then changed by `edit(k, row)`."""
    with open(small_cohort / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        k = int(row["specimen"][1:])
        row["store"] = str(small_cohort / "stores" / f"{row['slide']}.h5")
        if task == "survival":
            row |= {"event": row["label"], "time": f"{10 - 5 * int(row['label']) + k % 7:.1f}"}
        elif task == "regression":
            row["target"] = f"{k * 0.3 - 2:.2f}"
        elif task == "multiclass":
            row["label"] = "abc"[k % 3]
        edit(k, row)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, [*rows[0]])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "table.csv"


def _train_cv(small_cohort: Path, tmp_path: Path, table: Path, task: str):
    config = tmp_path / "cv.yaml"
    settings = dict(cohort=str(table), stores=str(small_cohort / "stores"), out=str(tmp_path / "out"), task=task)
    config.write_text(yaml.safe_dump(settings | dict(bags="20x", epochs=1, batch_size=8, bootstrap=100, cv=CV)))
    return _invoke("train", "--config", config)


# -- outcome columns under cross-validation: the user's table is checked before any fold is made -----------------------


@pytest.mark.parametrize(
    "task, column, value, said",
    [
        ("survival", "event", "yes", "event 'yes' is not 0 (censored) or 1 (event)"),
        ("survival", "time", "nan", "time 'nan' is not a positive number"),
        ("survival", "time", "-3", "time '-3' is not a positive number"),
        ("regression", "target", "nan", "target 'nan' is not a finite number"),
        ("regression", "target", "inf", "target 'inf' is not a finite number"),
        ("binary", "label", "1.0", "label '1.0' is not binary"),
    ],
)
def test_a_bad_outcome_value_under_cross_validation_names_the_users_row(
    small_cohort, tmp_path, task, column, value, said
):
    """Before: the folds were cut on the raw column first, so 'yes' was a third class ("event 'yes' has 1 specimen(s),
    fewer than the 3 folds; set cv.folds to 2"), a NaN target a quantile bin of its own, and a NaN time was found
    only in out/fold-0/cohort.csv, a file the user never wrote."""
    table = _task_table(small_cohort, tmp_path, task, lambda k, row: row.update({column: value}) if k == 0 else None)
    line = _one_sentence(_train_cv(small_cohort, tmp_path, table, task), 2, str(table), "row 2", said)
    assert "fold" not in line
    assert not (tmp_path / "out" / "fold-0").exists()


def test_a_whole_column_of_one_mistake_is_one_short_sentence(small_cohort, tmp_path):
    """pandas writes an event column with a gap as 1.0 / 0.0: 49 rows at fault, said as the first ten and a count."""
    table = _task_table(small_cohort, tmp_path, "survival", lambda k, row: row.update(event=row["event"] + ".0"))
    line = _one_sentence(_train_cv(small_cohort, tmp_path, table, "survival"), 2, str(table), "event '0.0'")
    n_rows = len(read_table(table).rows)
    assert f"and {n_rows - 10} more" in line and line.count("is not 0 (censored)") == 10


@pytest.mark.parametrize(
    "column, value, said",
    [
        ("specimen", "P\x00bad", "holds the non-printable character U+0000: remove it"),
        ("specimen", "P\x1b[31m", "holds the non-printable character U+001B: remove it"),
        ("specimen", "P" * 100_000, "is 100,000 characters long, more than 1,024: shorten it"),
        ("patient", "x\ny", "holds the non-printable character U+000A"),
    ],
)
def test_a_specimen_or_patient_id_that_cannot_be_printed_is_refused_naming_the_row(
    small_cohort, tmp_path, column, value, said
):
    """Before: a NUL, a terminal escape or 100,000 characters in an id were accepted, then printed in reports, CSVs and
    consoles. `../x` stays an id: specimen and patient ids never become paths."""

    def edit(k, row):
        row["patient"] = f"pt{k}"
        if k == 0:
            row[column] = value

    table = _task_table(small_cohort, tmp_path, "binary", edit)
    result = _train_cv(small_cohort, tmp_path, table, "binary")
    line = _one_sentence(result, 2, str(table), "row 2", f"the {column!r} value", said)
    assert len(line) < 600 and "\x00" not in line and "\x1b" not in line  # the id itself is shown escaped, cut short
    assert not (tmp_path / "out" / "fold-0").exists()
    plain = _task_table(small_cohort, tmp_path / "plain", "binary", lambda k, row: row.update(specimen=f"../{k}"))
    assert "../0" in read_units(plain, "binary", CrossValConfig(**CV)).specimens


# -- a fold's table holds the user's values as they are ----------------------------------------------------------------


def test_class_names_a_spreadsheet_reads_as_formulas_reach_the_folds_unchanged(small_cohort, tmp_path):
    """Before: fold tables were escaped for spreadsheets, so every fold trained on the classes "'+ve", "'-ve",
    "'=x" and said them so in its predictions (and config `classes: [+ve, -ve, =x]` refused every fold)."""
    names = ["+ve", "-ve", "=x"]
    table = _task_table(
        small_cohort, tmp_path, "multiclass", lambda k, row: row.update(label=names[k % 3], specimen=f"-{k}")
    )
    units = read_units(table, "multiclass", CrossValConfig(**CV))
    fold = make_folds(units, CrossValConfig(**CV))[0]
    written = read_table(write_fold_table(tmp_path / "fold.csv", units, fold))
    assert {row["label"] for row in written.rows} == set(names)
    assert {row["specimen"] for row in written.rows} == set(units.specimens)


# -- shard counts: a billion shards costs no more than the slides ------------------------------------------------------


def test_the_balanced_part_of_a_billion_workers_is_computed_without_listing_them():
    sizes = [10, 1, 7, 3, 3]
    for parts in (1, 2, 3, 7):
        assert [balanced_part(sizes, parts, i) for i in range(parts)] == balanced_parts(sizes, parts)
    assert balanced_part(sizes, 999_999_999, 0) == [0] and balanced_part(sizes, 999_999_999, 5) == []


@pytest.fixture(scope="module")
def tiled(tmp_path_factory) -> Path:
    return tile_and_embed(tmp_path_factory.mktemp("tables"), "stores")


@pytest.mark.parametrize("shard, mine", [("0/999999999", 1), ("999999998/999999999", 0)])
def test_embed_with_a_billion_shards_does_its_share_at_once(tiled, tmp_path, shard, mine):
    """Before: the share was picked from a list of every shard's part, built over a heap of a billion workers (tens of
    GB): the process was killed for memory."""
    out = tmp_path / "out"
    result = _invoke(
        "embed", "--plans", tiled / "tiles", "--out", out, "--encoder", "stats", "--workers", 0, "--device", "cpu",
        "--shard", shard,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.h5"))) == mine
