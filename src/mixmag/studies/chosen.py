"""Which study `mixmag benchmark` runs: the benchmark, or one of the structure sweep, design space and label
efficiency, each alone or replicated (`--replicates R`). One place that maps the command's flags to a study, so the
command itself stays a list of options."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .benchmark import load_benchmark_config, run_benchmark
from .design_space import DESIGN_SPACE, load_design_space_config, run_design_space
from .label_efficiency import LABEL_EFFICIENCY, load_label_efficiency_config, run_label_efficiency
from .replicated_studies import run_replicated_study
from .replicates import load_replicates_config, run_replicates
from .structure_replicates import run_structure_sweep_replicates
from .structure_sweep import load_structure_sweep_config, run_structure_sweep


def run_chosen_study(
    study: str, config: Path | None, out: Path | None, replicates: int | None, console: Console
) -> None:
    """Run `study` ('benchmark', 'structure-sweep', 'design-space' or 'label-efficiency') from `config` (None: its
    built-in settings) into `out`, R times over when `replicates` is given."""
    if study == "structure-sweep":
        sweep = load_structure_sweep_config(config, out)
        if replicates is None:
            run_structure_sweep(sweep, console=console)
        else:
            run_structure_sweep_replicates(sweep, replicates, console=console)
    elif study == "design-space":
        space = load_design_space_config(config, out)
        if replicates is None:
            run_design_space(space, console=console)
        else:
            run_replicated_study(DESIGN_SPACE, space, replicates, console=console)
    elif study == "label-efficiency":
        sizes = load_label_efficiency_config(config, out)
        if replicates is None:
            run_label_efficiency(sizes, console=console)
        else:
            run_replicated_study(LABEL_EFFICIENCY, sizes, replicates, console=console)
    elif replicates is not None:
        run_replicates(load_replicates_config(config, out), replicates, console=console)
    else:
        run_benchmark(load_benchmark_config(config, out), console=console)
