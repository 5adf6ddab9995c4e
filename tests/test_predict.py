"""Prediction on new slides and where the model looked: raw slides scored like the evaluation path,
attribution placed where the tiles came from, heatmaps over the slide."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import make_tissue_slide
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.data.bags import region_bag, tile_bag
from mixmag.errors import RunMismatchError
from mixmag.eval.explain import explain_slide, region_layout, tile_layout
from mixmag.models.slide import SlideModel
from mixmag.report.heatmaps import draw_heatmaps, map_on_thumbnail, open_store_slide, thumbnail
from mixmag.stages.predict import read_inputs
from mixmag.store import read_attrs, read_store, write_store
from mixmag.synth.cohort import CohortSpec, write_cohort
from mixmag.synth.patterns import tissue_like
from mixmag.synth.slide_writer import write_slide
from mixmag.synth.stores import synthetic_store
from mixmag.train.classifier import SlideClassifier

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["abmil-all", "MEM-patch", "MEM-cls", "random-cls", "random-patch", "random-10x-patch"]


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo on a small generated cohort of real slide files: one run per bag kind."""
    d = tmp_path_factory.mktemp("predict")
    tables = write_cohort(d / "cohort", CohortSpec(n_specimens=15, max_slides=1, cells=6, seed=4))
    config = yaml.safe_load(open(ROOT / "configs" / "demo-small.yaml"))
    config |= {"cohort_tables": {"coarse": str(tables["coarse"])}, "out": str(d / "out"), "methods": METHODS}
    (d / "demo.yaml").write_text(yaml.safe_dump(config))
    result = _invoke("demo", "--config", d / "demo.yaml")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tables["coarse"])))
    test_table = d / "cohort" / "test_slides.csv"
    with test_table.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["split"] == "test")
    return d, test_table


def _run(demo_dir: Path, method: str) -> Path:
    return demo_dir / "out" / "results" / "coarse" / method / "seed0"


def test_predict_from_raw_slides_equals_the_evaluation_path(demo, tmp_path):
    d, test_table = demo
    stores = d / "out" / "stores"
    hidden = d / "out" / "stores-moved"
    stores.rename(hidden)  # a run folder (plus its mixer) is all prediction needs
    try:
        for k, method in enumerate(METHODS):
            run = _run(d, method)
            expected = {
                s: float(v)
                for r in csv.DictReader(open(run / "predictions_test.csv"))
                for s, v in zip(r["slides"].split(";"), r["slide_scores"].split(";"))
            }
            out = tmp_path / f"{method}.csv"
            extra = [] if k == 0 else ["--no-heatmaps"]
            result = _invoke(
                "predict",
                "--run",
                run,
                "--cohort",
                test_table,
                "--out",
                out,
                "--work",
                tmp_path / "work",
                "--workers",
                0,
                *extra,
            )
            assert result.exit_code == 0, result.output
            got = list(csv.DictReader(open(out)))
            assert {r["slide"] for r in got} == set(expected)
            for r in got:
                assert float(r["slide_score"]) == pytest.approx(expected[r["slide"]], abs=1e-5), method
                shares = [float(r[f"share_{n}"]) for n in ("5x", "10x", "20x")]
                assert sum(shares) == pytest.approx(1, abs=1e-3)
                assert shares == [0, 1, 0] if method == "random-10x-patch" else min(shares) > 0  # a 10x-only mixer
    finally:
        hidden.rename(stores)
    pictures = sorted(p.name for p in (tmp_path / "work" / "heatmaps").glob("*.png"))
    assert len(pictures) == 3 * len(expected)  # maps, top tiles, top regions per slide, from the first run
    assert len(list((tmp_path / "work" / "stores").glob("*.h5"))) == len(expected)  # embedded once, reused


