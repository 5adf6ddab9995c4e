"""`mixmag benchmark --replicates R`: benchmark v2 replicated R times, with one endpoint registered before any runs.

Why: one benchmark run holds the cohort, the MEM pretraining run and the mixers' random draws fixed, and its seeds
vary only slide-level training, so a difference it finds may be that one cohort's or one pretraining run's. Here
replicate r is a whole `mixmag benchmark` run in `<out>/replicate-<r>/` with its own cohort (generator seed), its own
MEM pretraining (pretraining seed) and its own slide-level training seeds (which also draw the random mixer's
initial weights), all derived from r. The endpoint (the methods compared, the tasks, the estimand and the test) is
written to `endpoint.json` before the first replicate runs, and the analysis refuses to run if it changed. The
analysis is at the replicate level: per replicate, each method's test AUROC averaged over the endpoint's tasks (seeds
averaged within the replicate); per replicate, the paired difference; over replicates, its mean with a t interval,
a one-sample two-sided t-test p, and an exact sign-flip permutation p (all 2^R sign patterns) when R <= 10.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from scipy import stats

from ..errors import ConfigError
from ..fileio import FolderLock, make_folder, read_json_limited, write_atomic, write_csv_atomic, write_json_atomic
from ..markup import markdown_cell, plain_console
from .benchmark import NOTICE, BenchmarkConfig, load_benchmark_config, run_benchmark

ENDPOINT_FILE = "endpoint.json"
REPLICATE_RECORD = "replicate.json"
MIN_REPLICATES = 2  # a t interval needs two; the design asks for at least 5
MAX_REPLICATES = 1000
MAX_SIGN_FLIP = 10  # 2^10 sign patterns: exact, and cheap

ESTIMAND = (
    "the mean over replicates of the paired difference (method minus comparator) in test AUROC, where a replicate's "
    "AUROC of a method is its per-seed test AUROC averaged over the replicate's seeds and then over the endpoint's "
    "tasks; each replicate is a fresh cohort, a fresh MEM pretraining run and fresh slide-level training seeds"
)
TEST = (
    "one-sample two-sided t-test of the R per-replicate differences against 0 (scipy.stats.ttest_1samp), with a "
    "t interval over replicates; an exact sign-flip permutation p over all 2^R sign patterns is reported beside it "
    "when R <= 10 (its smallest possible two-sided value is 2 / 2^R)"
)

# The built-in replicate protocol: the benchmark's defaults with the paper's jointly fine-tuned rows (MEM-patch: the
# pretrained mixer fine-tuned with AB-MIL, frozen for 1 epoch, then layer-wise lr decay 0.75; random-patch: the same
# architecture from a fresh random init, seeded by each run's training seed) beside AB-MIL 20x, and no attribution.
# One training seed per replicate: the replicate-level interval already holds training-seed variance (every replicate
# has its own seed), and three seeds a replicate tripled the cost of the jointly fine-tuned rows for no new estimand.
REPLICATE_DEFAULTS = {
    "out": "replicates_out",
    "seeds": [0],
    "methods": ["abmil-20x", "random-patch", "MEM-patch"],
    "pairs": [("MEM-patch", "random-patch")],
    "attribution_methods": [],
}


class Endpoint(BaseModel):
    """What the replicates are run to estimate, fixed before any of them runs (`endpoint.json`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = "MEM-patch"
    against: list[str] = Field(default_factory=lambda: ["abmil-20x", "random-patch"])
    tasks: list[str]
    replicates: int = Field(ge=MIN_REPLICATES, le=MAX_REPLICATES)
    metric: str = "test AUROC (seeds averaged within a replicate, then tasks averaged)"
    estimand: str = ESTIMAND
    test: str = TEST
    alpha: float = 0.05
    protocol: dict = Field(description="the benchmark config each replicate runs (less out and the derived seeds)")


def replicate_defaults(out: Path | None = None) -> BenchmarkConfig:
    config = BenchmarkConfig(**REPLICATE_DEFAULTS)
    return config if out is None else config.model_copy(update={"out": str(out)})


def load_replicates_config(path: Path | None, out: Path | None = None) -> BenchmarkConfig:
    """The given benchmark config, or (none given) the built-in replicate protocol."""
    return replicate_defaults(out) if path is None else load_benchmark_config(path, out)


def make_endpoint(
    config: BenchmarkConfig, replicates: int, method: str | None = None, against: list[str] | None = None
) -> Endpoint:
    """The endpoint of these replicates: `method` (MEM-patch) against `against` (AB-MIL 20x and random-patch) over
    the config's tasks."""
    if not MIN_REPLICATES <= replicates <= MAX_REPLICATES:
        raise ConfigError(
            f"--replicates {replicates}: give {MIN_REPLICATES} to {MAX_REPLICATES} (the design asks for at least 5)"
        )
    protocol = config.model_dump(mode="json", exclude={"out"})
    endpoint = Endpoint(tasks=list(config.tasks), replicates=replicates, protocol=protocol)
    if method is not None or against is not None:
        endpoint = endpoint.model_copy(
            update={"method": method or endpoint.method, "against": list(against or endpoint.against)}
        )
    missing = [m for m in [endpoint.method, *endpoint.against] if m not in config.methods]
    if missing:
        raise ConfigError(
            f"the replicate endpoint compares {endpoint.method} with {', '.join(endpoint.against)}, but the config's "
            f"methods ({', '.join(config.methods)}) lack {', '.join(missing)}: add them to `methods`"
        )
    return endpoint


def register_endpoint(out: Path, endpoint: BaseModel) -> None:
    """Write endpoint.json the first time; afterwards refuse an endpoint that differs from the registered one."""
    path = out / ENDPOINT_FILE
    if not path.exists():
        write_json_atomic(path, endpoint.model_dump(mode="json"))
        return
    registered = read_json_limited(path, what="registered endpoint")
    wanted = endpoint.model_dump(mode="json")
    if registered != wanted:
        changed = sorted(
            k
            for k in set(wanted) | set(registered if isinstance(registered, dict) else {})
            if not isinstance(registered, dict) or registered.get(k) != wanted.get(k)
        )
        raise ConfigError(
            f"{path}: the endpoint registered before these replicates ran differs from this run's in "
            f"{', '.join(changed)}; a pre-registered endpoint cannot change after the fact: use a new --out folder "
            "for a new endpoint"
        )


class Replicable(Protocol):
    """What replicate_config derives from: the benchmark's, the label-efficiency and the design-space configs."""

    out: str
    cohort: dict
    cohort_by_task: dict[str, dict]
    pretrain: dict
    seeds: list[int]

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Self: ...


C = TypeVar("C", bound=Replicable)


def replicate_config(config: C, r: int) -> C:
    """Replicate r: its own folder, cohort seed (the config's + r; a task's own seed too), pretraining seed (the
    config's + r) and training seeds (each configured seed + r * (the largest + 1): 3r, 3r+1, 3r+2 for 0, 1, 2), so no
    two replicates share a cohort, a pretraining run or a training seed (and so a random mixer's init). One function
    for every study whose config has these fields, so that a replicate means the same in each."""
    stride = max(config.seeds) + 1
    by_task = {
        task: spec | ({"seed": spec["seed"] + r} if "seed" in spec else {})
        for task, spec in config.cohort_by_task.items()
    }
    return config.model_copy(
        update={
            "out": str(Path(config.out) / f"replicate-{r}"),
            "cohort": config.cohort | {"seed": config.cohort.get("seed", 0) + r},
            "cohort_by_task": by_task,
            "pretrain": config.pretrain | {"seed": config.pretrain.get("seed", 0) + r},
            "seeds": [s + r * stride for s in config.seeds],
        }
    )


def run_or_reuse_replicate(
    rc, r: int, title: str, finished: Callable[[dict], bool], run: Callable[[], dict], console: Console
) -> dict:
    """Replicate r of a study (`rc`: its derived config): its record, reused when a finished one matches the config
    and `finished` accepts it; else `run()` gives the record's measured fields and the record is written last, so a
    replicate without it is not finished."""
    record_path = Path(rc.out) / REPLICATE_RECORD
    wanted = rc.model_dump(mode="json")
    if record_path.is_file():
        record = read_json_limited(record_path, what="replicate record")
        if isinstance(record, dict) and record.get("config") == wanted and finished(record):
            console.print(f"reusing replicate {r} ({record_path})")
            return record
    console.rule(title)
    cpu = time.process_time()
    measured = run()
    cpu = time.process_time() - cpu  # this process's threads, all stages: a cost figure that load does not inflate
    record = {
        "replicate": r,
        "cohort_seed": rc.cohort["seed"],
        "pretrain_seed": rc.pretrain["seed"],
        "seeds": rc.seeds,
        "config": wanted,
        **measured,
        "cpu_seconds": round(cpu, 1),
    }
    write_json_atomic(record_path, record)
    return record


def _run_replicate(config: BenchmarkConfig, r: int, endpoint: Endpoint, console: Console) -> dict:
    """One replicate's per-seed test AUROCs {task: {method: [...]}} (and the rival's), reused when finished."""
    rc = replicate_config(config, r)

    def finished(record: dict) -> bool:
        rival_recorded = not config.rival_tasks or isinstance(record.get("rival_aurocs"), dict)
        return _covers(record.get("aurocs"), endpoint) and rival_recorded

    def run() -> dict:
        result = run_benchmark(rc, console=console)
        return {
            "aurocs": _per_seed_aurocs(result["cells"]),
            "rival_aurocs": _per_seed_aurocs(result.get("rival", {}).get("cells", [])),
            "timings": result["timings"],
        }

    return run_or_reuse_replicate(rc, r, f"replicate {r + 1} of {endpoint.replicates}", finished, run, console)


def _per_seed_aurocs(cells) -> dict[str, dict[str, list[float]]]:
    """{task: {method: per-seed test AUROCs}} of a benchmark's statistics cells."""
    aurocs: dict[str, dict[str, list[float]]] = {}
    for cell in cells:
        aurocs.setdefault(cell.task, {})[cell.method] = [float(a) for a in cell.seeds]
    return aurocs


def _covers(aurocs, endpoint: Endpoint) -> bool:
    methods = [endpoint.method, *endpoint.against]
    return isinstance(aurocs, dict) and all(
        isinstance(aurocs.get(t), dict) and all(isinstance(aurocs[t].get(m), list) for m in methods)
        for t in endpoint.tasks
    )


def replicate_auroc(aurocs: dict[str, dict[str, list[float]]], method: str, tasks: list[str]) -> float:
    """A replicate's AUROC of a method: per task the mean over seeds, then the mean over tasks."""
    return float(np.mean([np.mean(aurocs[task][method]) for task in tasks]))


@dataclass(frozen=True)
class ReplicateComparison:
    method: str
    against: str
    differences: tuple[float, ...]  # one per replicate, in replicate order
    mean: float
    sd: float
    low: float
    high: float
    t_p: float
    sign_flip_p: float | None  # None when R > MAX_SIGN_FLIP


def comparison_record(c: ReplicateComparison) -> dict:
    """A comparison as the studies' JSON outputs write it."""
    return {
        "method": c.method,
        "against": c.against,
        "mean_difference": c.mean,
        "sd": c.sd,
        "ci_low": c.low,
        "ci_high": c.high,
        "t_test_p": c.t_p,
        "sign_flip_p": c.sign_flip_p,
        "differences": list(c.differences),
    }


def sign_flip_p(differences: list[float] | np.ndarray) -> float:
    """Exact two-sided sign-flip permutation p: the share of the 2^R sign patterns whose |mean| is at least the
    observed |mean| (the observed pattern included)."""
    d = np.asarray(differences, dtype=np.float64)
    observed = abs(d.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    flipped = np.abs((signs * d).mean(axis=1))
    return float(np.mean(flipped >= observed - 1e-12 * max(1.0, observed)))


def compare_replicates(
    method: str, against: str, a: list[float], b: list[float], alpha: float = 0.05
) -> ReplicateComparison:
    """Mean paired difference a - b over replicates, its (1 - alpha) t interval, t-test p and sign-flip p."""
    if len(a) != len(b) or len(a) < MIN_REPLICATES:
        raise ValueError(f"need the same number (at least {MIN_REPLICATES}) of replicates, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean, sd, r = float(d.mean()), float(d.std(ddof=1)), len(d)
    if sd == 0:  # no spread: the interval is the point and the test is degenerate
        low = high = mean
        t_p = 1.0 if mean == 0 else 0.0
    else:
        half = float(stats.t.ppf(1 - alpha / 2, r - 1)) * sd / math.sqrt(r)
        low, high = mean - half, mean + half
        t_p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return ReplicateComparison(
        method=method,
        against=against,
        differences=tuple(float(x) for x in d),
        mean=mean,
        sd=sd,
        low=low,
        high=high,
        t_p=t_p,
        sign_flip_p=sign_flip_p(d) if r <= MAX_SIGN_FLIP else None,
    )


def analyse(records: list[dict], endpoint: Endpoint) -> tuple[dict[str, list[float]], list[ReplicateComparison]]:
    """Per method, its AUROC in each replicate; and the endpoint's comparisons over replicates."""
    methods = [endpoint.method, *endpoint.against]
    per_method = {m: [replicate_auroc(rec["aurocs"], m, endpoint.tasks) for rec in records] for m in methods}
    comparisons = [
        compare_replicates(endpoint.method, b, per_method[endpoint.method], per_method[b], endpoint.alpha)
        for b in endpoint.against
    ]
    return per_method, comparisons


def per_task_comparisons(records: list[dict], endpoint: Endpoint) -> dict[str, list[ReplicateComparison]]:
    """Where the endpoint's difference comes from: the same comparisons task by task (seeds averaged within a
    replicate). Secondary to the task-averaged endpoint, and not adjusted for the tasks' multiplicity."""
    return {
        task: [
            compare_replicates(
                endpoint.method,
                b,
                [replicate_auroc(rec["aurocs"], endpoint.method, [task]) for rec in records],
                [replicate_auroc(rec["aurocs"], b, [task]) for rec in records],
                endpoint.alpha,
            )
            for b in endpoint.against
        ]
        for task in endpoint.tasks
    }


def rival_comparisons(records: list[dict], endpoint: Endpoint) -> list[ReplicateComparison]:
    """Against the 20x-only rival (the protocol's `rival_tasks`; secondary): the endpoint's method minus each rival
    method on the pooled stores, and each rival method on the real stores minus itself on the pooled ones, over
    the rival tasks. Empty when the protocol has no rival."""
    tasks = list(endpoint.protocol.get("rival_tasks") or [])
    if not tasks:
        return []
    methods = list(endpoint.protocol.get("rival_methods") or [])
    real_methods = list(endpoint.protocol.get("methods") or [])
    pooled = {m: [replicate_auroc(rec["rival_aurocs"], m, tasks) for rec in records] for m in methods}
    method = [replicate_auroc(rec["aurocs"], endpoint.method, tasks) for rec in records]
    out = [compare_replicates(endpoint.method, f"{m} (20x-pooled)", method, pooled[m], endpoint.alpha) for m in methods]
    out += [
        compare_replicates(
            m, f"{m} (20x-pooled)", [replicate_auroc(rec["aurocs"], m, tasks) for rec in records], pooled[m]
        )
        for m in methods
        if m in real_methods
    ]
    return out


def check_registered(out: Path, endpoint: BaseModel) -> None:
    """The analysis runs only on the endpoint registered before the replicates: refuse it if the file changed."""
    path = out / ENDPOINT_FILE
    if not path.is_file() or read_json_limited(path, what="registered endpoint") != endpoint.model_dump(mode="json"):
        raise ConfigError(
            f"{path}: the registered endpoint is missing or changed since the replicates started; the analysis "
            "runs only on the endpoint registered before them: rerun in a new --out folder"
        )


def _secondary_row(c: ReplicateComparison) -> str:
    """A secondary comparison's cells: difference, mean, t interval, t-test p, replicates above 0."""
    return (
        f"| {markdown_cell(c.method)} - {markdown_cell(c.against)} | {100 * c.mean:+.2f} | "
        f"{100 * c.low:+.2f} to {100 * c.high:+.2f} | {c.t_p:.3g} | "
        f"{sum(d > 0 for d in c.differences)} of {len(c.differences)} |"
    )


def replicates_markdown(
    records: list[dict], per_method: dict[str, list[float]], comparisons: list[ReplicateComparison], endpoint: Endpoint
) -> str:
    level = 100 * (1 - endpoint.alpha)
    lines = [
        NOTICE,
        "",
        f"Pre-registered endpoint ({ENDPOINT_FILE}): {endpoint.method} minus each of {', '.join(endpoint.against)}, "
        f"{endpoint.metric}, over the tasks {', '.join(endpoint.tasks)}, in {len(records)} replicates.",
        f"Estimand: {endpoint.estimand}.",
        f"Test: {endpoint.test}.",
        "",
        f"| difference | AUROC difference x 100 (mean over replicates) | {level:.0f}% t interval | sd over replicates "
        "| t-test p | sign-flip p | replicates above 0 |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for c in comparisons:
        flip = "n/a (R > 10)" if c.sign_flip_p is None else f"{c.sign_flip_p:.3g}"
        lines.append(
            f"| {markdown_cell(c.method)} - {markdown_cell(c.against)} | {100 * c.mean:+.2f} | "
            f"{100 * c.low:+.2f} to {100 * c.high:+.2f} | {100 * c.sd:.2f} | {c.t_p:.3g} | {flip} | "
            f"{sum(d > 0 for d in c.differences)} of {len(c.differences)} |"
        )
    if len(endpoint.tasks) > 1:
        lines += [
            "",
            "By task (secondary: the same comparisons within each task, seeds averaged within a replicate; not "
            "adjusted for the number of tasks):",
            "",
            f"| task | difference | mean over replicates | {level:.0f}% t interval | t-test p | replicates above 0 |",
            "|---|---|---:|---|---:|---:|",
        ]
        for task, task_comparisons in per_task_comparisons(records, endpoint).items():
            lines += [f"| {markdown_cell(task)} {_secondary_row(c)}" for c in task_comparisons]
    rival = rival_comparisons(records, endpoint)
    if rival:
        lines += [
            "",
            "Against the 20x-only rival (secondary: 5x and 10x tokens pooled from the 20x tiles, over the tasks "
            f"{', '.join(endpoint.protocol['rival_tasks'])}):",
            "",
            f"| difference | mean over replicates | {level:.0f}% t interval | t-test p | replicates above 0 |",
            "|---|---:|---|---:|---:|",
        ]
        lines += [_secondary_row(c) for c in rival]
    methods = list(per_method)
    lines += ["", "Per replicate (task-averaged test AUROC x 100):", ""]
    lines.append(
        "| replicate | cohort seed | pretraining seed | training seeds | "
        + " | ".join(markdown_cell(m) for m in methods)
        + " | CPU s |"
    )
    lines.append("|---:|---:|---:|---|" + "---:|" * len(methods) + "---:|")
    for k, rec in enumerate(records):
        cells = " | ".join(f"{100 * per_method[m][k]:.2f}" for m in methods)
        seeds = ", ".join(str(s) for s in rec["seeds"])
        lines.append(
            f"| {rec['replicate']} | {rec['cohort_seed']} | {rec['pretrain_seed']} | {seeds} | {cells} | "
            f"{rec.get('cpu_seconds', float('nan')):.0f} |"
        )
    return "\n".join(lines) + "\n"


def _write_outputs(out: Path, records, per_method, comparisons, endpoint) -> str:
    methods = list(per_method)
    write_csv_atomic(
        out / "replicates.csv",
        ["replicate", "cohort_seed", "pretrain_seed", "seeds"]
        + [f"auroc_{m}" for m in methods]
        + [f"difference_{c.method}_minus_{c.against}" for c in comparisons],
        [
            [rec["replicate"], rec["cohort_seed"], rec["pretrain_seed"], ";".join(map(str, rec["seeds"]))]
            + [f"{per_method[m][k]:.6f}" for m in methods]
            + [f"{c.differences[k]:.6f}" for c in comparisons]
            for k, rec in enumerate(records)
        ],
    )
    write_json_atomic(
        out / "replicates.json",
        {
            "endpoint": ENDPOINT_FILE,
            "replicates": len(records),
            "comparisons": [comparison_record(c) for c in comparisons],
            "rival": [comparison_record(c) for c in rival_comparisons(records, endpoint)],
            "by_task": {
                task: [comparison_record(c) for c in task_comparisons]
                for task, task_comparisons in per_task_comparisons(records, endpoint).items()
            },
        },
    )
    text = replicates_markdown(records, per_method, comparisons, endpoint)
    write_atomic(out / "replicates.md", text)
    return text


def run_replicates(
    config: BenchmarkConfig, replicates: int, console: Console | None = None, endpoint: Endpoint | None = None
) -> dict:
    """Register the endpoint (by default MEM-patch against AB-MIL 20x and random-patch), run (or reuse) every
    replicate, then analyse at the replicate level."""
    console = console or plain_console()
    out = Path(config.out)
    endpoint = endpoint or make_endpoint(config, replicates)
    make_folder(out)
    with FolderLock(out, "running benchmark replicates"):
        register_endpoint(out, endpoint)  # before any replicate runs
        records = [_run_replicate(config, r, endpoint, console) for r in range(replicates)]
        check_registered(out, endpoint)
        per_method, comparisons = analyse(records, endpoint)
        text = _write_outputs(out, records, per_method, comparisons, endpoint)
    console.rule("benchmark replicates")
    console.print(text, highlight=False, soft_wrap=True, markup=False)
    return {"records": records, "per_method": per_method, "comparisons": comparisons, "endpoint": endpoint}
