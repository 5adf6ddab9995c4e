"""The 20x-only rival in a study (issue 25 item 4; `data.pooled`): the same AB-MIL methods on stores whose 5x and 10x
tokens are pooled from the 20x tiles, their statistics, each method against itself on the real stores (same test
specimens: paired), and what embedding only the 20x tiles would save. Shared by `mixmag benchmark` (embedding level)
and the pixel benchmark (`mixmag demo --config configs/benchmark-pixels.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..data.cohort import load_cohort
from ..data.pooled import write_pooled
from ..fileio import write_csv_atomic
from ..store import read_store, store_path
from ..tables import read_table
from .benchmark_stats import (
    cell_statistics,
    compare_methods,
    false_discovery_rate,
    statistics_table,
    with_false_discovery_rate,
)
from .experiments import GridConfig, Task, run_folder, run_grid


@dataclass(frozen=True)
class RivalSetup:
    """Where the rival reads and writes, and what it runs (the study's own settings for the rest)."""

    tables: dict[str, Path]  # rival task -> its real cohort table
    stores: Path  # the real stores' folder
    pooled: Path  # the pooled stores' folder (made once, beside the real one)
    results: Path  # the rival's grid folder
    real_results: Path  # the study's own grid folder (the real stores' runs)
    real_methods: list[str]  # the study's own methods: a rival method among them is compared with its real twin
    methods: list[str]
    seeds: list[int]
    train: dict
    train_by_method: dict
    baseline: str
    n_boot: int


def rival_setup(config, tables: dict[str, Path], stores: Path, out: Path, baseline: str) -> RivalSetup:
    """A study's rival: `config` (a benchmark or pixel-benchmark config) gives rival_tasks and rival_methods, its own
    methods, seeds, training settings and n_boot; the pooled stores go beside `stores`, the runs into
    `out`/results-rival beside the study's `out`/results."""
    return RivalSetup(
        tables={t: tables[t] for t in config.rival_tasks},
        stores=stores,
        pooled=stores.with_name(f"{stores.name}-pooled"),
        results=out / "results-rival",
        real_results=out / "results",
        real_methods=list(config.methods),
        methods=list(config.rival_methods),
        seeds=list(config.seeds),
        train=config.train,
        train_by_method=config.train_by_method,
        baseline=baseline,
        n_boot=config.n_boot,
    )


def pooled_table(table: Path, pooled: Path) -> Path:
    """The task's cohort table beside it (`<task>-pooled.csv`), its `store` column (added when the table has none)
    naming the pooled stores: a table's store paths win over a stores folder."""
    source = read_table(table)
    columns = list(source.columns) + ([] if "store" in source.columns else ["store"])
    rows = [
        [store_path(pooled, row["slide"]) if column == "store" else row[column] for column in columns]
        for row in source.rows
    ]
    return write_csv_atomic(table.with_name(f"{table.stem}-pooled.csv"), columns, rows)


def pool_tasks(setup: RivalSetup) -> dict[str, Path]:
    """Each rival task's stores pooled (once) and its pooled table."""
    out = {}
    for task, table in setup.tables.items():
        for path in load_cohort(table, setup.stores).stores.values():
            if not store_path(setup.pooled, path.stem).is_file():
                write_pooled(path, setup.pooled)
        out[task] = pooled_table(table, setup.pooled)
    return out


def run_rival(setup: RivalSetup, on_run=None) -> dict:
    """Train the rival methods on the pooled stores; their statistics, and each against itself on the real stores."""
    rival_tables = pool_tasks(setup)
    grid = GridConfig(
        out=str(setup.results),
        methods=setup.methods,
        seeds=setup.seeds,
        tasks=[Task(name=t, cohort=str(p), stores=str(setup.pooled)) for t, p in rival_tables.items()],
        train=setup.train,
        train_by_method=setup.train_by_method,
        baseline=setup.baseline,
    )
    run_grid(grid, on_run=on_run)
    cells = []
    for task in rival_tables:
        runs = {m: [run_folder(grid, task, m, s) for s in setup.seeds] for m in setup.methods}
        cells += cell_statistics(task, runs, setup.baseline, n_boot=setup.n_boot)
    real = GridConfig(out=str(setup.real_results), methods=setup.methods, seeds=setup.seeds, tasks=grid.tasks)
    pairs = [
        compare_methods(
            task,
            [run_folder(real, task, m, s) for s in setup.seeds],
            [run_folder(grid, task, m, s) for s in setup.seeds],
            m,
            f"{m} (20x-pooled)",
        )
        for task in rival_tables
        for m in setup.methods
        if m in setup.real_methods
    ]
    q = false_discovery_rate([pair.p for pair in pairs])
    return {
        "tasks": list(rival_tables),
        "cells": with_false_discovery_rate(cells),
        "pairs": [replace(pair, q=q_value) for pair, q_value in zip(pairs, q, strict=True)],
    }


def embedding_saving(stores: list[Path], embed_seconds: float | None) -> dict:
    """How many of the stores' tiles the rival never embeds (every level but the finest), and that share of the
    embedding stage's time: an estimate at equal cost per tile (the encoder sees every tile at the same size; reading
    a coarse tile from a pyramid is cheaper, so the estimate is an upper bound on that part)."""
    total = skipped = 0
    for path in stores:
        store = read_store(path)
        counts = [int(emb.shape[0] * emb.shape[1]) for emb in (store.embeddings[n] for n in store.level_names)]
        total += sum(counts)
        skipped += sum(counts[:-1])
    share = skipped / total if total else 0.0
    saved = None if embed_seconds is None else share * embed_seconds
    return {
        "tiles": total,
        "tiles_not_embedded": skipped,
        "share": share,
        "embed_seconds": embed_seconds,
        "saved_seconds": saved,
    }


def rival_markdown(rival: dict, saving: str, seeds: list[int], methods: list[str], n_boot: int, baseline: str) -> str:
    """The rival's statistics table and its paired comparisons with the real stores ("" without a rival)."""
    if not rival:
        return ""
    table = statistics_table(rival["cells"], rival["tasks"], methods, seeds, n_boot, baseline)
    lines = [
        "| task | method | against | AUROC difference x 100 | paired DeLong p | q (Benjamini-Hochberg) |",
        "|---|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {p.task} | {p.method} | {p.against} | {100 * p.difference:+.1f} | {p.p:.2g} | {p.q:.2g} |"
        for p in rival["pairs"]
    ]
    return (
        f"\n\nThe 20x-only rival (5x and 10x tokens pooled from the 20x tiles; {saving}):\n\n{table}\n"
        "Real 5x/10x features against pooled ones, same method and test specimens:\n\n" + "\n".join(lines) + "\n"
    )
