import html
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tissue_slide
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.slides.tiling import load_plan
from mixmag.synth.slide_writer import write_slide

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort_files(tmp_path_factory, real_svs):
    d = tmp_path_factory.mktemp("cohort")
    mostly_tissue = np.ones((8, 8), bool)
    mostly_tissue[0, :] = mostly_tissue[:, 0] = False
    good = make_tissue_slide(d, "good.tiff", size=(3000, 2800), seed=4, tissue_mask=mostly_tissue)
    nompp = write_slide(d / "nompp.tiff", np.full((1000, 1000, 3), 240, np.uint8), None)
    dpi72 = write_slide(d / "dpi72.tiff", np.full((1000, 1000, 3), 240, np.uint8), None, resolution_dpi=72)
    corrupt = d / "corrupt.svs"
    corrupt.write_bytes(b"not a slide at all")
    blank = write_slide(d / "blank.tiff", np.full((2000, 2000, 3), 243, np.uint8), 0.5)
    return {
        "dir": d,
        "good": good,
        "nompp": nompp,
        "dpi72": dpi72,
        "corrupt": corrupt,
        "blank": blank,
        "small": real_svs,
    }


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_multi_slide_run_goes_on_and_reports_failures(tmp_path, cohort_files):
    f = cohort_files
    out = tmp_path / "tiles"
    result = _invoke(
        "tile",
        f["good"],
        f["dir"] / "missing.svs",
        f["corrupt"],
        f["nompp"],
        f["dpi72"],
        f["small"],
        f["blank"],
        "--out",
        out,
    )
    text = result.output
    assert result.exit_code == 1
    assert "missing.svs: file not found" in text
    assert "corrupt.svs" in text and "no backend could read it" in text
    assert "nompp.tiff" in text and "--mpp" in text
    assert "dpi72.tiff" in text and "352.8" in text
    assert "too_small" in text and "no_tissue" in text
    assert "Done: 3 tiled, 0 skipped, 4 failed, 2 with an empty plan" in text
    plan = load_plan(out / "good" / "plan.json")
    assert plan.status == "ok" and len(plan.regions) >= 1
    import cv2

    for name in ("qc_tissue.png", "qc_regions.png", "tissue_mask.png"):
        picture = cv2.imread(str(out / "good" / name))
        assert picture is not None and min(picture.shape[:2]) >= 100 and picture.std() > 0
    assert load_plan(out / "CMU-1-Small-Region" / "plan.json").status == "too_small"
    summary = json.loads((out / "tiling_summary.json").read_text())
    assert {s["slide"]: s["outcome"] for s in summary["slides"]}["corrupt"] == "failed"
    assert not list(out.rglob("*.partial"))

    again = _invoke("tile", f["good"], "--out", out)
    assert again.exit_code == 0 and "skipped (plan is current)" in again.output
    changed = _invoke("tile", f["good"], "--out", out, "--tissue-threshold", "0.5")
    assert changed.exit_code == 0 and "tiled in" in changed.output


def test_mpp_override_rescues_a_slide_without_metadata(tmp_path, cohort_files):
    result = _invoke("tile", cohort_files["nompp"], "--out", tmp_path, "--mpp", "0.5", "--region-size", "1")
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "nompp")
    assert plan.slide.mpp == 0.5 and plan.slide.mpp_source == "override" and plan.slide.mpp_override == 0.5


def test_cohort_table_with_mpp_column(tmp_path, cohort_files):
    table = tmp_path / "cohort.csv"
    table.write_text(
        "specimen,slide,label,split,path,mpp\n"
        f"A,s-good,1,train,{cohort_files['good']},\n"
        f"B,s-nompp,0,train,{cohort_files['nompp']},0.5\n"
    )
    result = _invoke("tile", "--cohort", table, "--out", tmp_path / "out", "--region-size", "1")
    assert result.exit_code == 0, result.output
    assert load_plan(tmp_path / "out" / "s-nompp").slide.mpp == 0.5
    assert load_plan(tmp_path / "out" / "s-good").slide.mpp_source != "override"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("slide,file\na,x.svs\n", "needs a 'path' column"),
        ("slide,path\na,x.svs\na,y.svs\n", "used twice"),
        ("slide,path,mpp\na,x.svs,abc\n", "row 2: mpp 'abc' is not a number"),
        ("slide,path\na,\n", "row 2: empty 'path'"),
        ("slide,path\n", "no rows"),
        ("slide,path\nbad/id,x.svs\n", "not a safe file name"),
    ],
)
def test_malformed_cohort_tables_are_clear_errors(tmp_path, content, message):
    table = tmp_path / "bad.csv"
    table.write_text(content)
    result = _invoke("tile", "--cohort", table, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert message in result.output and "bad.csv" in result.output


def test_bad_settings_are_clear_errors(tmp_path, cohort_files):
    result = _invoke("tile", cohort_files["good"], "--out", tmp_path, "--tissue-threshold", "2")
    assert result.exit_code == 2 and "tissue_threshold" in result.output
    config = tmp_path / "tiling.yaml"
    config.write_text("tiling:\n  region_size: 2\n  regoin_stride: 1\n")
    result = _invoke("tile", cohort_files["good"], "--out", tmp_path, "--config", config)
    assert result.exit_code == 2 and "regoin_stride" in result.output


def test_yaml_config_is_used_and_flags_override_it(tmp_path, cohort_files):
    config = tmp_path / "tiling.yaml"
    config.write_text("tiling:\n  region_size: 2\n  tissue:\n    thumbnail_mpp: 16\n")
    result = _invoke(
        "tile", cohort_files["good"], "--out", tmp_path / "o", "--config", config, "--tissue-threshold", "0.3"
    )
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "o" / "good")
    assert (
        plan.params.region_size == 2 and plan.params.tissue.thumbnail_mpp == 16 and plan.params.tissue_threshold == 0.3
    )


