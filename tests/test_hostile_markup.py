"""Text that reaches a markup language is data (issue 22 §8, 10, 11, 19): rich console markup, HTML, spreadsheet
formulas in CSV cells, and file names that are not UTF-8."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixmag import cli
from mixmag.cli import app
from mixmag.fileio import write_csv_atomic
from mixmag.markup import spreadsheet_cell, spreadsheet_text
from mixmag.report.html import build_report
from mixmag.runs import TrainRun
from mixmag.stages.predict import SlideOutcome, write_outcomes
from mixmag.studies.experiments import GridConfig, Task, write_tables

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src" / "mixmag"
MARKUP = "[bold]b[/]c[link=https://example.org]d[/link]"


# -- the console -----------------------------------------------------------------------------------------------------
def test_an_error_quoting_markup_prints_as_it_is(tmp_path):
    run = tmp_path / f"run{MARKUP}"
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and f"{run}: no config.json" in result.output


def test_a_damaged_slide_in_a_folder_named_with_markup_stops_nothing(tmp_path, tissue_slide):
    folder = tmp_path / "lab[/]3"  # `[/]` with nothing to close: rich raised MarkupError mid-batch
    folder.mkdir(parents=True)
    for name in ("a.tiff", "b.tiff"):
        shutil.copy(tissue_slide, folder / name)
    (folder / "c.tiff").write_bytes(tissue_slide.read_bytes()[:4000])  # cut short: unreadable
    result = runner.invoke(app, ["tile", str(folder), "--out", str(tmp_path / "tiles")])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output  # not a MarkupError
    assert (tmp_path / "tiles" / "a" / "plan.json").is_file() and (tmp_path / "tiles" / "b" / "plan.json").is_file()
    flat = "".join(result.output.split())
    assert "c:FAILED" in flat and f"{folder}/c.tiff".replace(" ", "") in flat


def test_a_progress_description_is_not_markup(capsys):
    with cli._progress() as progress:
        task = progress.add_task("lab[/]3 [bold]", total=1)
        progress.advance(task)
    assert "lab[/]3 [bold]" in capsys.readouterr().out


def test_every_console_mixmag_makes_reads_no_markup():
    """One rule: consoles come from `mixmag.markup:plain_console`, styles from `style=` (no `[red]...[/]` strings)."""
    made, styled = [], []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if path.name == "markup.py":  # the module that states the rule
            continue
        made += [f"{path.name}:{m.start()}" for m in re.finditer(r"\bConsole\(", text)]
        styled += [f"{path.name}: {m.group()}" for m in re.finditer(r"\[/\]|\[(bold|red|green|yellow|dim)\b", text)]
    assert not made and not styled, made + styled


# -- HTML ------------------------------------------------------------------------------------------------------------
SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = "x' onload='alert(2)' a=\" onerror=\"alert(3)"


def _hostile_run(folder: Path) -> Path:
    """A run folder whose every file carries markup (as a tampered or hostile cohort would leave it)."""
    rows = {
        split: [
            {
                "specimen": f"{SCRIPT}{split}{i}",
                "label": i % 2,
                "score": 0.2 + 0.15 * i,
                "slides": f"{ATTRIBUTE}{split}{i}",
                "slide_scores": "0.5",
            }
            for i in range(6)
        ]
        for split in ("tune", "test")
    }
    # numbers stay numbers: a run file with text where a number belongs is refused (test_hostile_values.py)
    metrics = {
        split: {"auroc": 0.75, "ci95": [0.5, 0.9], "specimens": 6, "positive": 3, "note": SCRIPT} for split in rows
    }
    TrainRun(folder).write_results(
        config={
            "bags": SCRIPT,
            "cohort": f"<img src=x onerror=alert(4)>{SCRIPT}.csv",
            "stores": str(folder / "stores"),
        },
        splits={SCRIPT: ["a"], "tune": [], "test": []},
        pipeline={"note": SCRIPT},
        predictions=rows,
        metrics=metrics | {"best_epoch": 1},
    )
    return folder


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list]] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, attrs))


def test_report_escapes_every_value_of_the_run_files(tmp_path):
    run = _hostile_run(tmp_path / f"run{SCRIPT.replace('/', '')}")
    text = build_report(run, {SCRIPT: 1.0}, heatmaps=False).read_text()
    parser = _Tags()
    parser.feed(text)
    assert not [t for t, _ in parser.tags if t == "script"]
    events = [(t, name) for t, attrs in parser.tags for name, _ in attrs if name.startswith("on")]
    assert not events
    assert not [t for t, attrs in parser.tags if t == "img" and ("src", "x") in attrs]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "onload=&#x27;alert(2)&#x27;" in text


def test_report_refuses_text_where_a_number_was_expected(tmp_path):
    """Issue 22 §16: a damaged metrics.json is one sentence (it was drawn as text); the text is never markup."""
    run = _hostile_run(tmp_path / "run")
    metrics = TrainRun(run).read_metrics()
    metrics["test"] |= {"auroc": SCRIPT, "ci95": ["low", SCRIPT]}
    (run / "metrics.json").write_text(json.dumps(metrics))
    result = runner.invoke(app, ["report", str(run), "--no-heatmaps"])
    assert result.exit_code == 2 and "metrics.json: damaged" in result.output and "`test.auroc`" in result.output
    assert not (run / "report.html").exists()
    text = build_report(_hostile_run(tmp_path / "other"), {"embed": SCRIPT}, heatmaps=False).read_text()
    assert "<script>" not in text and text.count("&lt;script&gt;alert(1)") >= 3


# -- Markdown --------------------------------------------------------------------------------------------------------
def test_results_tables_keep_task_and_method_names_inside_their_cells(tmp_path):
    task, method = "t|<b>1", "=MEM | <script>alert(1)</script>"
    grid = GridConfig(  # a task name is a folder name (a safe id); built unchecked here to test the tables alone
        out=str(tmp_path),
        tasks=[Task.model_construct(name=task, cohort="c.csv", stores="s")],
        methods=["abmil-20x", method],
    )
    md, table = write_tables(grid, {task: {"abmil-20x": [0.6], method: [0.7]}})
    lines = md.read_text().splitlines()
    assert [line.count(" | ") for line in lines[:1] + lines[2:4]] == [2, 2, 2]  # method, task, average: 3 cells
    assert "<script>" not in md.read_text() and "<b>" not in md.read_text()
    assert list(csv.reader(table.open(newline="")))[2][0] == "'" + method


# -- CSV -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, written",
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("\uff1d1+1", "'\uff1d1+1"),
        ("'quoted", "''quoted"),
        ("-0.5", "-0.5"),
        ("+1e-3", "+1e-3"),
        ("-inf", "-inf"),
        ("a=b", "a=b"),
        ("", ""),
        (-0.5, -0.5),
        (3, 3),
        (None, None),
    ],
)
def test_spreadsheet_cells(value, written):
    assert spreadsheet_cell(value) == written
    if isinstance(value, str):
        assert spreadsheet_text(written) == value  # mixmag reads its own cells back exactly


def test_csv_writer_escapes_formulas(tmp_path):
    path = write_csv_atomic(tmp_path / "t.csv", ["id", "x"], [["=1+1", -0.25], ["@me", "-3"]])
    rows = list(csv.reader(path.open(newline="")))
    assert rows == [["id", "x"], ["'=1+1", "-0.25"], ["'@me", "-3"]]


def test_run_predictions_are_escaped_and_read_back_exactly(tmp_path):
    run = _hostile_run(tmp_path / "run")
    TrainRun(run).write_results(
        config={},
        splits={},
        pipeline={},
        predictions={
            "test": [
                {"specimen": "=HYPERLINK(1)", "label": 1, "score": 0.5, "slides": "+s", "slide_scores": "-1"},
                {"specimen": "b", "label": 0, "score": 0.25, "slides": "s", "slide_scores": "0.25"},
            ]
        },
        metrics={},
    )
    raw = list(csv.DictReader(TrainRun(run).predictions("test").open(newline="")))[0]
    assert raw["specimen"] == "'=HYPERLINK(1)" and raw["slides"] == "'+s" and raw["slide_scores"] == "-1"
    back = TrainRun(run).read_predictions("test")[0]
    assert back["specimen"] == "=HYPERLINK(1)" and back["slides"] == "+s"


def test_predictions_csv_escapes_specimens_and_problems(tmp_path):
    outcomes = [SlideOutcome("s1", 0.5, level_share={"20x": 1.0}), SlideOutcome("s2", problem="=cmd|' /C calc'!A0")]
    path = write_outcomes(tmp_path / "p.csv", outcomes, {"s1": "@spec", "s2": "-x"}, ["20x"])
    rows = list(csv.DictReader(path.open(newline="")))
    assert [r["specimen"] for r in rows] == ["'@spec", "'-x"]
    assert rows[1]["problem"] == "'=cmd|' /C calc'!A0" and rows[0]["slide_score"] == "0.500000"


# -- names that are not UTF-8 ----------------------------------------------------------------------------------------
def test_a_folder_name_that_is_not_utf8_is_one_sentence(tmp_path, tissue_slide):
    folder = tmp_path / os.fsdecode(b"scan\xff")
    try:
        folder.mkdir()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    shutil.copy(tissue_slide, folder / "s1.tiff")
    result = runner.invoke(app, ["tile", str(folder), "--out", str(tmp_path / "tiles")])
    assert result.exit_code == 1, result.output
    flat = " ".join(result.output.split())
    assert "scan\\xff/s1.tiff: the slide's path is not valid UTF-8" in flat and "rename" in flat
    assert "Pydantic" not in flat and "surrogates" not in flat


def test_doctor_says_tile_refuses_a_slide_whose_path_is_not_utf8(tmp_path, tissue_slide):
    """Before: doctor said "`mixmag tile` reads it with tifffile ..." for a slide that `mixmag tile` refuses."""
    folder = tmp_path / os.fsdecode(b"scan\xff")
    try:
        folder.mkdir()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    shutil.copy(tissue_slide, folder / "s1.tiff")
    flat = " ".join(runner.invoke(app, ["doctor", str(folder / "s1.tiff")]).output.split())
    assert "`mixmag tile` reads it" not in flat, flat
    assert "`mixmag tile` cannot tile it:" in flat and "the slide's path is not valid UTF-8" in flat, flat


def test_a_plans_folder_name_that_is_not_utf8_is_one_sentence(tmp_path, tissue_slide):
    plans = tmp_path / os.fsdecode(b"plans\xfe")
    try:
        plans.mkdir()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    assert runner.invoke(app, ["tile", str(tissue_slide), "--out", str(plans)]).exit_code == 0
    result = runner.invoke(
        app,
        ["embed", "--plans", str(plans), "--out", str(tmp_path / "stores"), "--encoder", "stats", "--device", "cpu"],
    )
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "plans\\xfe/tissue/plan.json: the tiling plan's path is not valid UTF-8" in " ".join(result.output.split())


def test_class_names_in_a_figure_are_drawn_as_written_never_as_mathtext(tmp_path):
    """Before: a class (or task, method, slide) name reached matplotlib as mathtext: `$x^2$` was drawn as x squared,
    and a malformed one (`$\\frac{$`) stopped the report with a parse error."""
    import matplotlib.pyplot as plt

    from mixmag.markup import plot_text
    from mixmag.report.outcomes import confusion_figure
    from mixmag.runs import TaskSplitMetrics

    names = ["$x^2$", "a$\\frac{$b", "plain"]
    metrics = TaskSplitMetrics.model_validate(
        {"ci95": [0.5, 0.9], "specimens": 9, "classes": names, "confusion": [[3, 0, 0], [0, 3, 0], [0, 0, 3]],
         "balanced_accuracy": 1.0, "macro_auroc": 0.8}
    )  # fmt: skip
    fig = confusion_figure([], metrics, "test")
    fig.savefig(tmp_path / "confusion.png")  # a malformed mathtext raised here
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [plot_text(n) for n in names]
    plt.close(fig)
    assert plot_text("$x^2$ costs $5") == r"\$x^2\$ costs \$5"
