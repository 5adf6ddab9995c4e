"""QuPath GeoJSON in QuPath's own frame on a slide with OpenSlide bounds, with stable object ids.

The bounded slide is a Leica SCN made here (synth.slide_formats.write_leica_scn): its main image, the picture QuPath's
OpenSlide server shows (cropped to OpenSlide's bounds), is known pixel for pixel, so where the exported objects land
in QuPath is checked against that picture, not against mixmag's own reading of the slide.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from test_interop import runner

from mixmag.cli import app
from mixmag.interop import qupath
from mixmag.slides.params import TilingParams
from mixmag.slides.reader import Slide
from mixmag.slides.sources import SlideSource
from mixmag.slides.tiling import load_plan
from mixmag.synth.patterns import tissue_like
from mixmag.synth.slide_formats import write_leica_scn

OFFSET = (700, 500)  # where the main image sits in OpenSlide's level 0: bounds-x, bounds-y
MPP = 0.5


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    """(folder, main image, plans folder) of one tiled SCN slide whose OpenSlide bounds start at OFFSET."""
    folder = tmp_path_factory.mktemp("bounded")
    image = tissue_like(2600, 2200, MPP, seed=11)
    path = write_leica_scn(image, MPP, folder / "bounded.scn", OFFSET, (300, 400))
    from mixmag.stages.tile import tile_slides

    params = TilingParams(region_size=1, tissue_threshold=0.2)
    results = tile_slides([SlideSource(path, "bounded")], folder / "tiles", params)
    assert results[0].outcome == "tiled", results[0].error
    return folder, image, folder / "tiles"


def _export(plans, out):
    result = runner.invoke(app, ["export", "qupath", "--plans", str(plans), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "bounded.geojson").read_text())


def test_the_plan_records_openslide_bounds(bounded):
    _, image, plans = bounded
    plan = load_plan(plans / "bounded" / "plan.json")
    assert plan.slide.backend == "openslide"
    assert plan.slide.bounds == (OFFSET[0], OFFSET[1], image.shape[1], image.shape[0])
    assert plan.slide.width > image.shape[1] + OFFSET[0]  # mixmag tiles OpenSlide's uncropped level 0


def test_regions_land_on_the_tissue_qupath_shows(bounded, tmp_path):
    """Every exported region, read where QuPath draws it (on the cropped picture), shows the pixels mixmag tiled."""
    _, image, plans = bounded
    doc = _export(plans, tmp_path / "qp")
    assert doc["mixmag"]["offset"] == list(OFFSET) and doc["mixmag"]["size"] == [image.shape[1], image.shape[0]]
    assert "QuPath" in doc["mixmag"]["frame"] and doc["mixmag"]["slide"] == "bounded"
    plan = load_plan(plans / "bounded" / "plan.json")
    tiles = [f for f in doc["features"] if f["properties"]["objectType"] == "tile"]
    assert len(tiles) == len(plan.regions) >= 2
    with Slide(plan.slide.path) as slide:
        for feature in tiles:
            ring = np.array(feature["geometry"]["coordinates"][0])
            qx0, qy0 = np.maximum(np.ceil(ring.min(0)).astype(int), 0)  # whole pixels of the region in QuPath's
            qx1, qy1 = np.minimum(np.floor(ring.max(0)).astype(int), image.shape[1::-1])  # picture (the grid goes on)
            shown = image[qy0:qy1, qx0:qx1]  # what QuPath's cropped image holds there
            tiled = slide._read_raw(0, qx0 + OFFSET[0], qy0 + OFFSET[1], qx1 - qx0, qy1 - qy0)  # what mixmag read
            np.testing.assert_array_equal(shown, tiled)
            assert shown.std() > 5  # tissue, not the glass around it
    uncropped = np.array(tiles[0]["geometry"]["coordinates"][0]) + OFFSET  # the old export's frame: OFFSET px off
    box = plan.grid.window_box(*plan.regions[0], 1)
    assert uncropped[0].tolist() == pytest.approx([box.x0, box.y0])


def test_tissue_annotations_lie_on_tissue_in_qupaths_frame(bounded, tmp_path):
    from shapely.geometry import shape

    _, image, plans = bounded
    doc = _export(plans, tmp_path / "qp")
    tissue = [shape(f["geometry"]) for f in doc["features"] if f["properties"]["objectType"] == "annotation"]
    assert tissue
    saturation = image.max(axis=2).astype(int) - image.min(axis=2)
    for polygon in tissue:
        x0, y0, x1, y1 = polygon.bounds
        assert x0 >= -1 and y0 >= -1 and x1 <= image.shape[1] + 1 and y1 <= image.shape[0] + 1  # inside the picture
        point = polygon.representative_point()
        assert saturation[int(point.y), int(point.x)] > 15  # a tissue pixel of QuPath's picture


def test_object_ids_are_stable_uuids_from_slide_and_object(bounded, tmp_path):
    _, _, plans = bounded
    first, second = _export(plans, tmp_path / "a"), _export(plans, tmp_path / "b")
    ids = [f["id"] for f in first["features"]]
    assert ids == [f["id"] for f in second["features"]]  # the same objects again: QuPath sees the same ids
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i).version == 5 for i in ids)
    plan = load_plan(plans / "bounded" / "plan.json")
    row, col = plan.regions[0]
    assert qupath.object_id(plan, f"region/{row},{col}") in ids
    other = plan.model_copy(update={"slide": plan.slide.model_copy(update={"slide_id": "another"})})
    assert qupath.object_id(other, f"region/{row},{col}") not in ids  # another slide's region is another object


def test_a_plan_without_recorded_bounds_reads_them_from_the_slide(bounded):
    _, image, plans = bounded
    plan = load_plan(plans / "bounded" / "plan.json")
    older = plan.model_copy(update={"slide": plan.slide.model_copy(update={"bounds": None})})  # an earlier plan
    assert qupath.qupath_frame(older) == (OFFSET[0], OFFSET[1], image.shape[1], image.shape[0])
    gone = older.model_copy(update={"slide": older.slide.model_copy(update={"path": "/nonexistent/x.scn"})})
    with pytest.raises(qupath.InteropError, match=r"bounded: the plan predates .* re-tile it"):
        qupath.qupath_frame(gone)