def test_a_crash_midway_leaves_no_plan_that_looks_complete(tmp_path, cohort_files, monkeypatch):
    import mixmag.stages.tile as stage

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(stage, "regions_overlay", boom)
    result = _invoke("tile", cohort_files["good"], "--out", tmp_path)
    assert result.exit_code == 1 and "disk full" in result.output
    assert not (tmp_path / "good" / "plan.json").exists()
    monkeypatch.undo()
    result = _invoke("tile", cohort_files["good"], "--out", tmp_path)
    assert result.exit_code == 0 and "tiled in" in result.output


def test_synth_slide_command(tmp_path):
    out = tmp_path / "s.ome.tiff"
    result = _invoke("synth", "slide", out, "--width", "1200", "--height", "900", "--mpp", "0.2631", "--flavor", "ome")
    assert result.exit_code == 0, result.output
    from mixmag.slides.reader import Slide

    with Slide(out) as slide:
        assert slide.mpp == pytest.approx(0.2631) and len(slide.level_dimensions) == 3


def test_demo_small_configuration_produces_a_well_formed_table(tmp_path):
    import csv as csv_module

    result = _invoke("demo", "--small", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output and "not the paper's results" in result.output
    assert "Scale check" in result.output
    rows = list(csv_module.reader(open(tmp_path / "demo" / "results" / "results.csv")))
    assert rows[0] == ["method", "fine", "coarse", "cross", "average"]
    assert [r[0] for r in rows[1:]] == ["abmil-5x", "abmil-20x", "abmil-all", "random-cls", "MEM-patch"]
    for r in rows[1:]:
        values = [float(v) for v in r[1:]]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert abs(values[-1] - sum(values[:-1]) / 3) < 1e-3
    _assert_outcome_table_is_read_from_the_runs(result.output, tmp_path / "demo" / "outcomes")
    timings = json.loads((tmp_path / "demo" / "timings.json").read_text())
    assert len(timings) == 6 and all(v >= 0 for v in timings.values())
    report = html.unescape(next((tmp_path / "demo" / "results").glob("*/MEM-patch/seed0/report.html")).read_text())
    assert "SYNTHETIC" in report and "not the paper's results" in report  # the reports say so too
    again = _invoke("demo", "--small", "--out", tmp_path / "demo")
    assert again.exit_code == 0 and "(reused)" in again.output and "reusing" in again.output
    # a rerun keeps the first run's timings (issue 30: it overwrote them with the 0-4 s of reusing) and says so
    assert json.loads((tmp_path / "demo" / "timings.json").read_text()) == timings
    runs = json.loads((tmp_path / "demo" / "timings_runs.json").read_text())
    assert [sorted({s["reused"] for s in r["stages"].values()}) for r in runs] == [[False], [True]]
    assert "(run 1 of 2; reused in this one)" in again.output
    report = html.unescape(next((tmp_path / "demo" / "results").glob("*/MEM-patch/seed0/report.html")).read_text())
    assert "reused in this run; time of run 1 of 2" in report
    for stage, seconds in timings.items():
        assert f"<td>{stage}</td><td>{seconds:.1f} s</td>" in report
    assert "tiles embedded" in result.output and "pretraining steps" in result.output  # bars in every long stage
    meta = json.loads((tmp_path / "demo" / "pretrain" / "mixer.json").read_text())  # no test slide seen in pretraining
    assert sorted(Path(p).name for p in meta["pretraining"]["exclude_test_of"]) == [
        "cohort_coarse.csv",
        "cohort_cross.csv",
        "cohort_fine.csv",
    ]


def _assert_outcome_table_is_read_from_the_runs(output: str, folder: Path) -> None:
    """The demo's outcome table (survival C-index, 3-class macro AUROC) and scale check hold each run's own test
    metrics: every cell's value, and the per-class AUROCs the multiclass check compares."""
    from mixmag.runs import TrainRun

    output = " ".join(output.split())  # the console wraps long lines
    assert "| method | survival (C-index) | multiclass (macro AUROC) |" in output
    methods = ["abmil-5x", "abmil-20x", "abmil-all", "MEM-patch"]
    table = {line.split(" | ")[0].strip("| "): line for line in (folder / "outcomes.md").read_text().splitlines()}
    for method in methods:
        survival = TrainRun(folder / "survival" / method / "seed0").read_metrics()["test"]
        multiclass = TrainRun(folder / "multiclass" / method / "seed0").read_metrics()["test"]
        cells = table[method].strip("| ").split(" | ")[1:]
        assert cells[0].startswith(f"{survival['c_index']:.3f} [") and cells[1].startswith(
            f"{multiclass['macro_auroc']:.3f} ["
        )
        assert " ".join(table[method].split()) in output
    c = {m: TrainRun(folder / "survival" / m / "seed0").read_metrics()["test"]["c_index"] for m in methods}
    per_class = TrainRun(folder / "multiclass" / "abmil-20x" / "seed0").read_metrics()["test"]["per_class_auroc"]
    assert f"survival: abmil-20x C-index {c['abmil-20x']:.3f} vs abmil-5x {c['abmil-5x']:.3f} ->" in output
    assert (
        f"multiclass: abmil-20x one-vs-rest AUROC of class 20x {per_class['20x']:.3f} vs class 5x "
        f"{per_class['5x']:.3f} ->" in output
    )
    assert "q: p adjusted for the table's 6 comparisons" in output


def test_bench_tile_smoke(tmp_path):
    result = _invoke("bench", "tile", "--workdir", tmp_path, "--size", "2048", "--cells", "2", "--rounds", "1")
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "bench_tile.json").read_text())
    for name in ("40x-pyramid", "20x-single-level"):
        rates = figures[name]["tiles_per_s_per_core"]
        assert rates["a"] > 0 and rates["b"] > 0 and rates["c"] > 0
        assert figures[name]["mean_abs_diff_a_vs_b_per_level"]["20x"] < 10
        assert all(v > 0 for v in figures[name]["tiles_per_cpu_s"].values())  # judged on CPU seconds, wall beside
        assert figures[name]["a_over_b_cpu"] > 0 and figures[name]["c_over_a_cpu"] > 0
    measured = figures["backends"]["measured"]  # every installed backend reads the same cells
    assert {"tiffslide", "openslide"} <= set(measured) and all(r["tiles_per_s_per_core"] > 0 for r in measured.values())
    assert all(r["mean_abs_diff_20x_vs_first"] < 3 for r in measured.values())


