import csv

import numpy as np

from mixmag.data.cohort import load_cohort
from mixmag.slides.reader import Slide
from mixmag.synth.cohort import (
    CohortSpec,
    region_plan,
    render_slide,
    survival_columns,
    write_cohort,
    write_outcome_tables,
)


def test_cohort_tables_are_consistent_and_stratified(tmp_path):
    spec = CohortSpec(n_specimens=15, max_slides=3, cells=3, seed=2)
    tables = write_cohort(tmp_path, spec)
    rows = {task: list(csv.DictReader(open(path))) for task, path in tables.items()}
    slides = [r["slide"] for r in rows["fine"]]
    assert len(slides) == len(set(slides)) and all((tmp_path / r["path"]).is_file() for r in rows["fine"])
    for task, table in rows.items():
        for split in ("train", "tune", "test"):
            labels = {r["label"] for r in table if r["split"] == split}
            assert labels == {"0", "1"}, (task, split)
    cross = {r["specimen"]: r["label"] for r in rows["cross"]}
    fine = {r["specimen"]: r["label"] for r in rows["fine"]}
    coarse = {r["specimen"]: r["label"] for r in rows["coarse"]}
    assert all(fine[s] == coarse[s] == "1" for s, v in cross.items() if v == "1")  # cross implies both
    with Slide(tmp_path / rows["fine"][0]["path"]) as slide:
        assert slide.mpp == 0.5 and len(slide.level_dimensions) == 3


def test_signals_sit_in_whole_regions_of_one_slide():
    rng = np.random.default_rng(0)
    plan = region_plan("cross", 4, 0.5, rng)
    assert sum(p == (True, True) for p in plan) == 2 and plan.count((False, False)) == 2
    apart = region_plan("both-apart", 4, 0.5, rng)
    assert (True, True) not in apart and (True, False) in apart and (False, True) in apart


def test_grain_is_invisible_after_2x_downsampling():
    import cv2

    spec = CohortSpec(cells=3)
    smooth = render_slide(spec, [(False, False)], np.random.default_rng(1))
    grainy = render_slide(spec, [(True, False)], np.random.default_rng(1))
    full = np.abs(smooth.astype(int) - grainy)
    half = lambda im: cv2.resize(im, (im.shape[1] // 2, im.shape[0] // 2), interpolation=cv2.INTER_AREA).astype(int)  # noqa: E731
    halved = np.abs(half(smooth) - half(grainy))
    assert full.max() > 50  # visible at 20x
    assert halved.mean() < full.mean() / 10  # averaged away at 10x (but for 2x2 blocks cut by a nucleus edge)


def test_label_noise_flips_labels_and_leaves_the_slides_alone(tmp_path):
    clean = write_cohort(tmp_path / "clean", CohortSpec(n_specimens=15, max_slides=1, cells=3, seed=2))
    noisy = write_cohort(tmp_path / "noisy", CohortSpec(n_specimens=15, max_slides=1, cells=3, seed=2, label_noise=0.5))
    a = {r["specimen"]: r for r in csv.DictReader(open(clean["fine"]))}
    b = {r["specimen"]: r for r in csv.DictReader(open(noisy["fine"]))}
    assert a.keys() == b.keys() and all(a[s]["slide"] == b[s]["slide"] and a[s]["split"] == b[s]["split"] for s in a)
    assert 0 < sum(a[s]["label"] != b[s]["label"] for s in a) < 15
    first = next(iter(a.values()))["path"]
    assert (tmp_path / "clean" / first).read_bytes() == (tmp_path / "noisy" / first).read_bytes()


def test_outcome_tables_sit_on_the_cohorts_slides_with_known_answers(tmp_path):
    spec = CohortSpec(n_specimens=15, max_slides=2, cells=3, seed=2)
    fine = {r["slide"]: r for r in csv.DictReader(open(write_cohort(tmp_path, spec)["fine"]))}
    tables = write_outcome_tables(tmp_path, spec)
    survival = list(csv.DictReader(open(tables["survival"])))
    assert [r["slide"] for r in survival] == list(fine)  # every slide, the cohort's splits and paths
    assert all(r["split"] == fine[r["slide"]]["split"] and r["path"] == fine[r["slide"]]["path"] for r in survival)
    assert all(float(r["time"]) > 0 and r["event"] in ("0", "1") for r in survival)
    cohort = load_cohort(tables["survival"], require_stores=False, task="survival")  # a valid survival table
    assert len(cohort.specimens) == 15
    classes = {r["specimen"]: r["label"] for r in csv.DictReader(open(tables["multiclass"]))}
    coarse = {r["specimen"]: r["label"] for r in csv.DictReader(open(tmp_path / "cohort_coarse.csv"))}
    fine_of = {r["specimen"]: r["label"] for r in fine.values()}
    assert set(classes.values()) == {"none", "20x", "5x"}
    for specimen, label in classes.items():  # the scale of the only biomarker; specimens with both left out
        assert (fine_of[specimen], coarse[specimen]) == {"none": ("0", "0"), "20x": ("1", "0"), "5x": ("0", "1")}[label]
    assert {s for s in fine_of if fine_of[s] == coarse[s] == "1"}.isdisjoint(classes)
    load_cohort(tables["multiclass"], require_stores=False, task="multiclass")


def test_survival_times_follow_the_fine_biomarker():
    from lifelines.utils import concordance_index

    fine = np.arange(2000) % 5 < 3
    time, event = survival_columns(fine, 20.0, 0.3, np.random.default_rng(0))
    assert abs(1 - event.mean() - 0.3) < 0.05  # about the censoring asked for
    assert concordance_index(time, -fine.astype(float), event) > 0.7  # the biomarker ranks the risks
    time, event = survival_columns(fine, 1.0, 0.3, np.random.default_rng(0))
    assert abs(concordance_index(time, -fine.astype(float), event) - 0.5) < 0.03  # no effect, no ranking
