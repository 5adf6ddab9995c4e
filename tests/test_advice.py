"""Every piece of advice mixmag prints names an option that exists (issue 30: `predict` said "pass --mpp" and had no
--mpp). The option names in src/'s strings (docstrings aside) are checked against every command of the CLI."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import typer.main
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.stages.predict import read_inputs

SRC = Path(__file__).resolve().parents[1] / "src" / "mixmag"
OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9_-]*[a-z0-9])")
# Options of other tools that mixmag's messages tell the user to run (TRIDENT's run_batch_of_slides.py,
# huggingface-cli); they are not mixmag's to have.
FOREIGN = {
    "--task": "TRIDENT",
    "--mag": "TRIDENT",
    "--job_dir": "TRIDENT",
    "--wsi_dir": "TRIDENT",
    "--patch_encoder": "TRIDENT",
    "--patch_size": "TRIDENT",
    "--custom_list_of_wsis": "TRIDENT",
    "--local-dir": "huggingface-cli download",
    "--repo-type": "huggingface-cli download",
    "--array": "sbatch",
}


def cli_options() -> set[str]:
    """Every option of every command and sub-command, long and short, --x and --no-x."""
    found: set[str] = set()
    stack = [typer.main.get_command(app)]
    while stack:
        command = stack.pop()
        stack.extend(getattr(command, "commands", {}).values())
        for param in command.params:
            found.update(param.opts, param.secondary_opts)
    return found


def _docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return {
        id(n.body[0].value)
        for n in nodes
        if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
    }


def advised_options() -> dict[str, list[str]]:
    """Option names in the strings of src/ (messages, help texts, f-string parts), with where they are."""
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                for name in OPTION.findall(node.value):
                    found.setdefault(f"--{name}", []).append(f"{path.relative_to(SRC.parent)}:{node.lineno}")
    return found


def test_every_option_a_message_names_exists_on_some_command():
    known = cli_options()
    advised = advised_options()
    assert "--mpp" in advised and "--region-size" in advised  # the scan sees messages
    missing = {name: where for name, where in advised.items() if name not in known and name not in FOREIGN}
    assert not missing, f"messages name options no command has: {missing}"


def test_the_scan_catches_an_option_that_does_not_exist():
    assert "--precision" not in cli_options()  # the old advice of a failed store ("try --precision fp32")
    assert OPTION.findall("pass --mpp 0.25, or --region-size 1; not a--b") == ["mpp", "region-size"]


def test_predict_takes_mpp_as_its_advice_says(tmp_path):
    result = CliRunner().invoke(app, ["predict", "--help"])
    assert result.exit_code == 0 and "--mpp" in result.output
    result = CliRunner().invoke(
        app,
        ["predict", "--run", str(tmp_path), "--stores", str(tmp_path), "--mpp", "0.5", "--out", str(tmp_path / "p")],
    )
    assert result.exit_code == 2 and "--mpp" in result.output and "only for slide files" in result.output


def test_predict_mpp_reaches_the_slides_of_the_command_line_and_a_table_row_wins(tmp_path, real_svs):
    assert [s.mpp for s in read_inputs([str(real_svs)], None, None, 0.25).sources] == [0.25]
    table = tmp_path / "t.csv"
    table.write_text(f"path,mpp\n{real_svs},0.3\n")
    assert [s.mpp for s in read_inputs(None, table, None, 0.25).sources] == [0.3]
