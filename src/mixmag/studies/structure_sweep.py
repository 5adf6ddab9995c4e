"""`mixmag benchmark --structure-sweep`: the MEM - Random gap against the embedding generator's structure knob.

Why: MEM can only learn what makes a hidden token predictable from its parents, children and neighbours. At structure 0
(`synth.stores`: every tile drawn independently) there is nothing to learn and MEM should not beat a random mixer; at 1
(the default: held-out R^2 about 0.75 of a 5x token from its 20x children) there is. One embedding benchmark per knob
point, in `<out>/structure-<s>/` (each an ordinary `mixmag benchmark` run: cohort, MEM pretraining, runs, reused when
finished), the same seeds and settings at every point; then per point the task-averaged test AUROC of MEM-patch minus
each comparator (random-patch, AB-MIL 20x) with a 95% paired bootstrap CI over test specimens
(`studies.contrasts`), and the MEM loss against the predict-the-mean baseline, which says whether MEM learnt anything.
The CIs cover the test set's finiteness only, not cohort or pretraining variance (`--replicates` measures that).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator
from rich.console import Console

from ..config import load_config
from ..fileio import make_folder, write_atomic, write_csv_atomic, write_json_atomic
from ..markup import markdown_cell, plain_console, plot_text
from .benchmark import NOTICE, BenchmarkConfig, check_benchmark_config, run_benchmark
from .contrasts import Contrast, ContrastData
from .experiments import GridConfig, Task, run_folder
from .figures import errorbar_contrasts, finish_axes, new_axes

SWEEP_FIELDS = {"structures", "method", "against"}


class StructureSweepConfig(BenchmarkConfig):
    """configs/structure-sweep-small.yaml: a benchmark config (every point runs it) plus the knob's points and the
    comparison; the defaults are the benchmark's with the jointly fine-tuned rows and no attribution."""

    out: str = "structure_sweep_out"
    methods: list[str] = Field(default_factory=lambda: ["abmil-20x", "random-patch", "MEM-patch"])
    pairs: list[tuple[str, str]] = Field(default_factory=lambda: [("MEM-patch", "random-patch")])
    attribution_methods: list[str] = Field(default_factory=list)
    structures: list[float] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0],
        min_length=2,
        max_length=11,
        description="the generator's structure at each point (synth.stores: 0 independent tiles, 1 the default)",
    )
    method: str = "MEM-patch"
    against: list[str] = Field(default_factory=lambda: ["random-patch", "abmil-20x"], min_length=1)

    @model_validator(mode="after")
    def _a_sweep(self) -> StructureSweepConfig:
        if any(not 0 <= s <= 1 for s in self.structures) or len(set(self.structures)) != len(self.structures):
            raise ValueError(f"structures {self.structures}: give distinct values from 0 to 1")
        missing = [m for m in [self.method, *self.against] if m not in self.methods]
        if missing:
            raise ValueError(
                f"method/against {', '.join(missing)} are not among the methods ({', '.join(self.methods)})"
            )
        if "structure" in self.cohort or any("structure" in spec for spec in self.cohort_by_task.values()):
            raise ValueError("the sweep sets each point's `structure`: remove it from cohort and cohort_by_task")
        if self.outcome_tasks:
            raise ValueError("the sweep compares test AUROC: remove outcome_tasks")
        return self


def load_structure_sweep_config(path: Path | None, out: Path | None = None) -> StructureSweepConfig:
    config = check_benchmark_config(load_config(StructureSweepConfig, path), path)
    assert isinstance(config, StructureSweepConfig)
    return config if out is None else config.model_copy(update={"out": str(out)})


def point_config(config: StructureSweepConfig, structure: float) -> BenchmarkConfig:
    """The benchmark run at one knob point: the sweep's settings, its own folder and every task's cohort at it."""
    return BenchmarkConfig(
        **config.model_dump(exclude=SWEEP_FIELDS)
        | {
            "out": str(Path(config.out) / f"structure-{structure:g}"),
            "cohort": config.cohort | {"structure": structure},
        }
    )


def point_contrasts(config: StructureSweepConfig, point: BenchmarkConfig) -> tuple[ContrastData, list[Contrast]]:
    """The point's paired bootstrap data and, per comparator, the task-averaged AUROC of `method` minus it."""
    grid = GridConfig(
        out=str(Path(point.out) / "results"),
        methods=config.methods,
        seeds=config.seeds,
        tasks=[Task(name=t, cohort="", stores="") for t in config.tasks],
    )
    runs = {t: {m: [run_folder(grid, t, m, s) for s in config.seeds] for m in config.methods} for t in config.tasks}
    data = ContrastData(runs, n_boot=config.n_boot)
    return data, [data.contrast(f"{config.method} − {b}", [config.method], [b]) for b in config.against]


def _ci(c: Contrast, signed: bool = True) -> str:
    f = "+.1f" if signed else ".1f"
    return f"{100 * c.value:{f}} ({100 * c.low:{f}} to {100 * c.high:{f}})"


def _loss_cell(losses: dict) -> str:
    if losses.get("skipped"):
        return "skipped"
    return f"{losses['mem']:.3f} / {losses['baseline']:.3f}"