def test_predict_refuses_other_encoder_weights_and_reports_bad_slides(demo, tmp_path, real_svs):
    d, test_table = demo
    run = _run(d, "abmil-all")
    classifier = SlideClassifier.load(run)
    classifier.pipeline["encoder_weights_digest"] = "0123456789abcdef"
    from mixmag.stages.predict import encoder_for_run

    with pytest.raises(RunMismatchError, match="not the ones the run was trained with"):
        encoder_for_run(classifier)
    import json
    import shutil

    future = tmp_path / "future-run"
    shutil.copytree(run, future)
    pipeline = json.loads((future / "pipeline.json").read_text())
    (future / "pipeline.json").write_text(json.dumps(pipeline | {"run_format": 99, "mixmag_version": "9.0"}))
    with pytest.raises(RunMismatchError, match="newer than this mixmag"):
        SlideClassifier.load(future)
    (future / "pipeline.json").write_text(json.dumps(pipeline))
    assert pipeline["compute_dtype"] == "float32"  # embedded on CPU here
    import h5py

    from mixmag.stages.predict import precision_note

    store = next((d / "out" / "stores").glob("*.h5"))
    gpu_store = tmp_path / store.name
    shutil.copy(store, gpu_store)
    with h5py.File(gpu_store, "r+") as f:
        f.attrs["compute_dtype"] = "bfloat16"
    assert precision_note(classifier, {"a": store}) is None
    assert "embedded in float32, these in bfloat16" in precision_note(classifier, {"a": store, "b": gpu_store})
    torch.save({"nonsense": torch.zeros(1)}, future / "best.pt")
    with pytest.raises(RunMismatchError, match="best.pt does not fit"):
        SlideClassifier.load(future)
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"II*\x00" + b"\x00" * 100)
    good = Path(next(csv.DictReader(open(test_table)))["path"])
    good = good if good.is_absolute() else test_table.parent / good
    result = _invoke(
        "predict", "--run", run, good, broken, real_svs, "--out", tmp_path / "p.csv", "--workers", 0, "--no-heatmaps"
    )
    assert result.exit_code == 1  # two slides could not be scored
    rows = {r["slide"]: r for r in csv.DictReader(open(tmp_path / "p.csv"))}
    assert rows[good.stem]["slide_score"] and not rows[good.stem]["problem"]
    assert rows["broken"]["slide_score"] == "" and "broken.tiff" in rows["broken"]["problem"]
    small = rows[real_svs.stem]  # 1108 x 1481 um: less than one 3 x 3 region of 448 um cells
    assert small["slide_score"] == "" and "smaller than one of the run's 3 x 3 regions (1344 um)" in small["problem"]


def test_layouts_place_every_bag_item_where_its_tile_is(tmp_path):
    """Embeddings that spell their own (level, row, col) must land on that place in every bag kind."""
    store = synthetic_store("pos", n_rows=6, n_cols=7, dim=8)
    for i, name in enumerate(store.level_names):
        side = 2**i
        emb = np.zeros_like(store.embeddings[name])
        sub_r, sub_c = np.divmod(np.arange(side * side), side)
        emb[..., 0] = i
        emb[..., 1] = store.rc[:, 0, None] * side + sub_r
        emb[..., 2] = store.rc[:, 1, None] * side + sub_c
        store.embeddings[name] = emb
    path = write_store(tmp_path / "pos.h5", store)
    store = read_store(path)
    cases = [(tile_layout(store, m), tile_bag(path, m)) for m in ("5x", "20x", "all")]
    cases.append((region_layout(store), region_bag(path).reshape(-1, 8)))
    cases.append((region_layout(store, "10x"), region_bag(path, "10x").reshape(-1, 8)))
    for layout, bag in cases:
        assert layout.level.size == bag.shape[0]
        assert (
            np.array_equal(layout.level, bag[:, 0])
            and np.array_equal(layout.row, bag[:, 1])
            and np.array_equal(layout.col, bag[:, 2])
        )


