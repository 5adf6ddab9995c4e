"""`mixmag tile --annotations`: QuPath annotations restrict (or replace) the tissue, in QuPath's frame, recorded in
the plan; mixmag's own export read back gives the same plan; hostile files are refused in one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tissue_slide
from test_interop import runner

from mixmag.cli import app
from mixmag.images import read_picture
from mixmag.interop import annotations as ann
from mixmag.interop.annotations import AnnotationRule, AnnotationSource
from mixmag.slides.params import TilingParams
from mixmag.slides.sources import SlideSource
from mixmag.slides.tiling import load_plan
from mixmag.stages.tile import tile_slides
from mixmag.synth.patterns import tissue_like
from mixmag.synth.slide_formats import write_leica_scn

PARAMS = TilingParams(region_size=1, tissue_threshold=0.2)
OFFSET = (700, 500)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """A plain TIFF and a Leica SCN with OpenSlide bounds at OFFSET."""
    folder = tmp_path_factory.mktemp("annotated")
    tiff = make_tissue_slide(folder, "plain.tiff", downsamples=(1, 4, 16), seed=3)
    scn = write_leica_scn(tissue_like(2600, 2200, 0.5, seed=11), 0.5, folder / "bounded.scn", OFFSET, (300, 400))
    return {"plain": tiff, "bounded": scn}


def _tile(path: Path, slide: str, out: Path, drawn: AnnotationSource | None = None):
    result = tile_slides([SlideSource(path, slide)], out, PARAMS, annotations=drawn)[0]
    return result


def _mask(folder: Path) -> np.ndarray:
    return read_picture(folder / "tissue_mask.png", what="tissue mask", mode="L") > 127


def _geojson(path: Path, *features) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": list(features)}))
    return path


def _box(x0, y0, x1, y1, klass: str | None, object_type="annotation") -> dict:
    props = {"objectType": object_type}
    if klass is not None:
        props["classification"] = {"name": klass, "color": [200, 0, 0]}
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}


@pytest.mark.parametrize("slide", ["plain", "bounded"])
def test_export_then_import_gives_the_same_plan(slides, tmp_path, slide):
    """Tissue exported to QuPath (in its frame: bounds applied on the SCN) and read back as the annotations to tile
    inside: the same mask pixel for pixel, the same cells, regions and tissue fractions."""
    assert _tile(slides[slide], slide, tmp_path / "tiles").outcome == "tiled"
    result = runner.invoke(app, ["export", "qupath", "--plans", str(tmp_path / "tiles"), "--out", str(tmp_path / "qp")])
    assert result.exit_code == 0, result.output
    args = ["tile", str(slides[slide]), "--out", str(tmp_path / "again"), "--annotations", str(tmp_path / "qp")]
    args += ["--region-size", "1", "--tissue-threshold", "0.2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    first, again = (
        load_plan(tmp_path / "tiles" / slide / "plan.json"),
        load_plan(tmp_path / "again" / slide / "plan.json"),
    )
    np.testing.assert_array_equal(_mask(tmp_path / "tiles" / slide), _mask(tmp_path / "again" / slide))
    assert again.regions and again.regions == first.regions and again.cells == first.cells
    assert again.tissue_grid == first.tissue_grid and again.region_tissue == first.region_tissue
    assert again.annotations.startswith(f"{slide}.geojson#") and first.annotations is None


def test_regions_are_kept_where_tissue_inside_the_annotation_passes(slides, tmp_path):
    whole = _tile(slides["plain"], "plain", tmp_path / "whole").plan
    cell = whole.cell_px
    # a Tumor annotation over the left two columns of cells, a Pen mark over cell (0, 0), a tile object ignored
    doc = _geojson(
        tmp_path / "qp" / "plain.geojson",
        _box(0, 0, 2 * cell, whole.slide.height, "Tumor"),
        _box(0, 0, cell, cell, "Pen"),
        _box(0, 0, whole.slide.width, whole.slide.height, "Tumor", object_type="tile"),
    )
    drawn = AnnotationSource(doc, AnnotationRule(include=("Tumor",)))
    plan = _tile(slides["plain"], "plain", tmp_path / "tumour", drawn).plan
    grid, before = np.array(plan.tissue_grid), np.array(whole.tissue_grid)
    one_px = PARAMS.tissue.thumbnail_mpp / PARAMS.levels.cell_um  # a cell's width of one thumbnail pixel column
    assert (grid[:, 2:] <= one_px + 1e-6).all() and (grid[:, 3:] == 0).all()  # outside the tumour: its rim at most
    np.testing.assert_allclose(grid[1:, :2], before[1:, :2], atol=0.02)  # inside it: the tissue found there
    assert grid[0, 0] == 0 and before[0, 0] > 0.2  # under the pen: cut out
    assert set(plan.regions) < set(whole.regions) and all(c < 2 for _, c in plan.regions) and (0, 0) not in plan.regions
    assert plan.annotations.endswith(
        "restrict include=Tumor exclude=Pen,Pen*,Artifact,Artefact,Ignore*,Background,Marker*"
    )


def test_replace_mode_takes_the_annotations_as_the_tissue(slides, tmp_path):
    whole = _tile(slides["plain"], "plain", tmp_path / "whole").plan
    cell = whole.cell_px
    doc = _geojson(tmp_path / "a.geojson", _box(cell, 0, 2 * cell, cell, None))  # unclassified: included by default
    plan = _tile(slides["plain"], "plain", tmp_path / "replaced", AnnotationSource(doc, AnnotationRule(mode="replace")))
    assert plan.plan.regions == [(0, 1)] and plan.plan.tissue_grid[0][1] == pytest.approx(1.0, abs=0.02)


def test_a_changed_annotation_file_re_tiles_and_an_unchanged_one_is_skipped(slides, tmp_path):
    cell = _tile(slides["plain"], "plain", tmp_path / "whole").plan.cell_px
    doc = _geojson(tmp_path / "a.geojson", _box(0, 0, 2 * cell, 2 * cell, "Tumor"))
    drawn = AnnotationSource(doc)
    assert _tile(slides["plain"], "plain", tmp_path / "t", drawn).outcome == "tiled"
    assert _tile(slides["plain"], "plain", tmp_path / "t", drawn).outcome == "skipped"
    _geojson(doc, _box(0, 0, 3 * cell, 2 * cell, "Tumor"))
    again = _tile(slides["plain"], "plain", tmp_path / "t", drawn)
    assert again.outcome == "tiled" and any(c == 2 for _, c in again.plan.regions)
    assert _tile(slides["plain"], "plain", tmp_path / "t", None).outcome == "tiled"  # annotations dropped: re-tiled


def test_a_named_class_that_is_not_drawn_tiles_nothing_and_says_so(slides, tmp_path):
    doc = _geojson(tmp_path / "a.geojson", _box(0, 0, 5000, 5000, "Stroma"))
    result = _tile(slides["plain"], "plain", tmp_path / "t", AnnotationSource(doc, AnnotationRule(include=("Tumor",))))
    assert not result.plan.regions
    assert any("no annotation of class Tumor in a.geojson (classes: Stroma)" in w for w in result.plan.warnings)


def test_class_names_and_the_files_qupath_writes(tmp_path):
    rule = AnnotationRule()
    assert rule.role("pen") == "exclude" and rule.role("Pen marker") == "exclude" and rule.role("Tumor") == "include"
    assert AnnotationRule(include=("Tumor*",)).role("Tumor: Positive") == "include"
    assert AnnotationRule(include=("Tumor",)).role("Stroma") is None
    feature = _box(0, 0, 10, 10, None)
    feature["properties"]["classification"] = {"names": ["Tumor", "Positive"]}
    (tmp_path / "list.json").write_text(json.dumps([feature]))  # QuPath 0.2-0.3 wrote a bare list
    read = ann.read_annotations(tmp_path / "list.json", AnnotationRule(include=("Tumor: Positive",)))
    assert len(read.include) == 1 and read.classes == {"Tumor: Positive": 1}
    feature = _box(0, 0, 10, 10, "Tumor\x1b[31m\n")  # a terminal escape in a class name never reaches a console
    assert ann._class_name(feature["properties"]["classification"]) == "Tumor[31m"
    (tmp_path / "one.geojson").write_text(json.dumps(_box(0, 0, 10, 10, "Tumor")))  # one Feature
    assert len(ann.read_annotations(tmp_path / "one.geojson", rule).include) == 1
    folder = tmp_path / "per-slide"
    _geojson(folder / "scan 7.svs.geojson", feature)  # QuPath names an image by its file name
    assert ann.find_annotation_file(folder, "s7", "/data/scan 7.svs").name == "scan 7.svs.geojson"


def _nested(depth: int) -> str:
    return '{"type": "FeatureCollection", "features": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"not GeoJSON"),
        (_nested(100_000), r"not GeoJSON \(nested too deeply\)"),
        ('{"type": "Topology"}', r"not a GeoJSON FeatureCollection, Feature or list of Features"),
        (
            json.dumps(
                {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, "x"], [2, 2]]]}}
            ),
            r"a polygon ring that is not a list of \[x, y\] numbers",
        ),
        (
            '{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [NaN, 1], [2, 2]]]}}',
            r"coordinates that are not finite pixel positions",
        ),
        (
            json.dumps(
                {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1e300, 1], [2, 2]]]}}
            ),
            r"coordinates that are not finite pixel positions",
        ),
    ],
)
def test_hostile_annotation_files_fail_the_slide_in_one_sentence(slides, tmp_path, content, message):
    path = tmp_path / "plain.geojson"
    path.write_text(content)
    result = _tile(slides["plain"], "plain", tmp_path / "t", AnnotationSource(path))
    assert result.outcome == "failed" and str(path) in result.error
    assert pytest.importorskip("re").search(message, result.error), result.error
    assert not (tmp_path / "t" / "plain" / "plan.json").exists()


@pytest.mark.parametrize("coordinates", [[], [[[0, 0], [4000, 4000]]]], ids=["empty", "two-points"])
def test_an_included_polygon_without_an_area_is_refused_not_taken_for_no_annotation(slides, tmp_path, coordinates):
    """Before: a Polygon with empty coordinates (or a 2-point outline) was left out silently; as the only included
    one, the slide then counted as having no include annotation, and its whole tissue was tiled."""
    empty = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": coordinates}, "properties": {}}
    path = _geojson(tmp_path / "plain.geojson", _box(0, 0, 10, 10, "Pen"), empty)
    result = _tile(slides["plain"], "plain", tmp_path / "t", AnnotationSource(path))
    assert result.outcome == "failed", result
    assert f"{path}: feature 1 is a Polygon without an area" in result.error, result.error
    assert not (tmp_path / "t" / "plain" / "plan.json").exists()


def test_annotation_files_are_bounded_in_bytes_features_and_vertices(tmp_path, monkeypatch):
    ring = [[float(i % 97), float(i // 97)] for i in range(300)] + [[0.0, 0.0]]
    doc = _geojson(
        tmp_path / "a.geojson", *[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}}] * 4
    )
    monkeypatch.setattr(ann, "MAX_VERTICES", 1000)
    with pytest.raises(ann.AnnotationError, match=r"more than 1,000 vertices; simplify the annotations in QuPath"):
        ann.read_annotations(doc, AnnotationRule())
    monkeypatch.setattr(ann, "MAX_FEATURES", 3)
    with pytest.raises(ann.AnnotationError, match=r"4 objects, more than 3"):
        ann.read_annotations(doc, AnnotationRule())
    monkeypatch.setattr(ann, "MAX_BYTES", 100)
    with pytest.raises(ann.AnnotationError, match=r"export the annotations again"):
        ann.read_annotations(doc, AnnotationRule())
    fifo = tmp_path / "fifo.geojson"
    import os

    os.mkfifo(fifo)
    with pytest.raises(ann.AnnotationError, match=r"FIFO"):
        ann.read_annotations(fifo, AnnotationRule())


def test_the_cli_refuses_one_file_for_many_slides_and_names_a_slide_without_one(slides, tmp_path):
    doc = _geojson(tmp_path / "qp" / "plain.geojson", _box(0, 0, 5000, 5000, "Tumor"))
    args = ["tile", str(slides["plain"]), str(slides["bounded"]), "--out", str(tmp_path / "t")]
    result = runner.invoke(app, [*args, "--annotations", str(doc)])
    assert result.exit_code == 2 and "is one file for 2 slides; pass a folder" in result.output
    result = runner.invoke(app, [*args, "--annotations", str(tmp_path / "qp"), "--region-size", "1"])
    assert result.exit_code == 1
    assert "bounded: no annotation file in" in result.output and "bounded.geojson" in result.output
    assert load_plan(tmp_path / "t" / "plain" / "plan.json").annotations.startswith("plain.geojson#")
    result = runner.invoke(app, ["tile", str(slides["plain"]), "--annotation-include", "Tumor"])
    assert result.exit_code == 2 and "need --annotations" in result.output
