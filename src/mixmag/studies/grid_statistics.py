"""statistics.md of an experiment grid (`n_boot` > 0), for any task type and for cross-validated cells: each cell's
test metric (a cross-validated cell's pooled out-of-fold one) with a bootstrap 95% CI over specimens, a paired p
against the baseline and Benjamini-Hochberg q values over the table's comparisons."""

from __future__ import annotations

from pathlib import Path

from ..fileio import write_atomic
from ..markup import markdown_cell
from ..stages.crossval import METRIC_NAMES
from ..train.tasks import PRIMARY
from .benchmark_stats import CellStatistic, cell_statistics, with_false_discovery_rate
from .experiments import GridConfig, method_config

STATISTICS_MD = "statistics.md"


def grid_statistics(grid: GridConfig, n_boot: int) -> list[CellStatistic]:
    """Each cell's test metric with its bootstrap CI, p against the grid's baseline, q over the whole table."""
    cells = []
    for task in grid.tasks:
        runs = {m: [Path(method_config(grid, task, m, s).out) for s in grid.seeds] for m in grid.methods}
        cells += cell_statistics(task.name, runs, grid.baseline, n_boot=n_boot)
    return with_false_discovery_rate(cells)


def grid_statistics_table(cells: list[CellStatistic], grid: GridConfig, n_boot: int) -> str:
    """Markdown: one row per method, one column per task (named with its metric), each cell value [CI; p, q]."""
    by = {(c.task, c.method): c for c in cells}

    def cell(c: CellStatistic) -> str:
        p = "" if c.p_vs_baseline is None else f"; p={c.p_vs_baseline:.2g}"
        p += "" if c.q_vs_baseline is None else f", q={c.q_vs_baseline:.2g}"
        return f"{c.mean:.3f} [{c.low:.3f}, {c.high:.3f}{p}]"

    names = [f"{t.name} ({METRIC_NAMES[PRIMARY[t.type]]})" for t in grid.tasks]
    rows = [
        f"| {markdown_cell(m)} | " + " | ".join(cell(by[(t.name, m)]) for t in grid.tasks) + " |" for m in grid.methods
    ]
    n_test = ", ".join(f"{t.name} {by[(t.name, grid.methods[0])].n_test}" for t in grid.tasks)
    tests = sorted({"paired DeLong (binary)" if t.type == "binary" else "a paired bootstrap" for t in grid.tasks})
    pooled = f"pooled out of {grid.cv.folds} folds, " if grid.cv is not None else ""
    note = (
        f"Test metric ({pooled}mean over seeds {', '.join(map(str, grid.seeds))}) [bootstrap 95% CI over the "
        f"specimens ({n_test}), {n_boot} resamples; p: {' or '.join(tests)} of the difference against "
        f"{grid.baseline}; q: p adjusted for the table's {sum(c.q_vs_baseline is not None for c in cells)} "
        "comparisons (Benjamini-Hochberg)]."
    )
    head = "| method | " + " | ".join(map(markdown_cell, names)) + " |"
    return "\n".join([head, "|---|" + "---:|" * len(grid.tasks), *rows, "", note]) + "\n"


def write_grid_statistics(grid: GridConfig, n_boot: int | None = None) -> Path:
    """statistics.md in the grid's folder (n_boot: the grid's own unless given)."""
    n_boot = grid.n_boot if n_boot is None else n_boot
    table = grid_statistics_table(grid_statistics(grid, n_boot), grid, n_boot)
    return write_atomic(Path(grid.out) / STATISTICS_MD, table)
