"""The demo's outcome tasks (issue 24): a survival and a 3-class task on the demo's own slides and stores, trained with
a few methods, then one table (test C-index / macro AUROC with bootstrap CIs, a paired bootstrap p and a
Benjamini-Hochberg q against AB-MIL 20x) and a scale check read from the runs.

The tasks have known answers (`mixmag.synth.cohort:write_outcome_tables`): the hazard follows the fine (20x)
biomarker, so AB-MIL 20x should rank risks well and AB-MIL 5x hardly; the classes are none / 20x / 5x, so AB-MIL 20x
should tell the 20x class (one-vs-rest AUROC) far better than the 5x class.
"""

from __future__ import annotations

from pathlib import Path

from ..fileio import write_atomic
from ..runs import TrainRun
from .experiments import GridConfig, method_config
from .grid_statistics import grid_statistics, grid_statistics_table

OUTCOMES_MD = "outcomes.md"


def outcome_scale_check(grid: GridConfig, results: dict) -> str:
    """Is each outcome's biomarker seen at the scale it was placed at? Survival: AB-MIL 20x against 5x C-index;
    multiclass: AB-MIL 20x's one-vs-rest AUROC of the 20x class against the 5x class (from the run's metrics)."""
    lines = ["Scale check (outcome tasks, AB-MIL; the hazard follows the 20x biomarker, each class is one scale's):"]
    survival = results.get("survival", {})
    if "abmil-20x" in survival and "abmil-5x" in survival:
        a, b = (sum(survival[m]) / len(survival[m]) for m in ("abmil-20x", "abmil-5x"))
        lines.append(f"  survival: abmil-20x C-index {a:.3f} vs abmil-5x {b:.3f} -> {_verdict(a > b)}")
    task = next((t for t in grid.tasks if t.name == "multiclass"), None)
    if task is not None and "abmil-20x" in grid.methods:
        per_class = [
            TrainRun(method_config(grid, task, "abmil-20x", s).out).read_metrics()["test"]["per_class_auroc"]
            for s in grid.seeds
        ]
        a, b = (sum(float(pc[c]) for pc in per_class) / len(per_class) for c in ("20x", "5x"))
        lines.append(
            f"  multiclass: abmil-20x one-vs-rest AUROC of class 20x {a:.3f} vs class 5x {b:.3f} -> {_verdict(a > b)}"
        )
    return "\n".join(lines)


def _verdict(as_placed: bool) -> str:
    return "as placed" if as_placed else "NOT as placed"


def write_outcomes(grid: GridConfig, results: dict, n_boot: int) -> Path:
    """outcomes.md in the grid's folder: the table and the scale check, as the demo prints them."""
    table = grid_statistics_table(grid_statistics(grid, n_boot), grid, n_boot)
    text = f"Outcome tasks on the same slides (survival, 3-class):\n\n{table}\n{outcome_scale_check(grid, results)}\n"
    return write_atomic(Path(grid.out) / OUTCOMES_MD, text)
