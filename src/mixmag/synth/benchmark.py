"""Benchmark v2 at the embedding level: multi-scale tasks hard enough that methods spread out.

Every slide is a `synthetic_store` (smooth tissue latents seen through one fixed projection per level)
cut into non-overlapping 3x3 regions. A positive slide carries its biomarker in a minority of its regions
(by default 1 of 4), weakly and with a strength that varies between slides (`signal_spread`: some positives
are barely marked), and a share of labels is flipped (label noise), so that no method reaches the ceiling.
The tasks put the biomarker at a known scale:

- fine: a direction added to some 20x tile embeddings of the signal regions (nothing at 5x or 10x);
- coarse: a direction added to the 5x embeddings of the signal regions (nothing at 10x or 20x);
- cross: both in the same region; negative slides carry decoys, the 20x part in one region and the 5x
  part in another, so each scale alone says little and only their co-occurrence in a region tells;
- context: positive and negative slides carry the same 20x content (the same number of marked 20x
  tiles), arranged as a pattern across each 5x cell in positives (the left half of every cell) and at
  random in negatives: no single embedding differs, only the arrangement within the 5x field.

What this skips compared with `synth.cohort` (slides in the loop): pixels, tissue detection, tiling and
the encoder. The embeddings are built, not computed from images, so the benchmark measures what the
slide-level models make of a known embedding-level signal, not how an encoder sees a pixel pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fileio import write_csv_atomic
from ..store import SlideStore, write_store
from .stores import synthetic_store

TASKS = ("fine", "coarse", "cross", "context")
TASK_SCALE = {"fine": "20x", "coarse": "5x"}  # where the signal is, for the attribution check


@dataclass(frozen=True)
class BenchmarkSpec:
    """One task's cohort. signal: the added direction's length relative to an embedding's typical norm."""

    task: str
    n_specimens: int = 400
    dim: int = 32
    cells: int = 6  # slides are cells x cells; with t = 3 that is (cells / 3)^2 regions
    signal_regions: int = 1  # regions carrying the biomarker in a positive slide
    signal: float = 0.6
    signal_spread: float = 0.0  # each marked slide's strength is signal x U(1 - spread, 1 + spread)
    tile_fraction: float = 0.5  # share of a signal region's 20x tiles marked (fine, cross, context)
    label_noise: float = 0.1  # share of specimens whose label is flipped
    decoy_rate: float = 0.7  # cross / context: share of negative slides with decoys
    split: tuple[float, float, float] = (0.5, 0.15, 0.35)
    seed: int = 0
    structure: float = 1.0  # 1: tiles predictable from parents, children, neighbours; 0: independent (synth.stores)
    # slides per specimen: a positive specimen's biomarker is on one of its slides (drawn), the others are drawn as a
    # negative specimen's slides (decoys included), so the slide that explains the label is unknown (eq. 9's setting)
    slides_per_specimen: int = 1

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown benchmark task {self.task!r}; tasks: {', '.join(TASKS)}")
        if not (1 <= self.n_specimens <= 100_000 and 1 <= self.dim <= 16_384 and self.cells <= 300):
            raise ConfigError(
                f"n_specimens {self.n_specimens}, dim {self.dim}, cells {self.cells}: a benchmark cohort takes "
                "1-100,000 specimens, 1-16,384 dimensions and at most 300 cells a side"
            )
        if self.cells % 3 or self.cells < 3:
            raise ConfigError(f"cells must be a positive multiple of the region size 3, got {self.cells}")
        if not 0 <= self.structure <= 1:
            raise ConfigError(f"structure must be between 0 and 1, got {self.structure}")
        if not 1 <= self.slides_per_specimen <= 20:
            raise ConfigError(f"slides_per_specimen must be between 1 and 20, got {self.slides_per_specimen}")
        if not 0 <= self.signal_spread <= 1:
            raise ConfigError(f"signal_spread must be between 0 and 1, got {self.signal_spread}")
        if not 0 < self.signal_regions <= (self.cells // 3) ** 2:
            raise ConfigError(
                f"signal_regions {self.signal_regions} must be between 1 and the {(self.cells // 3) ** 2} regions of a "
                "slide"
            )


def _directions(dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(10_000 + seed)
    fine, coarse = rng.normal(size=(2, dim))
    return fine / np.linalg.norm(fine), coarse / np.linalg.norm(coarse)


def _cells_of(region: tuple[int, int], cells: int) -> np.ndarray:
    r, c = region
    return np.array([(r + i) * cells + (c + j) for i in range(3) for j in range(3)])


def _mark_fine(
    store: SlideStore,
    cell_ids: np.ndarray,
    direction: np.ndarray,
    amount: float,
    fraction: float,
    rng: np.random.Generator,
    pattern: bool | None = None,
) -> None:
    """Add `direction` to a share of the 20x tiles of these cells. pattern True: the tiles in the left
    half of each cell (the same count per cell); False: the same count at random places; None: random."""
    emb = store.embeddings["20x"]  # (N, 16, D), sub-tiles row-major
    per_cell = emb.shape[1]
    n = max(1, round(fraction * per_cell))
    left = np.array([k for k in range(per_cell) if k % 4 < 2])
    if pattern is False and not 0 < n < per_cell:  # one arrangement only: "not the pattern" cannot be drawn
        raise ValueError(
            f"a decoy arrangement of {n} of {per_cell} tiles per cell would always be the pattern; "
            "use a level with more tiles per cell or a fraction below 1"
        )
    for cell in cell_ids:
        tiles = left[:n] if pattern else rng.choice(per_cell, size=n, replace=False)
        if pattern is False:  # a random arrangement that is not the pattern
            while set(tiles.tolist()) == set(left[:n].tolist()):
                tiles = rng.choice(per_cell, size=n, replace=False)
        emb[cell, tiles] += amount * direction


def _mark_coarse(store: SlideStore, cell_ids: np.ndarray, direction: np.ndarray, amount: float) -> None:
    store.embeddings["5x"][cell_ids, 0] += amount * direction


def benchmark_slide(spec: BenchmarkSpec, slide_id: str, positive: bool, rng: np.random.Generator) -> SlideStore:
    """One slide of the task: the background store plus the biomarker (or decoys) in chosen regions."""
    store, regions, scale = _background(spec, slide_id, rng)
    amount = spec.signal * scale
    if spec.signal_spread:  # drawn for every slide: later slides do not depend on this one's label
        amount *= 1 + spec.signal_spread * (2 * rng.random() - 1)
    fine, coarse = _directions(spec.dim, spec.seed)
    order = rng.permutation(len(regions))
    chosen = [_cells_of(regions[k], spec.cells) for k in order[: spec.signal_regions]]
    others = [_cells_of(regions[k], spec.cells) for k in order[spec.signal_regions :]]
    decoy = not positive and rng.random() < spec.decoy_rate
    if spec.task == "fine" and positive:
        for cells in chosen:
            _mark_fine(store, cells, fine, amount, spec.tile_fraction, rng)
    elif spec.task == "coarse" and positive:
        for cells in chosen:
            _mark_coarse(store, cells, coarse, amount)
    elif spec.task == "cross" and (positive or decoy):
        for k, cells in enumerate(chosen):
            _mark_fine(store, cells, fine, amount, spec.tile_fraction, rng)
            # positives: both parts in the same region; decoys: the 5x part in another region
            _mark_coarse(store, cells if positive or not others else others[k % len(others)], coarse, amount)
    elif spec.task == "context" and (positive or decoy):
        for cells in chosen:
            _mark_fine(store, cells, fine, amount, spec.tile_fraction, rng, pattern=positive)
    store.embeddings = {k: v.astype(np.float16) for k, v in store.embeddings.items()}
    return store


def _background(spec, slide_id: str, rng: np.random.Generator) -> tuple[SlideStore, list[tuple[int, int]], float]:
    """A task's background store cut into non-overlapping regions, and an embedding's typical norm."""
    store = synthetic_store(
        slide_id,
        n_rows=spec.cells,
        n_cols=spec.cells,
        dim=spec.dim,
        seed=int(rng.integers(1 << 31)),
        structure=spec.structure,
    )
    regions = [(r, c) for r in range(0, spec.cells, 3) for c in range(0, spec.cells, 3)]
    store.windows = {"regions": np.array(regions, np.int32)}
    return store, regions, float(np.median(np.linalg.norm(store.embeddings["20x"], axis=-1)))


def write_benchmark_cohort(folder: str | Path, spec: BenchmarkSpec, stores: str | Path | None = None) -> Path:
    """Stores (in `stores`, default folder/stores; slide ids start with the task name so tasks can share a
    folder) and folder/<task>.csv with stratified splits, one row per slide. Returns the table's path."""
    folder = Path(folder)
    stores_dir = Path(stores) if stores is not None else folder / "stores"
    rng = np.random.default_rng(spec.seed * 7919 + TASKS.index(spec.task))
    n = spec.n_specimens
    truth = np.array([k % 2 for k in range(n)])
    flipped = rng.random(n) < spec.label_noise
    labels = np.where(flipped, 1 - truth, truth)
    splits = _stratified_splits(labels, spec.split, rng)
    carriers = _carriers(spec, n, 7919)
    rows = []
    for k in range(n):
        specimen = f"{spec.task}-P{k:04d}"
        for j in range(spec.slides_per_specimen):
            slide = f"{specimen}-S{j}"
            positive = bool(truth[k]) and j == carriers[k]
            write_store(stores_dir / f"{slide}.h5", benchmark_slide(spec, slide, positive, rng))
            rows.append((specimen, slide, int(labels[k]), splits[k], str((stores_dir / f"{slide}.h5").resolve())))
    path = folder / f"{spec.task}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_csv_atomic(path, ["specimen", "slide", "label", "split", "store"], rows)


def _carriers(spec: BenchmarkSpec, n: int, salt: int) -> np.ndarray:
    """Which slide of each specimen carries a positive's biomarker; drawn apart from the slides' generator, so a
    cohort of one slide per specimen is the one it always was."""
    if spec.slides_per_specimen == 1:
        return np.zeros(n, np.int64)
    return np.random.default_rng([spec.seed, salt, TASKS.index(spec.task)]).integers(0, spec.slides_per_specimen, n)


def write_unlabelled_slides(stores: str | Path, spec: BenchmarkSpec, n_specimens: int) -> list[Path]:
    """An unlabelled pool for pretraining: `n_specimens` more specimens of the task's distribution (half of them
    positive, as in the labelled cohort), their slides `<task>-U<k>-S<j>` in `stores`, with no table: no label of
    theirs is ever read. Drawn from a generator of their own, so they share no slide with the labelled cohort."""
    stores = Path(stores)
    rng = np.random.default_rng([spec.seed, 104_729, TASKS.index(spec.task)])
    carriers = _carriers(spec, n_specimens, 104_729)
    paths = []
    for k in range(n_specimens):
        for j in range(spec.slides_per_specimen):
            slide = f"{spec.task}-U{k:04d}-S{j}"
            positive = k % 2 == 1 and j == carriers[k]
            paths.append(write_store(stores / f"{slide}.h5", benchmark_slide(spec, slide, positive, rng)))
    return paths


def _stratified_splits(
    labels: np.ndarray, fractions: tuple[float, float, float], rng: np.random.Generator
) -> list[str]:
    out = [""] * len(labels)
    for value in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == value))
        n_train = round(fractions[0] * len(idx))
        n_tune = max(1, round(fractions[1] * len(idx)))
        for j, i in enumerate(idx):
            out[i] = "train" if j < n_train else "tune" if j < n_train + n_tune else "test"
    return out


