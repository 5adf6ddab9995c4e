"""`mixmag demo`: slide files -> Table 1-style results through every stage the real pipeline uses.

generate cohort -> tile -> embed -> pretrain (MEM) -> slide-level training of the baselines and the
mixers -> tables, plot, stage timings. Every stage reuses what a previous run finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console
from rich.text import Text

from ..config import MAX_RESAMPLES, MAX_WORKERS, load_config
from ..encoders.model import build_encoder
from ..errors import CohortError, StageError
from ..fileio import make_folder, read_json_limited, remove_own_tree, write_atomic, write_json_atomic
from ..ids import SafeName
from ..markup import plain_console
from ..report.html import build_report
from ..runs import PretrainRun, TrainRun
from ..slides.sources import sources_from_table
from ..slides.tiling import TilingParams
from ..stages.crossval import METRIC_NAMES
from ..stages.embed import find_plans, run_embed
from ..stages.progress import work_progress
from ..stages.tile import tile_slides
from ..synth.cohort import OUTCOME_TASKS, TASKS, CohortSpec, write_cohort, write_outcome_tables
from ..train.finetune import Seed, TrainSettings
from ..train.mixer_file import pretrained_mixer_set
from ..train.pretrain import PretrainConfig, PretrainSettings, pretraining_catalog, run_pretraining, store_paths
from ..train.tasks import PRIMARY
from .benchmark_stats import CellStatistic, cell_statistics, statistics_table, with_false_discovery_rate
from .demo_outcomes import write_outcomes
from .experiments import GridConfig, Task, method_config, run_grid
from .methods import ABMIL_ON_TILES
from .rival import embedding_saving, rival_markdown, rival_setup, run_rival

SYNTHETIC_NOTICE = (
    "These data are SYNTHETIC (generated slides with biomarkers placed at known scales) and the built-in encoder is "
    "not a foundation model: the numbers below test the pipeline, they are not the paper's results."
)


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Defaults equal configs/demo.yaml, so an installed package without the repository runs the same demo.
    out: str = "demo_out"
    cohort_tables: dict[SafeName, str] | None = Field(
        None,
        description=(
            "your own cohort: task name -> CSV (specimen, slide, label, split, path); replaces the synthetic cohort"
        ),
    )
    tiling: TilingParams = Field(default_factory=TilingParams, description="tiling settings, e.g. {region_size: 3}")
    cohort: CohortSpec = Field(
        default_factory=lambda: CohortSpec(n_specimens=80, max_slides=2, cells=6, seed=0),
        description="the synthetic cohort (mixmag.synth.cohort.CohortSpec)",
    )
    encoder: str = "stats"
    weights: str | None = None
    workers: int = Field(1, ge=0, le=MAX_WORKERS)
    pretrain: PretrainSettings = Field(
        default_factory=lambda: PretrainSettings(
            preset="tiny",
            mask_ratio=0.5,
            batch_size=32,
            steps=300,
            warmup_steps=20,
            base_lr=8.0e-3,
            precision="fp32",
            per_slide=16,
            pool=8,
        ),
        description="how the mixer is pretrained (the stores and run folder are the demo's)",
    )
    train: TrainSettings = Field(
        default_factory=lambda: TrainSettings(epochs=10, batch_size=8, lr=3.0e-3, bootstrap=500),
        description="every slide-level run",
    )
    train_by_method: dict[str, TrainSettings] = Field(
        default_factory=lambda: {"abmil": TrainSettings(epochs=40, lr=5.0e-3)}
    )
    methods: list[str] = Field(
        default_factory=lambda: [
            "abmil-5x",
            "abmil-10x",
            "abmil-20x",
            "abmil-all",
            "random-patch",
            "random-cls",
            "MEM-patch",
            "MEM-cls",
        ]
    )
    seeds: list[Seed] = Field(default_factory=lambda: [0])
    outcome_tasks: list[Literal["survival", "multiclass"]] = Field(
        default_factory=lambda: list(OUTCOME_TASKS),
        description="synthetic cohort only: task types beyond binary trained on the same slides (survival: the hazard "
        "follows the 20x biomarker; multiclass: none / 20x / 5x, the scale of the specimen's only biomarker)",
    )
    outcome_methods: list[str] = Field(
        default_factory=lambda: ["abmil-5x", "abmil-20x", "abmil-all", "MEM-patch"],
        description="the methods of the outcome tasks (abmil-5x and abmil-20x make their scale check)",
    )
    n_boot: int = Field(
        0,
        ge=0,
        le=MAX_RESAMPLES,
        description="> 0: also a table of mean ± sd over seeds, bootstrap 95% CI (n_boot resamples) and paired "
        "DeLong p against abmil-20x (results/statistics.md)",
    )
    rival_tasks: list[SafeName] = Field(
        default_factory=list,
        description="tasks also run on stores whose 5x and 10x tokens are pooled from the 20x tiles alone (the "
        "20x-only rival, `mixmag store pool`): results-rival/, each rival method against itself on the real stores, "
        "and the embedding time the rival would save (results/rival.md; needs n_boot > 0)",
    )
    rival_methods: list[str] = Field(
        default_factory=lambda: ["abmil-5x", "abmil-20x", "abmil-all"],
        description="methods run on the pooled stores (AB-MIL: a mixer would need its own pretraining on them)",
    )

    @model_validator(mode="after")
    def _rival_settings(self) -> DemoConfig:
        if self.rival_tasks and not self.n_boot:
            raise ValueError("rival_tasks needs n_boot > 0 (the rival's table has bootstrap CIs and paired tests)")
        if self.rival_tasks and (
            "abmil-20x" not in self.rival_methods or not set(self.rival_methods) <= set(ABMIL_ON_TILES)
        ):
            raise ValueError(
                f"rival_methods must be AB-MIL methods ({', '.join(ABMIL_ON_TILES)}) and include abmil-20x"
            )
        return self


def load_demo_config(path: Path | None, out: Path | None = None) -> DemoConfig:
    config = load_config(DemoConfig, path)
    if out is not None:
        config = config.model_copy(update={"out": str(out)})
    return config


def default_config_path() -> Path | None:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "configs" / "demo.yaml"
        if candidate.is_file():
            return candidate
    return None


def _nothing() -> None:
    pass


class Timer:
    """Each stage's wall time, and which stages only reused what an earlier run made (`mark_reused`)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.reused: set[str] = set()
        self._current: str | None = None

    def run(self, name: str, console: Console, fn):
        console.rule(Text(name, style="bold"))
        self._current = name
        start = time.perf_counter()
        result = fn()
        self.stages[name] = round(time.perf_counter() - start, 2)
        again = " (reused an earlier run's outputs)" if name in self.reused else ""
        console.print(f"{name}: {self.stages[name]:.1f} s{again}", style="dim")
        return result

    def mark_reused(self) -> None:
        """The running stage made nothing new: its time is a check, not the stage's cost."""
        if self._current is not None:
            self.reused.add(self._current)