def _quadrant_slide(folder: Path) -> Path:
    """Tissue over the whole slide; dense nuclei only in the top-right quadrant (a known place)."""
    mpp, side = 0.5, 1536  # 6 x 6 cells of 128 um with 64 px tiles at 2 um/px
    image = tissue_like(side, side, mpp, seed=3, tissue_mask=np.ones((8, 8), bool))
    rng = np.random.default_rng(0)
    for _ in range(1500):
        x, y = rng.integers(side // 2 + 10, side - 10), rng.integers(10, side // 2 - 10)
        cv2.circle(image, (int(x), int(y)), 5, (70, 40, 130), -1)
    path = folder / "quadrant.tiff"
    write_slide(path, image, mpp, downsamples=(1, 4))
    return path


def _attention_on_nuclei(model: SlideModel) -> None:
    """AB-MIL whose attention and score rise with the encoder's nuclear-area feature (index 8 of `stats`)."""
    abmil = model.aggregator
    with torch.no_grad():
        for p in abmil.parameters():
            p.zero_()
        abmil.V.weight[0, 8] = 1.0
        abmil.U.bias.fill_(20.0)
        abmil.h.weight[0, 0] = 8.0
        abmil.classifier.weight[0, 8] = 1.0


def _assert_hot_in_top_right(a, attrs: dict, scale: float, shape: tuple[int, int]) -> None:
    """Every level's map, drawn in the thumbnail's own pixels, is hottest in the top-right quadrant."""
    h, w = shape
    for i, name in enumerate(a.level_names):
        if not np.isfinite(a.level_maps[name]).any():
            continue
        picture = map_on_thumbnail(a.level_maps[name], attrs["cell_px"] / 2**i, scale, (h, w))
        y, x = np.unravel_index(np.nanargmax(picture), picture.shape)
        assert y < h / 2 and x >= w / 2, (a.method, name)
        assert np.nanmean(picture[: h // 2, w // 2 :]) > 2 * np.nanmean(picture[h // 2 :, : w // 2]), (a.method, name)


@pytest.mark.parametrize("bags", ["20x", "all"])
def test_heatmaps_put_the_signal_in_its_quadrant(tmp_path, bags):
    source = _quadrant_slide(tmp_path)
    result = _invoke("tile", source, "--out", tmp_path / "tiles", "--tile-px", 64)
    assert result.exit_code == 0, result.output
    result = _invoke(
        "embed",
        "--plans",
        tmp_path / "tiles",
        "--out",
        tmp_path / "stores",
        "--encoder",
        "stats",
        "--workers",
        0,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    store = tmp_path / "stores" / "quadrant.h5"
    attrs = read_attrs(store)
    model = SlideModel(34).eval()  # a classifier of the stores' 34-d `stats` embeddings, no training loop needed
    _attention_on_nuclei(model)
    classifier = SlideClassifier(model, bags, pipeline=dict(attrs))
    classifier.use_stores({"quadrant": store})
    with open_store_slide(attrs) as slide:
        thumb, scale = thumbnail(slide, longest=300)
    h, w = thumb.shape[:2]
    gradient = explain_slide(classifier, "quadrant", store, "gradient")
    a = explain_slide(classifier, "quadrant", store)
    assert a.method == "AB-MIL attention" and gradient.method == "gradient x input"
    assert len(a.regions) == 4
    top = tuple(a.regions[int(np.argmax(a.region_weight))])
    assert top == (0, 3)  # the top-right region of the 6 x 6 cell grid
    # the 4 regions tile the 6 x 6 grid: their tiles' score contributions add up to the logit less the bias
    logit, bias = classifier.explain("quadrant").logit, model.aggregator.classifier.bias.detach().item()
    assert a.region_contribution.shape == (4,) and a.region_contribution.sum() == pytest.approx(logit - bias, abs=1e-5)
    assert gradient.region_contribution == pytest.approx(a.region_contribution)
    _assert_hot_in_top_right(a, attrs, scale, (h, w))
    _assert_hot_in_top_right(gradient, attrs, scale, (h, w))
    pictures = draw_heatmaps(a, attrs, tmp_path / "heatmaps", top_k=3, formats=("png", "svg"))
    assert {p.suffix for p in pictures} == {".png", ".svg"} and all(p.stat().st_size > 1000 for p in pictures)
    assert {p.stem for p in pictures} == {"quadrant_maps", "quadrant_top", "quadrant_regions"}
    # the most attended 20x tile is dense with the quadrant's nuclei
    from mixmag.report.heatmaps import tile_crop, top_tiles

    with open_store_slide(attrs) as slide:
        r, c, _ = top_tiles(a, len(a.level_names) - 1, 1)[0]
        crop = tile_crop(slide, attrs, len(a.level_names) - 1, r, c)
    purple = ((crop[..., 0] < 110) & (crop[..., 2] > 100)).mean()
    assert purple > 0.2


def test_the_demo_report_shows_heatmaps(demo):
    d, _ = demo
    text = (_run(d, "MEM-patch") / "report.html").read_text()
    assert "Where the model looked" in text and "Heatmaps not drawn" not in text
    assert text.count("alt='heatmaps of") == 9  # maps, top tiles and top regions of 3 chosen slides
    assert "highest-scoring positive" in text and "x uniform" in text


def test_the_demo_report_with_heatmaps_renders_in_chromium(demo, chromium):
    d, _ = demo
    _, console_errors, images, broken = chromium(_run(d, "MEM-patch") / "report.html")
    assert not console_errors and images >= 10 and broken == 0


def test_predict_names_a_malformed_cohort_table(demo, tmp_path):
    d, _ = demo
    table = tmp_path / "t.csv"
    table.write_text("specimen,file\nA,x.tiff\n")
    result = _invoke("predict", "--run", _run(d, "abmil-all"), "--cohort", table, "--out", tmp_path / "p.csv")
    assert result.exit_code == 2 and "needs a 'path' column" in result.output


def test_a_cohort_row_naming_a_folder_of_slides_gives_each_slide_that_rows_specimen(tmp_path):
    """A row whose path is a folder of slides expands to several slides: the rows after it keep their own specimens
    (pairing slides with rows by position gave them their neighbours')."""
    folder = tmp_path / "case-A"
    folder.mkdir()
    for name in ("a1.tiff", "a2.tiff"):
        make_tissue_slide(folder, name, size=(600, 500))
    make_tissue_slide(tmp_path, "b1.tiff", size=(600, 500))
    table = tmp_path / "cohort.csv"
    table.write_text("specimen,path\nA,case-A\nB,b1.tiff\n")
    inputs = read_inputs(None, table, None)
    assert [s.slide_id for s in inputs.sources] == ["a1", "a2", "b1"]
    assert inputs.specimen_of == {"a1": "A", "a2": "A", "b1": "B"}


def test_a_cohort_row_may_name_a_dicomweb_series_by_its_parts(tmp_path):
    table = tmp_path / "cohort.csv"
    table.write_text(
        "slide,specimen,dicomweb,study_uid,series_uid\ncmu,S1,http://127.0.0.1:9/dicom-web,1.2.3,1.2.3.4\n"
    )
    (source,) = read_inputs(None, table, None).sources
    assert (
        source.slide_id == "cmu" and source.path == "dicomweb+http://127.0.0.1:9/dicom-web/studies/1.2.3/series/1.2.3.4"
    )