# -- outcome tasks: multiclass, survival and regression targets with known answers (task types, docs/method.md) -------

OUTCOME_TASKS = ("survival", "multiclass", "regression")
SCALES = ("5x", "10x", "20x")


@dataclass(frozen=True)
class OutcomeSpec:
    """A cohort whose target depends on a biomarker at a known scale (slides as in `BenchmarkSpec`).

    Every specimen has a biomarker strength u ~ U(0, 1): its slide carries the scale's direction with length
    signal x u x (an embedding's typical norm) in `signal_regions` regions. survival: the hazard is
    exp(log(hazard_ratio) u) (exponential times) with independent exponential censoring of about `censoring` of the
    specimens; regression: target = 10 u + noise; multiclass: the class is the scale that carries the biomarker
    (one class per scale, `scale` is then unused), u ~ U(0.5, 1).
    """

    task: str
    scale: str = "20x"
    n_specimens: int = 200
    dim: int = 32
    cells: int = 6
    signal_regions: int = 1
    signal: float = 3.0
    tile_fraction: float = 0.5
    hazard_ratio: float = 100.0
    censoring: float = 0.3
    noise: float = 0.5
    split: tuple[float, float, float] = (0.5, 0.2, 0.3)
    seed: int = 0
    structure: float = 1.0  # the background stores' structure (as BenchmarkSpec's; 1: the generator as it always was)

    def __post_init__(self) -> None:
        if self.task not in OUTCOME_TASKS:
            raise ConfigError(f"unknown outcome task {self.task!r}; tasks: {', '.join(OUTCOME_TASKS)}")
        if self.scale not in SCALES:
            raise ConfigError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if not 0 <= self.censoring < 1:
            raise ConfigError(f"censoring must be in [0, 1), got {self.censoring}")

    @property
    def name(self) -> str:
        return self.task if self.task == "multiclass" else f"{self.task}-{self.scale}"


