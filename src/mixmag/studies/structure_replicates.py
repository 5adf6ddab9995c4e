"""`mixmag benchmark --structure-sweep --replicates R`: the MEM - Random gap against the structure knob, replicated.

Why: one benchmark per knob point holds that point's cohort, MEM pretraining run and random inits fixed, so a swing
between points may be one cohort's (the single sweep went -13.5, +4.3, +1.5 with no trend). Here each knob point is a
whole replicate study (`studies.replicates`: R fresh cohorts, pretraining runs and training seeds, its endpoint
registered in `<out>/structure-<s>/endpoint.json` before it runs), and the table puts, per point, the mean over
replicates of the paired difference with its t interval, t-test p and sign-flip p.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..fileio import FolderLock, make_folder, write_atomic, write_csv_atomic, write_json_atomic
from ..markup import markdown_cell, plain_console
from .benchmark import NOTICE
from .contrasts import Contrast
from .replicates import ReplicateComparison, comparison_record, make_endpoint, run_replicates
from .structure_sweep import StructureSweepConfig, plot_sweep, point_config

REPLICATED_STEM = "structure_sweep_replicates"


def _as_contrast(c: ReplicateComparison) -> Contrast:
    """A replicate comparison drawn like a bootstrap contrast: its mean, whiskers to its t interval."""
    return Contrast(f"{c.method} − {c.against}", (c.method,), (c.against,), c.mean, c.low, c.high)


def replicated_markdown(config: StructureSweepConfig, replicates: int, points: list[dict]) -> str:
    head = "| structure | difference | mean over replicates | 95% t interval | t-test p | sign-flip p | above 0 |"
    lines = [head, "|---:|---|---:|---|---:|---:|---:|"]
    for p in points:
        for c in p["comparisons"]:
            flip = "n/a" if c.sign_flip_p is None else f"{c.sign_flip_p:.3g}"
            lines.append(
                f"| {p['structure']:g} | {markdown_cell(c.method)} − {markdown_cell(c.against)} | "
                f"{100 * c.mean:+.1f} | {100 * c.low:+.1f} to {100 * c.high:+.1f} | {c.t_p:.3g} | {flip} | "
                f"{sum(d > 0 for d in c.differences)} of {len(c.differences)} |"
            )
    levels = [
        "| structure | " + " | ".join(markdown_cell(m) for m in [config.method, *config.against]) + " | CPU s |",
        "|---:|" + "---:|" * (len(config.against) + 2),
    ]
    for p in points:
        means = " | ".join(
            f"{100 * sum(v) / len(v):.1f}" for v in (p["per_method"][m] for m in [config.method, *config.against])
        )
        levels.append(f"| {p['structure']:g} | {means} | {p['cpu_seconds']:.0f} |")
    return (
        f"{NOTICE}\n\nThe MEM − Random gap against the generator's structure knob, replicated: at each point "
        f"{replicates} replicates, each a fresh cohort, a fresh MEM pretraining run and fresh training seeds "
        f"(`structure-<s>/replicate-<r>/`, endpoint registered first in `structure-<s>/endpoint.json`). Tasks "
        f"{', '.join(config.tasks)}; {config.cohort.get('n_specimens', 'default')} specimens per task; "
        f"{config.pretrain.get('steps')} MEM steps. Test AUROC x 100 averaged over the tasks within a replicate; "
        "the interval is a t interval over replicates, so it holds the variance between cohorts, pretraining runs "
        "and inits. Figure: structure_sweep_replicates.png.\n\n"
        + "\n".join(lines)
        + "\n\nMean over replicates of each method's task-averaged test AUROC x 100, and the CPU seconds of every "
        "replicate at the point together:\n\n" + "\n".join(levels) + "\n"
    )


def _write_outputs(out: Path, config: StructureSweepConfig, replicates: int, points: list[dict]) -> str:
    write_csv_atomic(
        out / f"{REPLICATED_STEM}.csv",
        ["structure", "method", "against", "mean", "ci_low", "ci_high", "t_test_p", "sign_flip_p", "differences"],
        [
            [f"{p['structure']:g}", c.method, c.against, f"{c.mean:.6f}", f"{c.low:.6f}", f"{c.high:.6f}"]
            + [f"{c.t_p:.6g}", "" if c.sign_flip_p is None else f"{c.sign_flip_p:.6g}"]
            + [";".join(f"{d:.6f}" for d in c.differences)]
            for p in points
            for c in p["comparisons"]
        ],
    )
    write_json_atomic(
        out / f"{REPLICATED_STEM}.json",
        {
            "replicates": replicates,
            "points": [
                {
                    "structure": p["structure"],
                    "cpu_seconds": p["cpu_seconds"],
                    "per_method": p["per_method"],
                    "comparisons": [comparison_record(c) for c in p["comparisons"]],
                }
                for p in points
            ],
        },
    )
    drawn = [{"structure": p["structure"], "contrasts": [_as_contrast(c) for c in p["comparisons"]]} for p in points]
    plot_sweep(out / f"{REPLICATED_STEM}.png", config, drawn, whiskers=f"95% t interval over {replicates} replicates")
    text = replicated_markdown(config, replicates, points)
    write_atomic(out / f"{REPLICATED_STEM}.md", text)
    return text


def run_structure_sweep_replicates(
    config: StructureSweepConfig, replicates: int, console: Console | None = None
) -> dict:
    """Every knob point a replicate study (reused where finished), then the replicated differences per point."""
    console = console or plain_console()
    out = make_folder(Path(config.out))
    points = []
    with FolderLock(out, "running a replicated structure sweep"):
        for structure in config.structures:
            point = point_config(config, structure)
            console.rule(f"structure {structure:g}: {replicates} replicates")
            endpoint = make_endpoint(point, replicates, method=config.method, against=list(config.against))
            result = run_replicates(point, replicates, console=console, endpoint=endpoint)
            points.append(
                {
                    "structure": structure,
                    "per_method": result["per_method"],
                    "comparisons": result["comparisons"],
                    "cpu_seconds": sum(float(rec.get("cpu_seconds", 0.0)) for rec in result["records"]),
                }
            )
        points.sort(key=lambda p: p["structure"])  # the table in knob order, whatever order the points ran in
        text = _write_outputs(out, config, replicates, points)
    console.rule("structure sweep, replicated")
    console.print(text, highlight=False, soft_wrap=True, markup=False)
    return {"points": points}
