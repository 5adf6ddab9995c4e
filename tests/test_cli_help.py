"""Every `--help` renders, with every option's whole help text (issue 30 §1): rich markup read `[every plan]` or
`<folder>[/<any>]` as tags, so `mixmag store import --help` crashed and 13 options lost their bracketed part."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from mixmag.cli import app


def _commands(command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """(argument path, command) for the app, every group and every command under it."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():  # typer vendors its own click: no isinstance
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def _flat(text: str) -> str:
    """Text without whitespace or box-drawing characters: wrapping and layout do not matter, words do."""
    return "".join(ch for ch in text if not ch.isspace() and not "\u2500" <= ch <= "\u257f")


def test_the_walk_finds_every_command():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"tile", "store import", "store export", "bench scale", "synth slide", "export qupath"} <= names
    assert len(names) > 25


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) or "mixmag" for p, _ in COMMANDS])
def test_help_renders_every_option_in_full(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0 and result.exception is None, result.output
    shown = _flat(result.output)
    missing = [p.name for p in command.params if getattr(p, "help", None) and _flat(p.help) not in shown]
    assert not missing, f"help text cut or lost for {missing}:\n{result.output}"
    if command.help:
        assert _flat(command.help.split("\n\n")[0]) in shown