def test_bench_embed_smoke(tmp_path):
    result = _invoke("bench", "embed", "--workdir", tmp_path, "--side", "1400")
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "bench_embed.json").read_text())
    assert all(v > 0 for v in figures["cpu_data_path_tiles_per_s"].values())
    assert figures["tiles"] == 21 * figures["cells"] > 0


def test_shipped_demo_config_equals_the_built_in_defaults():
    from pathlib import Path

    import yaml

    from mixmag.studies.demo import DemoConfig

    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
    assert DemoConfig(**shipped) == DemoConfig()


def test_demo_on_your_own_cohort_table(tmp_path):
    import yaml

    from mixmag.synth.cohort import CohortSpec, write_cohort

    tables = write_cohort(tmp_path / "mine", CohortSpec(n_specimens=15, max_slides=1, cells=3, seed=4))
    config = yaml.safe_load(open(Path(__file__).resolve().parents[1] / "configs" / "demo-small.yaml"))
    config |= {
        "cohort_tables": {"mytask": str(tables["coarse"])},
        "out": str(tmp_path / "out"),
        "methods": ["abmil-5x", "MEM-cls"],
    }
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _invoke("demo", "--config", path)
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" not in result.output and "Scale check" not in result.output
    assert "Outcome tasks" not in result.output and not (tmp_path / "out" / "outcomes").exists()  # synthetic only
    assert "| method | mytask | average |" in result.output
    assert (tmp_path / "out" / "results" / "mytask" / "MEM-cls" / "seed0" / "report.html").is_file()
