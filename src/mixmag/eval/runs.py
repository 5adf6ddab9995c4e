"""Reading run folders back: metrics from saved predictions, and paired comparisons."""

from __future__ import annotations

from pathlib import Path

from ..errors import MixmagError
from ..metrics import DeLongResult, bootstrap_auroc, delong_test
from ..runs import TrainRun


def read_predictions(run: str | Path, split: str) -> dict[str, tuple[int, float]]:
    return TrainRun(run).read_scores(split)


def evaluate_run(run: str | Path, n_boot: int | None = None) -> dict:
    folder = TrainRun(run)
    config = folder.read_config()
    metrics = folder.read_metrics()
    out = {"best_epoch": metrics.get("best_epoch")}
    for split in ("tune", "test"):
        preds = read_predictions(run, split)
        labels = [v[0] for v in preds.values()]
        ci = bootstrap_auroc(
            labels,
            [v[1] for v in preds.values()],
            n_boot=n_boot or config.get("bootstrap", 2000),
            seed=config.get("seed", 0),
        )
        out[split] = {"auroc": ci.auroc, "ci95": [ci.low, ci.high], "specimens": len(labels), "positive": sum(labels)}
    return out


def compare_runs(run_a: str | Path, run_b: str | Path, split: str = "test") -> DeLongResult:
    a, b = read_predictions(run_a, split), read_predictions(run_b, split)
    if set(a) != set(b):
        raise MixmagError(
            f"{run_a} and {run_b} were evaluated on different {split} specimens; a paired test needs the same ones"
        )
    specimens = sorted(a)
    if any(a[s][0] != b[s][0] for s in specimens):
        raise MixmagError(f"{run_a} and {run_b} disagree on labels; were they trained on the same cohort table?")
    return delong_test([a[s][0] for s in specimens], [a[s][1] for s in specimens], [b[s][1] for s in specimens])
