"""Text that reaches a markup language is escaped here, at the one place it is rendered: the console, HTML and CSV.

Paths, slide and specimen ids, lock text, task names, error reasons and every field of a run's files are data, not
markup. These rules keep them so:

- **Console**: mixmag's consoles never parse rich markup (`plain_console`). Mixmag's own styling is given with
  `style=` or as `rich.text.Text` (`labelled`), so a folder named `lab[/]3` or an error quoting `[bold]` prints as it
  is. Command help is plain text too (the CLI's Typer apps use no rich markup mode).
- **HTML**: every value from a run's files goes through `html_text` (or `html_value` for numbers) where it is
  written into the page, quotes included, so it can sit in an attribute.
- **Markdown** tables (results.md, statistics.md) write task and method names through `markdown_cell`.
- **CSV**: a text cell a spreadsheet would run as a formula (starting with `= + - @`, a tab or a carriage return) gets
  a leading apostrophe (`spreadsheet_cell`), numbers such as `-0.5` stay numbers; a cell that starts with an
  apostrophe gets one more, so `spreadsheet_text` gives every value back exactly when mixmag reads its own CSVs.
- **Figures**: a user's string in a matplotlib title, label, legend or tick (a class, task, method or slide name) goes
  through `plot_text`: matplotlib reads text between two `$` as mathtext, so `$x^2$` would render as math and a
  malformed one (`$\\frac$`) would stop the figure.
- **Paths written into mixmag's files** must be valid UTF-8 (`utf8_path`): a name with other bytes is refused in one
  sentence that shows it with escapes, rather than failing deep inside a JSON or HDF5 writer; the CLI's output streams
  print such a name escaped too, instead of crashing on it.
"""

from __future__ import annotations

import html
import numbers
import os
import re
from pathlib import Path

from rich.console import Console
from rich.text import Text

from .errors import MixmagError

# = + - @ TAB CR start a formula in Excel, LibreOffice and Google Sheets (OWASP "CSV injection"), also full-width;
# an apostrophe is escaped too, so that removing one leading apostrophe on reading is exact.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20", "'")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


class NotUtf8PathError(MixmagError):
    """A file or folder name that is not valid UTF-8, which mixmag's JSON and HDF5 files cannot record."""


def plain_console(*, stderr: bool = False) -> Console:
    """A console that prints strings as they are: rich markup is never parsed (styles come from `style=`/Text)."""
    return Console(stderr=stderr, markup=False)


def labelled(label: str, style: str, message: str) -> Text:
    """`label message` with only the label styled (e.g. a red `error:`), the message printed as it is."""
    return Text.assemble((label, style), " ", message)


def html_text(value: object) -> str:
    """Any value as HTML text, safe inside an element and inside a quoted attribute."""
    return html.escape(str(value), quote=True)


def html_value(value: object, spec: str = "") -> str:
    """A number formatted with `spec`; anything else (a run file's field may hold any text) escaped as it is."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return format(value, spec)
    return html_text(value)


def markdown_cell(value: object) -> str:
    """Text for a Markdown table cell: HTML escaped (Markdown passes HTML through), `|` and line breaks kept inside."""
    return html.escape(" ".join(str(value).split()), quote=False).replace("|", "\\|")


def plot_text(value: object) -> str:
    """A user's string as matplotlib draws it literally: every `$` escaped, so no part of it is read as mathtext (the
    only markup matplotlib parses in text when usetex is off)."""
    return str(value).replace("$", r"\$")


def spreadsheet_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: text starting with a formula character gets a leading apostrophe."""
    if value is None or isinstance(value, numbers.Number):
        return value
    text = str(value)
    if text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def spreadsheet_text(cell: str) -> str:
    """The value a cell written by `spreadsheet_cell` held (one leading apostrophe removed)."""
    return cell[1:] if cell.startswith("'") else cell


def shown_path(path: str | Path) -> str:
    """A path as text that can always be printed and written: bytes that are not UTF-8 shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def utf8_path(path: str | Path, what: str = "file") -> Path:
    """`path` if its name is valid UTF-8; refused in one sentence otherwise (it would be recorded in JSON files)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise NotUtf8PathError(
            f"{shown_path(path)}: the {what}'s path is not valid UTF-8 (the bytes shown as \\x escapes); mixmag "
            "records paths in UTF-8 files, so rename the file or folder to a UTF-8 name and run again"
        ) from None
    return Path(path)