def sweep_markdown(config: StructureSweepConfig, points: list[dict]) -> str:
    methods = [config.method, *config.against]
    head = (
        "| structure | MEM loss / mean baseline | "
        + " | ".join(markdown_cell(m) for m in methods)
        + " | "
        + " | ".join(f"{markdown_cell(config.method)} − {markdown_cell(b)}" for b in config.against)
        + " | CPU s (this invocation) |"
    )
    lines = [head, "|---:|---|" + "---:|" * (len(methods) + len(config.against) + 1)]
    for p in points:
        levels = " | ".join(_ci(p["data"].contrast(m, [m]), signed=False) for m in methods)
        diffs = " | ".join(_ci(c) for c in p["contrasts"])
        lines.append(
            f"| {p['structure']:g} | {_loss_cell(p['pretraining'])} | {levels} | {diffs} | {p['cpu_seconds']:.0f} |"
        )
    per_task = [
        "| structure | task | " + " | ".join(markdown_cell(m) for m in methods) + " |",
        "|---:|---|" + "---:|" * len(methods),
    ]
    per_task += [
        f"| {p['structure']:g} | {t} | " + " | ".join(f"{100 * p['data'].point[t][m]:.1f}" for m in methods) + " |"
        for p in points
        for t in config.tasks
    ]
    return (
        f"{NOTICE}\n\nThe MEM − Random gap against the generator's structure knob (0: every tile drawn independently, "
        f"nothing for MEM to learn; 1: the default). Tasks {', '.join(config.tasks)}; seeds "
        f"{', '.join(map(str, config.seeds))}; {config.cohort.get('n_specimens', 'default')} specimens per task; "
        f"{config.pretrain.get('steps')} MEM steps. Test AUROC x 100, mean over tasks and seeds, 95% paired bootstrap "
        f"CI over test specimens ({config.n_boot} resamples; not cohort or pretraining variance); MEM loss: mean over "
        "the last logged steps against the predict-the-mean baseline (lower is better; not below it: MEM learnt "
        "nothing a region mean does not give). Figure: structure_sweep.png.\n\n"
        + "\n".join(lines)
        + "\n\nPer task (test AUROC x 100, mean over seeds):\n\n"
        + "\n".join(per_task)
        + "\n"
    )


def plot_sweep(
    path: Path, config: StructureSweepConfig, points: list[dict], whiskers: str = "95% paired bootstrap CI"
) -> Path:
    """Each comparison's AUROC difference against the knob with its interval (`whiskers` names it), zero marked."""
    fig, ax = new_axes((5.2, 3.6))
    x = np.array([p["structure"] for p in points])
    for k, b in enumerate(config.against):
        shift = 0.012 * (k - (len(config.against) - 1) / 2)  # side by side
        cs = [p["contrasts"][k] for p in points]
        label = plot_text(f"{config.method} − {b}")
        errorbar_contrasts(ax, x + shift, cs, marker="os^Dv"[k % 5], capsize=3, label=label)
    return finish_axes(
        fig,
        ax,
        path,
        ticks=x,
        tick_labels=[f"{s:g}" for s in x],
        xlabel="generator structure (0: independent tiles, 1: default)",
        ylabel="test AUROC difference x 100 (mean over tasks)",
        title=f"MEM against its rivals by how predictable tokens are (synthetic)\nwhiskers: {whiskers}",
        zero=True,
    )


def _write_outputs(out: Path, config: StructureSweepConfig, points: list[dict]) -> str:
    rows = [
        [f"{p['structure']:g}", c.label, f"{c.value:.4f}", f"{c.low:.4f}", f"{c.high:.4f}", f"{p['cpu_seconds']:.1f}"]
        for p in points
        for c in p["contrasts"]
    ]
    write_csv_atomic(
        out / "structure_sweep.csv", ["structure", "difference", "value", "ci_low", "ci_high", "cpu_s"], rows
    )
    write_json_atomic(
        out / "structure_sweep.json",
        [
            {
                "structure": p["structure"],
                "cpu_seconds": p["cpu_seconds"],
                "pretraining": p["pretraining"],
                "aurocs": p["data"].point,
                "differences": [
                    {"label": c.label, "value": c.value, "low": c.low, "high": c.high} for c in p["contrasts"]
                ],
            }
            for p in points
        ],
    )
    plot_sweep(out / "structure_sweep.png", config, points)
    text = sweep_markdown(config, points)
    write_atomic(out / "structure_sweep.md", text)
    return text


def run_structure_sweep(config: StructureSweepConfig, console: Console | None = None) -> dict:
    """One benchmark per knob point (reused when finished), then the differences against the knob."""
    console = console or plain_console()
    out = make_folder(Path(config.out))
    points = []
    for structure in config.structures:
        point = point_config(config, structure)
        console.rule(f"structure {structure:g}")
        cpu = time.process_time()
        result = run_benchmark(point, console=console)
        cpu = time.process_time() - cpu  # this process's CPU seconds: a cost that load does not inflate
        data, contrasts = point_contrasts(config, point)
        points.append(
            {
                "structure": structure,
                "cpu_seconds": cpu,
                "pretraining": result["pretraining"],
                "data": data,
                "contrasts": contrasts,
            }
        )
    points.sort(key=lambda p: p["structure"])  # the table in knob order, whatever order the points ran in
    text = _write_outputs(out, config, points)
    console.rule("structure sweep")
    console.print(text, highlight=False, soft_wrap=True, markup=False)
    return {"points": points}
