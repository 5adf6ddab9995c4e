"""The one reader of users' CSV tables (cohort tables, slide lists): what a spreadsheet writes is read, and a table that
could be read two ways is an error naming the problem.

Excel's "CSV UTF-8" starts with a byte-order mark: read (`utf-8-sig`). A column named twice (`csv.DictReader` would
silently keep the last one: a second `label` column flipped a model's test AUROC from 0 to 1) and a row with more
values than the header are errors. Names and values are stripped of surrounding blanks. A spreadsheet set to a
language that writes decimal commas saves ';'-separated "CSV", and some tools write tab-separated tables: the header
line says which (a comma in it means commas). Specimen and patient ids are printable text of a bounded length.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import CohortError
from .fileio import FileTooLargeError, UnsafePathError, read_bytes_limited

ID_COLUMNS = ("specimen", "patient")  # ids that never become paths (slide ids do: `mixmag.ids`) but are printed
MAX_ID_CHARS = 1024  # a specimen or patient id is a name, not a document; far above any real one


def id_problem(column: str, value: str) -> str | None:
    """Why a specimen or patient id cannot be printed in reports, tables and consoles as it is, or None."""
    if len(value) > MAX_ID_CHARS:
        return f"the {column!r} value is {len(value):,} characters long, more than {MAX_ID_CHARS:,}: shorten it"
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        return (
            f"the {column!r} value {value[:60]!r} holds the non-printable character U+{ord(bad):04X}: remove it "
            "(ids are printed in reports, tables and consoles)"
        )
    return None


@dataclass(frozen=True)
class Table:
    path: Path
    columns: list[str]
    rows: list[dict[str, str]]  # every column of the header in every row ('' where the row had no value)
    lines: list[int]  # each row's line number as a spreadsheet shows it (the header is line 1)


def _delimiter(text: str) -> str:
    """',' unless the header line holds none and holds ';' or a tab instead."""
    header = text.split("\n", 1)[0]
    if "," in header:
        return ","
    return next((d for d in (";", "\t") if d in header), ",")


def read_table(path: str | Path, *, what: str = "cohort table") -> Table:
    """Read a CSV table: header and rows, stripped; `CohortError` naming the file for anything ambiguous."""
    path = Path(path)
    if not path.exists():
        raise CohortError(f"{path}: {what} not found.")
    try:
        text = read_bytes_limited(path, "table", what=what).decode("utf-8-sig")
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text)))
    except UnicodeDecodeError as exc:
        raise CohortError(f"{path}: not UTF-8 text (byte {exc.start}); save the {what} as 'CSV UTF-8'.") from exc
    except csv.Error as exc:
        raise CohortError(f"{path}: not a readable CSV ({exc}).") from exc
    except (UnsafePathError, FileTooLargeError) as exc:
        raise CohortError(str(exc)) from None
    while records and not any(cell.strip() for cell in records[-1]):
        records.pop()  # trailing blank lines
    if not records:
        raise CohortError(f"{path}: the {what} is empty (no header row).")
    header = [cell.strip() for cell in records[0]]
    while header and not header[-1]:
        header.pop()  # a trailing comma after the last column name
    twice = sorted(name for name, n in Counter(header).items() if n > 1 and name)
    if twice:
        raise CohortError(
            f"{path}: column(s) {', '.join(repr(c) for c in twice)} appear more than once in the header; "
            "keep one column of each name (which one is meant cannot be guessed)."
        )
    if "" in header:
        raise CohortError(f"{path}: column {header.index('') + 1} of the header has no name; name it or delete it.")
    rows, lines, problems = [], [], []
    for line, record in enumerate(records[1:], start=2):
        values = [cell.strip() for cell in record]
        if not any(values):
            continue  # a blank line
        extra = [v for v in values[len(header) :] if v]
        if extra:
            problems.append(
                f"row {line} has {len(header) + len(extra)} values but the header names {len(header)} columns"
            )
            continue
        row = dict(zip(header, values + [""] * (len(header) - len(values))))
        problems += [f"row {line}: {p}" for c in ID_COLUMNS if c in row and (p := id_problem(c, row[c]))]
        rows.append(row)
        lines.append(line)
    if problems:
        raise CohortError(f"{path}: " + "; ".join(problems[:10]) + ".")
    return Table(path, header, rows, lines)
