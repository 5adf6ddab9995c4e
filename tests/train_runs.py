"""Small `mixmag train` runs for the tests: one config factory with the settings most tests train with, and one for a
learnable benchmark task, so that each test file names only what it changes."""

from __future__ import annotations

import csv
from pathlib import Path

from mixmag.synth.benchmark import BenchmarkSpec, write_benchmark_cohort
from mixmag.train.classifier import SlideClassifier
from mixmag.train.finetune import TrainConfig

SMALL_RUN = dict(bags="20x", epochs=2, batch_size=8, lr=3e-3, bootstrap=100)  # a few seconds on a synthetic cohort
LEARNT_RUN = dict(bags="all", epochs=20, batch_size=16, lr=5e-3, bootstrap=100)  # enough to learn a benchmark task


def train_config(folder: Path, out: Path, **settings) -> TrainConfig:
    """A small run over the synthetic cohort in `folder` (its cohort.csv and stores/); `settings` override any field."""
    where = dict(cohort=str(folder / "cohort.csv"), stores=str(folder / "stores"), out=str(out))
    return TrainConfig(**(where | SMALL_RUN | settings))


def learnt_task_config(folder: Path, task: str, out: Path, **settings) -> TrainConfig:
    """A benchmark task made easy to learn (80 specimens, strong signal, no label noise) in `folder`, trained on all
    levels as the benchmark's AB-MIL all x: a model whose attribution means something."""
    table = write_benchmark_cohort(folder, BenchmarkSpec(task, n_specimens=80, signal=2.0, label_noise=0.0, seed=0))
    return train_config(folder, out, **(LEARNT_RUN | {"cohort": str(table)} | settings))


def reloaded(run: Path, stores: Path) -> tuple[SlideClassifier, dict]:
    """The run's model loaded and pointed at the stores in `stores`, with the written test row of a one-slide specimen
    (to compare the reloaded model's score with)."""
    model = SlideClassifier.load(run)
    model.use_stores({p.stem: p for p in sorted(stores.glob("*.h5"))})
    with open(run / "predictions_test.csv", newline="") as f:
        return model, next(r for r in csv.DictReader(f) if ";" not in r["slides"])