TIMINGS_RUNS = "timings_runs.json"


def record_timings(out: Path, timer: Timer) -> dict[str, dict]:
    """Append this run to `timings_runs.json` (every run: seconds and reused per stage) and write `timings.json` with
    each stage's time from the latest run that did the work, so a rerun that reuses everything keeps the real
    timings. Returns, per stage, what a report shows: seconds, whether this run reused it, and from which run."""
    history_path = out / TIMINGS_RUNS
    history = read_json_limited(history_path, what="demo timings") if history_path.is_file() else []
    history = [r for r in history if isinstance(r, dict) and isinstance(r.get("stages"), dict)]
    if not history and (out / "timings.json").is_file():  # a demo folder from before this record: its first run
        first = read_json_limited(out / "timings.json", what="demo timings")
        if isinstance(first, dict):
            stages = {k: {"seconds": v, "reused": False} for k, v in first.items() if isinstance(v, (int, float))}
            history.append({"finished": None, "stages": stages})
    history.append(
        {
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stages": {k: {"seconds": v, "reused": k in timer.reused} for k, v in timer.stages.items()},
        }
    )
    write_json_atomic(history_path, history, indent=1)
    shown = {}
    for name in timer.stages:
        worked = [i for i, run in enumerate(history) if _did_work(run, name)]
        k = worked[-1] if worked else len(history) - 1
        shown[name] = {
            "seconds": float(history[k]["stages"][name]["seconds"]),
            "reused": name in timer.reused,
            "run": k + 1,
            "runs": len(history),
            "finished": history[k].get("finished"),
        }
    write_json_atomic(out / "timings.json", {k: v["seconds"] for k, v in shown.items()}, indent=1)
    return shown