def mark_scale(store: SlideStore, cells: np.ndarray, scale: str, amount: float, spec, rng: np.random.Generator) -> None:
    """Add the scale's own direction to the signal cells: a share of the 20x tiles, every 10x tile, the 5x tile."""
    fine, coarse = _directions(spec.dim, spec.seed)
    if scale == "20x":
        _mark_fine(store, cells, fine, amount, spec.tile_fraction, rng)
    elif scale == "5x":
        _mark_coarse(store, cells, coarse, amount)
    else:
        middle = np.random.default_rng(20_000 + spec.seed).normal(size=spec.dim)
        store.embeddings["10x"][cells] += amount * middle / np.linalg.norm(middle)


def outcome_slide(spec: OutcomeSpec, slide_id: str, strength: float, scale: str, rng: np.random.Generator):
    """One slide: the background store with the biomarker at `scale`, `strength` in [0, 1]."""
    store, regions, norm = _background(spec, slide_id, rng)
    for k in rng.permutation(len(regions))[: spec.signal_regions]:
        mark_scale(store, _cells_of(regions[k], spec.cells), scale, spec.signal * strength * norm, spec, rng)
    store.embeddings = {k: v.astype(np.float16) for k, v in store.embeddings.items()}
    return store


def _outcomes(spec: OutcomeSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[str], list[list]]:
    """Strengths, the scale carrying each specimen's biomarker, the target columns of each specimen."""
    n = spec.n_specimens
    if spec.task == "multiclass":
        scales = [SCALES[k % 3] for k in range(n)]
        return rng.uniform(0.5, 1.0, n), scales, [[s] for s in scales]
    strength = rng.random(n)
    if spec.task == "regression":
        return strength, [spec.scale] * n, [[f"{10 * u + spec.noise * rng.normal():.6f}"] for u in strength]
    hazard = np.exp(np.log(spec.hazard_ratio) * strength)
    event_time = rng.exponential(1 / hazard)
    censor_rate = float(np.mean(hazard)) * spec.censoring / (1 - spec.censoring)
    censor_time = rng.exponential(1 / censor_rate, n) if spec.censoring else np.full(n, np.inf)
    time = np.minimum(event_time, censor_time)
    rows = [[f"{t:.6g}" if t > 0 else "1e-9", int(e <= c)] for t, e, c in zip(time, event_time, censor_time)]
    return strength, [spec.scale] * n, rows


