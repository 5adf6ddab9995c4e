"""A synthetic multi-scale cohort of real pyramidal TIFF slides with biomarkers at known scales.

Every slide is H&E-like tissue: pink stroma with texture, nuclei gathered in round nests (~100 um).
Three biomarkers, each placed in whole t x t regions of the global cell grid:
- fine (20x): the nuclei's chromatin has a pixel-scale grain at 0.5 um/px, balanced in every 2x2 block;
  nuclear size, count and layout are unchanged, so any 2x downsampling (10x, 5x) averages it away;
- coarse (5x): nests sit on a regular lattice (224 um period, random phase) instead of at random; the
  nest count and every nest are the same, so a single 20x tile (112 um) hardly tells the arrangement;
- cross-scale: positive only when speckled nuclei sit in lattice-arranged nests in the same region.
In a positive specimen one slide carries the signal, and only in some of its regions. Seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import optimize

from ..errors import ConfigError
from ..fileio import write_csv_atomic
from .slide_writer import write_slide

TASKS = ("fine", "coarse", "cross")
CELL_UM = 448.0
MAX_SYNTH_SPECIMENS = 100_000


class CohortSpecError(ConfigError, ValueError):
    """A synthetic cohort spec out of bounds: one sentence on the command line, a config error naming the key."""


MAX_SYNTH_SIDE_PX = 1 << 16


@dataclass(frozen=True)
class CohortSpec:
    n_specimens: int = 48
    max_slides: int = 3
    cells: int = 6  # slide side in 448 um cells
    region: int = 3  # t: signals fill whole t x t regions
    mpp: float = 0.5
    signal_fraction: float = 0.5  # share of the carrier slide's regions that carry the signal
    nest_radius_um: float = 50.0
    lattice_um: float = 224.0
    nucleus_radius_um: float = 3.5
    nuclei_per_nest: int = 60
    seed: int = 0
    splits: tuple[float, float, float] = (0.5, 0.25, 0.25)
    label_noise: float = 0.0  # share of specimens whose label is flipped, independently per task

    def __post_init__(self) -> None:
        """Bounds (a ValueError names the config key when the spec comes from a config): a synthetic cohort is
        written to disk slide by slide, so a slip like 10**9 specimens or 10**6-cell slides fills the disk."""
        side_px = self.cells * CELL_UM / self.mpp if self.mpp > 0 else float("inf")
        if not (1 <= self.n_specimens <= MAX_SYNTH_SPECIMENS and 1 <= self.max_slides <= 100):
            raise CohortSpecError(
                f"n_specimens (--specimens) must be 1-{MAX_SYNTH_SPECIMENS:,} and max_slides (--max-slides) 1-100"
            )
        if not (1 <= self.region <= self.cells and 0.1 <= self.mpp <= 20 and side_px <= MAX_SYNTH_SIDE_PX):
            raise CohortSpecError(
                f"a slide of {self.cells} cells at {self.mpp} um/px is {side_px:.0f} px a side: give 1 <= region <= "
                f"cells, mpp 0.1-20 and at most {MAX_SYNTH_SIDE_PX} px a side"
            )
        if not (0 <= self.nuclei_per_nest <= 10_000 and 0 <= self.label_noise <= 1 and 0 <= self.signal_fraction <= 1):
            raise CohortSpecError("nuclei_per_nest must be 0-10,000, label_noise and signal_fraction 0-1")


def specimen_flags(spec: CohortSpec, rng: np.random.Generator) -> list[dict]:
    """Which biomarkers each specimen has; balanced so every task has positives and negatives."""
    flags = []
    kinds = ["none", "fine", "coarse", "both-apart", "cross"]
    for k in range(spec.n_specimens):
        kind = kinds[k % len(kinds)]
        flags.append(
            {
                "kind": kind,
                "fine": kind in ("fine", "both-apart", "cross"),
                "coarse": kind in ("coarse", "both-apart", "cross"),
                "cross": kind == "cross",
            }
        )
    order = rng.permutation(len(flags))
    return [flags[i] for i in order]


def region_plan(kind: str, n_regions: int, fraction: float, rng: np.random.Generator) -> list[tuple[bool, bool]]:
    """(speckled, lattice) for each region of the carrier slide."""
    n_signal = max(1, round(fraction * n_regions))
    chosen = rng.permutation(n_regions)[:n_signal]
    plan = [(False, False)] * n_regions
    for j, r in enumerate(chosen):
        if kind == "fine":
            plan[r] = (True, False)
        elif kind == "coarse":
            plan[r] = (False, True)
        elif kind == "cross":
            plan[r] = (True, True)
        elif kind == "both-apart":  # both properties, never in the same region
            plan[r] = (True, False) if j % 2 == 0 else (False, True)
    if kind == "both-apart" and n_signal == 1 and n_regions > 1:
        other = next(r for r in range(n_regions) if r not in set(chosen.tolist()))
        plan[other] = (False, True)
    return plan


def render_slide(spec: CohortSpec, regions: list[tuple[bool, bool]], rng: np.random.Generator) -> np.ndarray:
    """RGB image of cells x cells cells; regions in row-major order of the t x t region lattice."""
    mpp = spec.mpp
    side_px = round(spec.cells * CELL_UM / mpp)
    region_px = spec.region * CELL_UM / mpp
    per_side = spec.cells // spec.region
    # stroma: pink with a smooth texture, made small and enlarged (it has no fine detail)
    small = side_px // 8
    texture = cv2.resize(
        rng.normal(size=(small // 5 + 2, small // 5 + 2)).astype(np.float32),
        (small, small),
        interpolation=cv2.INTER_CUBIC,
    )
    stroma = np.stack([228 + 6 * texture, 150 + 14 * texture, 192 + 9 * texture], axis=-1)
    image = cv2.resize(np.clip(stroma, 0, 255).astype(np.uint8), (side_px, side_px), interpolation=cv2.INTER_LINEAR)
    speckle_mask = np.zeros((side_px, side_px), np.uint8)
    hematoxylin = (88, 58, 145)
    nest_r = spec.nest_radius_um / mpp
    nucleus_r = max(1, round(spec.nucleus_radius_um / mpp))
    n_nests = round((region_px * mpp / spec.lattice_um) ** 2)
    for idx, (speckled, lattice) in enumerate(regions):
        ry, rx = divmod(idx, per_side)
        x0, y0 = rx * region_px, ry * region_px
        if lattice:
            # a regular lattice with a random phase, so 20x tiles do not sit at fixed places on it
            step = spec.lattice_um / mpp
            phase = rng.uniform(0, step, 2)
            grid = np.arange(round(region_px / step)) * step
            centres = np.array([(x0 + phase[0] + gx, y0 + phase[1] + gy) for gy in grid for gx in grid])
            centres += rng.normal(0, 6 / mpp, centres.shape)
        else:
            centres = np.column_stack(
                [x0 + rng.uniform(0, region_px, n_nests), y0 + rng.uniform(0, region_px, n_nests)]
            )
        for cx, cy in centres:
            radius = np.sqrt(rng.uniform(0, 1, spec.nuclei_per_nest)) * nest_r
            angle = rng.uniform(0, 2 * np.pi, spec.nuclei_per_nest)
            for px, py in zip(cx + radius * np.cos(angle), cy + radius * np.sin(angle)):
                centre = (int(px), int(py))
                cv2.circle(image, centre, nucleus_r, hematoxylin, thickness=-1)
                if speckled:
                    cv2.circle(speckle_mask, centre, nucleus_r, 1, thickness=-1)
    ys, xs = np.nonzero(speckle_mask)
    if ys.size:
        # chromatin grain balanced in every 2x2 block (two dark, two light pixels): visible at 20x,
        # averaged away exactly by the first 2x downsampling (10x) and everything coarser
        block_sign = rng.choice(np.array([-1.0, 1.0], np.float32), size=(side_px // 2 + 1, side_px // 2 + 1))
        checker = np.where((xs + ys) % 2 == 0, 1.0, -1.0).astype(np.float32)
        factor = 1.0 + 0.45 * block_sign[ys // 2, xs // 2] * checker
        image[ys, xs] = np.clip(np.array(hematoxylin, np.float32)[None, :] * factor[:, None], 0, 255).astype(np.uint8)
    return image


def _stratified_splits(kinds: list[str], fractions: tuple[float, float, float]) -> list[str]:
    """Split each kind of specimen train/tune/test in the given proportions, so every split holds
    positives and negatives of every task."""
    out = [""] * len(kinds)
    for kind in sorted(set(kinds)):
        members = [i for i, k in enumerate(kinds) if k == kind]
        n = len(members)
        n_tune = max(1, round(fractions[1] * n)) if n >= 3 else 0
        n_test = max(1, round(fractions[2] * n)) if n >= 3 else 0
        labels = ["tune"] * n_tune + ["test"] * n_test
        labels = ["train"] * (n - len(labels)) + labels
        for i, label in zip(members, labels):
            out[i] = label
    return out


def _write_slides(folder: Path, spec: CohortSpec, progress=None) -> list[dict]:
    """Write (or reuse) every slide; one row per slide: specimen, slide, split, path, its specimen's kind and flags."""
    rng = np.random.default_rng(spec.seed)
    flags = specimen_flags(spec, rng)
    split_of = _stratified_splits([f["kind"] for f in flags], spec.splits)
    rows = []
    n_regions = (spec.cells // spec.region) ** 2
    for k, flag in enumerate(flags):
        specimen = f"SP{k:03d}"
        srng = np.random.default_rng([spec.seed, k])
        n_slides = int(srng.integers(1, spec.max_slides + 1))
        carrier = int(srng.integers(n_slides))
        for j in range(n_slides):
            slide = f"{specimen}-{j + 1}"
            path = folder / "slides" / f"{slide}.tiff"
            plan = (
                region_plan(flag["kind"], n_regions, spec.signal_fraction, srng)
                if j == carrier
                else [(False, False)] * n_regions
            )
            if not path.exists():
                image = render_slide(spec, plan, np.random.default_rng([spec.seed, k, j]))
                write_slide(path, image, spec.mpp, downsamples=(1, 4, 16), quality=95)
            rows.append(
                {
                    "specimen": specimen,
                    "slide": slide,
                    "split": split_of[k],
                    "path": f"slides/{slide}.tiff",
                    "kind": flag["kind"],
                    **{t: int(flag[t]) for t in TASKS},
                }
            )
            if progress:
                progress(slide)
    return rows


def write_cohort(folder: str | Path, spec: CohortSpec, progress=None) -> dict[str, Path]:
    """Write slides/<slide>.tiff and one cohort table per task: cohort_<task>.csv (specimen, slide,
    label, split, path). Returns {task: table}. Reuses slides that already exist."""
    folder = Path(folder)
    rows = _write_slides(folder, spec, progress)
    tables = {}
    noise_rng = np.random.default_rng([spec.seed, 99])  # its own stream: the slides do not depend on it
    for task in TASKS:
        flipped = {f"SP{k:03d}" for k in range(spec.n_specimens) if noise_rng.random() < spec.label_noise}
        table = folder / f"cohort_{task}.csv"
        write_csv_atomic(
            table,
            ["specimen", "slide", "label", "split", "path"],
            [
                [r["specimen"], r["slide"], 1 - r[task] if r["specimen"] in flipped else r[task], r["split"], r["path"]]
                for r in rows
            ],
        )
        tables[task] = table
    return tables


# -- outcome tasks with known answers on the same slides (task types, docs/method.md) ------------------------------

OUTCOME_TASKS = ("survival", "multiclass")
CLASS_OF_KIND = {"none": "none", "fine": "20x", "coarse": "5x"}  # the scale of a specimen's only biomarker


def survival_columns(fine: np.ndarray, hazard_ratio: float, censoring: float, rng: np.random.Generator):
    """(time, event) per specimen: exponential event times whose hazard is `hazard_ratio` times higher with the fine
    (20x) biomarker, censored by independent exponential times so that about `censoring` of them are censored."""
    hazard = np.where(fine, hazard_ratio, 1.0)
    event_time = rng.exponential(1 / hazard)
    censor_time = np.full(fine.size, np.inf)
    if censoring:  # the rate whose expected share of censored specimens, mean(c / (c + hazard)), is `censoring`
        rate = optimize.brentq(lambda c: float(np.mean(c / (c + hazard))) - censoring, 1e-12, 1e12)
        censor_time = rng.exponential(1 / rate, fine.size)
    return np.maximum(np.minimum(event_time, censor_time), 1e-9), (event_time <= censor_time).astype(int)


def write_outcome_tables(
    folder: str | Path, spec: CohortSpec, hazard_ratio: float = 20.0, censoring: float = 0.3
) -> dict[str, Path]:
    """A survival and a 3-class table on the cohort's own slides (written or reused as `write_cohort` does), so they
    cost no tiling or embedding: cohort_survival.csv (time, event; the hazard follows the fine, 20x biomarker) and
    cohort_multiclass.csv (label: the scale of the specimen's only biomarker, none / 20x / 5x; specimens with both
    biomarkers are left out). Splits are the cohort's (stratified by the specimen's kind). Returns {task: table}."""
    if hazard_ratio <= 0 or not 0 <= censoring < 1:
        raise CohortSpecError("hazard_ratio must be > 0 and censoring in [0, 1)")
    folder = Path(folder)
    rows = _write_slides(folder, spec)
    specimens = list(dict.fromkeys(r["specimen"] for r in rows))
    fine = {r["specimen"]: r["fine"] for r in rows}
    time, event = survival_columns(
        np.array([fine[s] for s in specimens], bool), hazard_ratio, censoring, np.random.default_rng([spec.seed, 98])
    )
    outcome = {s: (f"{t:.6g}", int(e)) for s, t, e in zip(specimens, time, event, strict=True)}
    survival = folder / "cohort_survival.csv"
    write_csv_atomic(
        survival,
        ["specimen", "slide", "time", "event", "split", "path"],
        [[r["specimen"], r["slide"], *outcome[r["specimen"]], r["split"], r["path"]] for r in rows],
    )
    multiclass = folder / "cohort_multiclass.csv"
    write_csv_atomic(
        multiclass,
        ["specimen", "slide", "label", "split", "path"],
        [
            [r["specimen"], r["slide"], CLASS_OF_KIND[r["kind"]], r["split"], r["path"]]
            for r in rows
            if r["kind"] in CLASS_OF_KIND
        ],
    )
    return {"survival": survival, "multiclass": multiclass}