def _did_work(run: dict, stage: str) -> bool:
    entry = run["stages"].get(stage)
    return isinstance(entry, dict) and entry.get("reused") is False and isinstance(entry.get("seconds"), (int, float))


def timings_line(timings: dict[str, dict]) -> str:
    """'generate the synthetic cohort 35 s, tile 9 s, ...', each time from the run that did the work."""
    words = []
    for name, t in timings.items():
        short = name.split(". ", 1)[-1].split(" (")[0]
        note = f" (run {t['run']} of {t['runs']}; reused in this one)" if t["reused"] and t["runs"] > 1 else ""
        words.append(f"{short} {t['seconds']:.0f} s{note}")
    return ", ".join(words)


def run_demo(config: DemoConfig, console: Console | None = None) -> int:
    console = console or plain_console()
    out = Path(config.out)
    make_folder(out)
    timer = Timer()
    if not config.cohort_tables:
        console.print(SYNTHETIC_NOTICE, style="bold yellow", soft_wrap=True)

    if config.cohort_tables:
        tables = {task: Path(path) for task, path in config.cohort_tables.items()}
        missing = [str(p) for p in tables.values() if not p.is_file()]
        if missing:
            raise CohortError(f"cohort table(s) not found: {', '.join(missing)}")
        timer.stages["1. use the cohort tables of the config"] = 0.0
    else:
        spec = config.cohort
        tables = timer.run(
            "1. generate the synthetic cohort", console, lambda: _generate(out, spec, console, timer.mark_reused)
        )
    plans = timer.run(
        "2. tile (3x3 regions of 5x/10x/20x tiles)",
        console,
        lambda: _tile(out, tables, config.tiling, console, timer.mark_reused),
    )
    timer.run(
        f"3. embed every tile with the '{config.encoder}' encoder",
        console,
        lambda: _embed(out, config, plans, console, timer.mark_reused),
    )
    mixer = timer.run(
        "4. pretrain a mixer with MEM", console, lambda: _pretrain(out, config, tables, console, timer.mark_reused)
    )
    grid = _grid(out, config, tables, mixer)
    results = timer.run(
        "5. train and evaluate slide-level models", console, lambda: _experiment(grid, console, timer.mark_reused)
    )
    outcomes = None
    if config.outcome_tasks and not config.cohort_tables:
        outcomes = timer.run(
            "6. train and evaluate outcome tasks (" + ", ".join(config.outcome_tasks) + ")",
            console,
            lambda: _outcomes(out, config, mixer, console, timer.mark_reused),
        )
    if config.n_boot:
        timer.run("7. statistics (bootstrap, DeLong)", console, lambda: _statistics(grid, config))
    rival = None
    if config.rival_tasks:
        rival = timer.run(
            "8. the 20x-only rival on pooled stores", console, lambda: _rival(out, config, tables, console)
        )
    timings = record_timings(out, timer)
    if rival is not None:
        write_atomic(out / "results" / "rival.md", _rival_text(out, config, rival, timings))
    console.rule(Text("results", style="bold"))
    if not config.cohort_tables:
        console.print(SYNTHETIC_NOTICE, style="bold yellow", soft_wrap=True)
    console.print((out / "results" / "results.md").read_text(), highlight=False, soft_wrap=True)
    if config.n_boot:
        console.print((out / "results" / "statistics.md").read_text(), highlight=False, soft_wrap=True, markup=False)
    if rival is not None:
        console.print((out / "results" / "rival.md").read_text(), highlight=False, soft_wrap=True, markup=False)
    if not config.cohort_tables:
        console.print(_scale_check(results), soft_wrap=True, highlight=False)
    if outcomes is not None:
        console.print(outcomes.read_text(), highlight=False, soft_wrap=True, markup=False)
    console.print("stage timings: " + timings_line(timings), soft_wrap=True)
    reports = _reports(out, config, timings)
    for path in reports:
        console.print(f"report: {path}")
    console.print(
        f"outputs: {out}/ (results/results.md, results/differences.png, timings.json; cohort, tiles, stores, pretrain"
        + ("; outcomes/outcomes.md" if outcomes is not None else "")
        + ")"
    )
    return 0