OUTCOME_NAMES = ("survival-20x", "survival-5x", "multiclass", "regression-20x", "regression-5x")


def outcome_type(name: str) -> str:
    """The task type of a benchmark task's name (binary for the binary tasks: fine, coarse, cross, context)."""
    return name.split("-")[0] if name in OUTCOME_NAMES else "binary"


def outcome_spec(name: str, fields: dict) -> OutcomeSpec:
    """The OutcomeSpec of an outcome task's name (survival-20x: survival with the biomarker at 20x)."""
    task, _, scale = name.partition("-")
    return OutcomeSpec(task, **(fields | ({"scale": scale} if scale else {})))


OUTCOME_COLUMNS = {"survival": ["time", "event"], "multiclass": ["label"], "regression": ["target"]}


def write_outcome_cohort(folder: str | Path, spec: OutcomeSpec, stores: str | Path | None = None) -> Path:
    """Stores (default folder/stores; slide ids start with the task's name) and folder/<name>.csv, split
    stratified by class (multiclass), event (survival) or the strength's half (regression). Returns the table."""
    folder = Path(folder)
    stores_dir = Path(stores) if stores is not None else folder / "stores"
    rng = np.random.default_rng([spec.seed, OUTCOME_TASKS.index(spec.task), SCALES.index(spec.scale)])
    strength, scales, targets = _outcomes(spec, rng)
    if spec.task == "multiclass":
        strata = np.array([SCALES.index(s) for s in scales])
    elif spec.task == "survival":
        strata = np.array([row[1] for row in targets])
    else:
        strata = (strength > np.median(strength)).astype(int)
    splits = _stratified_splits(strata, spec.split, rng)
    rows = []
    for k in range(spec.n_specimens):
        specimen = f"{spec.name}-P{k:04d}"
        slide = f"{specimen}-S0"
        path = stores_dir / f"{slide}.h5"
        write_store(path, outcome_slide(spec, slide, float(strength[k]), scales[k], rng))
        rows.append([specimen, slide, *targets[k], splits[k], str(path.resolve())])
    table = folder / f"{spec.name}.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    return write_csv_atomic(table, ["specimen", "slide", *OUTCOME_COLUMNS[spec.task], "split", "store"], rows)
