"""The one rule for ids that become file names (slide ids, specimen ids, run names): safe, and kept in their folder.

Every entry point that turns an id from a user, a table or a file's own attributes into a path goes through
`check_id` (or `path_for_id`, which also proves the result stays inside its folder).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from .errors import MixmagError

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")  # used with fullmatch: `$` would pass a final "\n"
ID_RULE = "letters, digits, '.', '_', '+' and '-', starting with a letter or digit, at most 200 characters"


class UnsafeIdError(MixmagError):
    """An id that would not be a plain file name inside its folder."""


def is_safe_id(value: object) -> bool:
    return isinstance(value, str) and _SAFE_ID.fullmatch(value) is not None and ".." not in value


def _safe_name(value: str) -> str:
    if not is_safe_id(value):
        raise ValueError(f"not a safe file name (it names a folder or file); use {ID_RULE}")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]
"""A config value (a task name, a mixer name, ...) that becomes a file or folder name: the same rule as `check_id`,
refused by the config reader with the file, line and key named."""


def check_id(value: object, *, what: str = "slide id", where: str = "", fix: str = "") -> str:
    """Return `value` if it is a safe id, else raise `UnsafeIdError` naming where it came from."""
    if is_safe_id(value):
        return value  # type: ignore[return-value]
    prefix = f"{where}: " if where else ""
    hint = f" {fix}" if fix else ""
    raise UnsafeIdError(f"{prefix}{what} {value!r} is not a safe file name; use {ID_RULE}.{hint}")


def path_for_id(
    folder: str | Path, value: object, suffix: str = "", *, what: str = "slide id", where: str = ""
) -> Path:
    """`folder/<id><suffix>` for a checked id, refused if it would resolve outside `folder`."""
    folder = Path(folder)
    path = folder / f"{check_id(value, what=what, where=where)}{suffix}"
    if not path.resolve().is_relative_to(folder.resolve()):  # e.g. a symlinked name pointing out
        raise UnsafeIdError(f"{where + ': ' if where else ''}{what} {value!r} resolves outside {folder}")
    return path