def _reports(out: Path, config: DemoConfig, timings: dict) -> list[Path]:
    """One HTML report per task, for the first pretrained-mixer method (else the last method)."""
    method = next((m for m in config.methods if m.startswith("MEM")), config.methods[-1])
    paths = []
    for task in config.cohort_tables or TASKS:
        run = out / "results" / task / method / f"seed{config.seeds[0]}"
        if TrainRun(run).is_complete():
            notice = None if config.cohort_tables else SYNTHETIC_NOTICE
            paths.append(build_report(run, timings, notice=notice))
    return paths


def _generate(out: Path, spec: CohortSpec, console: Console, reused: Callable[[], None] = _nothing) -> dict[str, Path]:
    before = _slide_files(out / "cohort")
    with work_progress(console) as progress:  # the slide count is drawn as the cohort is made: no total
        task = progress.add_task("slides written", total=None, unit="slides")
        tables = write_cohort(out / "cohort", spec, progress=lambda slide: progress.advance(task))
        count = int(progress.tasks[0].completed)
    if _slide_files(out / "cohort") == before and before:
        reused()
    console.print(
        f"{count} slides of {spec.cells}x{spec.cells} cells at {spec.mpp} um/px, {spec.n_specimens} specimens; "
        f"tasks: {', '.join(TASKS)} -> {out / 'cohort'}"
    )
    return tables


def _slide_files(cohort: Path) -> int:
    return sum(1 for _ in (cohort / "slides").glob("*.tiff")) if (cohort / "slides").is_dir() else 0


def _tile(
    out: Path, tables: dict[str, Path], tiling: TilingParams, console: Console, reused: Callable[[], None] = _nothing
) -> list[Path]:
    sources = {s.slide_id: s for table in tables.values() for s in sources_from_table(table)}  # tasks may share slides
    with work_progress(console) as progress:
        task = progress.add_task("slides tiled", total=len(sources), unit="slides")
        results = tile_slides(
            list(sources.values()), out / "tiles", tiling, on_result=lambda result: progress.advance(task)
        )
    failed = [r for r in results if r.outcome == "failed"]
    if failed:
        raise StageError("tiling failed: " + "; ".join(r.error for r in failed))
    regions = sum(len(r.plan.regions) for r in results)
    if results and all(r.outcome == "skipped" for r in results):
        reused()
    console.print(
        f"{len(results)} slides: {sum(r.outcome == 'tiled' for r in results)} tiled, "
        f"{sum(r.outcome == 'skipped' for r in results)} reused; {regions} regions"
    )
    return find_plans(out / "tiles")


def _embed(
    out: Path, config: DemoConfig, plans: list[Path], console: Console, reused: Callable[[], None] = _nothing
) -> None:
    encoder = build_encoder(config.encoder, weights=config.weights)
    with work_progress(console) as progress:
        task = progress.add_task("tiles embedded", total=None, unit="tiles")
        results = run_embed(
            plans,
            out / "stores",
            encoder,
            device=torch.device("cpu"),
            workers=config.workers,
            on_start=lambda n: progress.update(task, total=n),
            on_batch=lambda n: progress.advance(task, n),
        )
    failed = [r for r in results if r.outcome == "failed"]
    if results and all(r.outcome == "skipped" for r in results):
        reused()
    if failed:
        raise StageError("embedding failed: " + "; ".join(r.error or r.slide_id for r in failed))
    console.print(
        f"{len(results)} stores ({sum(r.outcome == 'embedded' for r in results)} embedded, "
        f"{sum(r.outcome == 'skipped' for r in results)} reused), {encoder.dim}-d {config.encoder} embeddings -> "
        f"{out / 'stores'}"
    )


def _pretrain(
    out: Path, config: DemoConfig, tables: dict[str, Path], console: Console, reused: Callable[[], None] = _nothing
) -> Path:
    """MEM on the cohort's stores less every task's test slides: no test slide is seen before evaluation."""
    settings = dict(
        stores=str(out / "stores"),
        out=str(out / "pretrain"),
        workers=0,
        tensorboard=False,
        log_every=50,
        checkpoint_every=100,
        exclude_test_of=[str(t) for t in tables.values()],
    ) | config.pretrain.model_dump(exclude_unset=True)
    cfg = PretrainConfig(**settings)
    run = PretrainRun(cfg.out)
    mixer = run.mixer_weights
    written = run.read_mixer_meta()
    if written is not None:
        space = pretraining_catalog(cfg).shared_settings().space.model_dump()
        if written.pretraining != json.loads(json.dumps(cfg.model_dump())) or written.stores != space:
            console.print(
                f"the pretraining settings or the stores changed since {cfg.out} was written: pretraining again"
            )
            remove_own_tree(cfg.out, "pretraining folder")
    if run.is_complete(cfg.steps):
        console.print(f"reusing {mixer}")
        reused()
        return mixer
    with work_progress(console) as progress:
        task = progress.add_task("pretraining steps", total=cfg.steps, unit="steps")
        last = run_pretraining(
            cfg,
            device=torch.device("cpu"),
            on_log=lambda row: progress.console.print(
                f"step {row['step']:>4}: MEM loss {row['mem']:.3f} (predict-the-mean baseline "
                f"{row['baseline_loss']:.3f})"
            ),
            on_resume=lambda step, ckpt: progress.console.print(
                f"resuming the mixer's pretraining from step {step} ({ckpt})"
            ),
            on_step=lambda step: progress.update(task, completed=step),
        )
    held_out = " (test slides of every task left out)" if cfg.exclude_test_of else ""
    console.print(f"mixer after {last.get('step')} steps -> {mixer}{held_out}")
    return mixer


def pretrained_mixers(out: Path, config: DemoConfig, mixer: Path) -> dict[str, str]:
    """The MEM mixer, and for 'Random-...' methods its architecture with fresh weights (frozen Random baseline)."""
    return pretrained_mixer_set(mixer, config.methods, out / "random-mixer")


def _grid(out: Path, config: DemoConfig, tables: dict[str, Path], mixer: Path) -> GridConfig:
    return GridConfig(
        out=str(out / "results"),
        tasks=[Task(name=task, cohort=str(table), stores=str(out / "stores")) for task, table in tables.items()],
        methods=config.methods,
        seeds=config.seeds,
        pretrained=pretrained_mixers(out, config, mixer),
        train=config.train,
        train_by_method=config.train_by_method,
    )


def _experiment(grid: GridConfig, console: Console, reused: Callable[[], None] = _nothing) -> dict:
    statuses = []
    metric = {t.name: METRIC_NAMES[PRIMARY[t.type]] for t in grid.tasks}
    with work_progress(console) as progress:
        task = progress.add_task(
            "training runs", total=len(grid.tasks) * len(grid.methods) * len(grid.seeds), unit="runs"
        )

        def run_done(t: str, m: str, s: int, value: float, status: str) -> None:
            progress.console.print(f"{t:>6} / {m:<12} seed {s}: test {metric[t]} {value:.3f} ({status})")
            progress.advance(task)
            statuses.append(status)

        results = run_grid(grid, on_run=run_done)
    if statuses and all(s == "reused" for s in statuses):
        reused()
    return results


def _rival(out: Path, config: DemoConfig, tables: dict[str, Path], console: Console) -> dict:
    """The rival tasks on pooled stores (made once beside the real ones), as the embedding benchmark runs them."""
    unknown = [t for t in config.rival_tasks if t not in tables]
    if unknown:
        raise CohortError(f"rival task(s) {', '.join(unknown)} are not among the tasks ({', '.join(tables)})")
    setup = rival_setup(config, tables, out / "stores", out, "abmil-20x")
    return run_rival(
        setup, on_run=lambda t, m, s, auc, status: console.print(f"{t:>6} / {m} (20x-pooled) seed {s}: {auc:.3f}")
    )


def _rival_text(out: Path, config: DemoConfig, rival: dict, timings: dict[str, dict]) -> str:
    """The rival's tables, headed by what embedding only the 20x tiles would have saved in this run's embed stage."""
    embed = next((t["seconds"] for name, t in timings.items() if name.startswith("3. embed")), None)
    saving = embedding_saving(store_paths(out / "stores"), embed)
    words = (
        f"{saving['tiles_not_embedded']:,} of the {saving['tiles']:,} tiles embedded here "
        f"({100 * saving['share']:.0f}%, the 5x and 10x ones) need no encoder pass"
    )
    if saving["saved_seconds"] is not None:
        words += (
            f"; at equal cost per tile that is {saving['saved_seconds']:.0f} s of this run's {embed:.0f} s embedding "
            "stage (wall time, an estimate from the stage timing, not measured per level)"
        )
    return rival_markdown(rival, words, config.seeds, config.rival_methods, config.n_boot, "abmil-20x").lstrip()


def _outcomes(out: Path, config: DemoConfig, mixer: Path, console: Console, reused: Callable[[], None]) -> Path:
    """The outcome tasks on the cohort's own slides and stores (no more tiling or embedding): tables, runs, then
    outcomes/outcomes.md with the table and the scale check."""
    tables = write_outcome_tables(out / "cohort", config.cohort)
    grid = GridConfig(
        out=str(out / "outcomes"),
        tasks=[
            Task(name=task, cohort=str(tables[task]), stores=str(out / "stores"), type=task)
            for task in config.outcome_tasks
        ],
        methods=config.outcome_methods,
        seeds=config.seeds[:1],
        pretrained=pretrained_mixer_set(mixer, config.outcome_methods, out / "random-mixer"),
        train=config.train,
        train_by_method=config.train_by_method,
    )
    results = _experiment(grid, console, reused)
    return write_outcomes(grid, results, config.train.bootstrap)


def _statistics(grid: GridConfig, config: DemoConfig) -> None:
    """Mean ± sd over seeds, bootstrap CI and paired DeLong p per cell, as `mixmag benchmark` reports them."""
    cells = []
    for task in grid.tasks:
        runs = {m: [Path(method_config(grid, task, m, s).out) for s in grid.seeds] for m in grid.methods}
        cells += cell_statistics(task.name, runs, grid.baseline, n_boot=config.n_boot)
    cells = with_false_discovery_rate(cells)
    write_atomic(Path(grid.out) / "statistics.md", statistics_markdown(cells, grid, config.n_boot))


def statistics_markdown(cells: list[CellStatistic], grid: GridConfig, n_boot: int) -> str:
    """One row per method, one column per task: mean ± sd [CI low, high, p]."""
    return statistics_table(cells, [t.name for t in grid.tasks], grid.methods, grid.seeds, n_boot, grid.baseline)


def _scale_check(results: dict) -> str:
    """Is each biomarker seen at the scale it was placed at? (AB-MIL 20x vs 5x)."""
    lines = ["Scale check (test AUROC, AB-MIL):"]
    for task, better, worse in (("fine", "abmil-20x", "abmil-5x"), ("coarse", "abmil-5x", "abmil-20x")):
        if task in results and better in results[task] and worse in results[task]:
            a, b = float(np.mean(results[task][better])), float(np.mean(results[task][worse]))
            verdict = "as placed" if a > b else "NOT as placed"
            lines.append(f"  {task}: {better} {a:.3f} vs {worse} {b:.3f} -> {verdict}")
    return "\n".join(lines)
