"""QuPath GeoJSON: a slide's tissue, its accepted regions and, after `mixmag predict`, where the model looked.

The format, as QuPath reads it (qupath/qupath at 29efd72, qupath-core's qupath/lib/io/QuPathTypeAdapters.java, named
PathObjectTypeAdapters.java before November 2022: PathObjectCollectionTypeAdapter.read, PathObjectTypeAdapter
.parseObject): a ``FeatureCollection`` whose ``features`` are GeoJSON ``Feature`` objects, each with a
``geometry`` (Polygon or MultiPolygon, in pixel coordinates of the full-resolution image, origin at its top-left
corner: QuPath docs, advanced/exporting_annotations "Units and origin") and ``properties``: ``objectType``
(``"annotation"``, ``"tile"``, ``"detection"``...; anything else becomes an annotation), ``name``, ``color`` [r, g, b],
``classification`` (``{"name", "color"}``), ``isLocked`` and ``measurements``, an object of name -> number since QuPath
0.4 (the older list of ``{"name", "value"}`` is also read). Measurements are numbers: non-finite ones are left out.

Every Feature may carry an ``id``, a UUID string that QuPath (0.4 on) gives the object it makes (parseObject).

The frame. QuPath opens MRXS, SCN and the other formats OpenSlide reports ``openslide.bounds-x/y/width/height`` for
with its OpenSlide server, which crops the image to those bounds unless told ``--no-crop`` (qupath/qupath,
qupath-extension-openslide/.../OpenslideImageServer.java at b273689, l.160-187: bounds read when all four properties
parse as integers; l.365-366: QuPath's pixel (x, y) is read at OpenSlide's (x + bounds-x, y + bounds-y)). mixmag's
plans are in OpenSlide's uncropped level 0, so level-0 coordinates drawn unchanged land bounds-x/y pixels off in QuPath.
mixmag writes and reads QuPath's frame: level-0 px minus the plan's recorded bounds' (x, y) (`qupath_frame`; (0, 0) for
slides without bounds) and names it in a foreign member ``"mixmag"`` of the FeatureCollection (``frame``, ``offset``,
``size``, ``slide``), which QuPath's reader ignores.

What mixmag writes, one ``<slide>.geojson`` per plan, in QuPath's frame, each object with an id fixed by the slide and
the object (uuid5: exporting again gives the same ids):
  - the tissue the tiler found, as locked annotations of class "mixmag tissue": the mask `mixmag tile` saved
    (tissue_mask.png, at the thumbnail resolution), traced through its boundary pixels' centres and made valid;
  - every accepted t x t region as a tile of class "mixmag region", exactly the plan's window box
    (geometry.CellGrid.window_box), with its tissue fraction and row/col as measurements;
  - with `--attributions` (the `<slide>.npz` maps `mixmag predict` writes in its work folder's heatmaps/), each
    region's AB-MIL attention (its weight in the pooling that makes the slide's score), its score contribution
    (a_i (w . h_i) summed over its instances: the regions' contributions add up to the slide logit minus the
    classifier's bias where the regions hold the whole bag) and, per magnification, the
    attribution falling on its tiles and that magnification's share of it; the slide's score on each tissue annotation.
"""

from __future__ import annotations

import json
import uuid
import zipfile
from pathlib import Path

import cv2
import numpy as np
from shapely.affinity import translate
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.validation import make_valid

from ..errors import MixmagError
from ..fileio import open_regular, write_atomic
from ..ids import path_for_id
from ..images import PictureError, read_picture
from ..slides.tiling import TilingPlan
from .assemble import InteropError

TISSUE_MASK = "tissue_mask.png"  # written beside plan.json by `mixmag tile` (stages/tile.py)
TISSUE_CLASS = {"name": "mixmag tissue", "color": [0, 150, 60]}
REGION_CLASS = {"name": "mixmag region", "color": [30, 90, 220]}
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "mixmag/qupath-objects")
FRAME = "QuPath: level-0 px minus `offset` (OpenSlide's bounds-x/y, which QuPath's OpenSlide server crops to)"


def tissue_polygons(mask: np.ndarray, width: int, height: int) -> list[Polygon]:
    """Valid polygons (with holes) of a boolean mask spanning a width x height level-0 image."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    scale = np.array([width / mask.shape[1], height / mask.shape[0]])
    ring = [(c.reshape(-1, 2) + 0.5) * scale for c in contours]
    polygons = []
    for i, (_, _, child, parent) in enumerate(hierarchy[0]):
        if parent != -1 or len(ring[i]) < 3:
            continue
        holes = []
        while child != -1:
            if len(ring[child]) >= 3:
                holes.append(ring[child])
            child = hierarchy[0][child][0]
        polygons += _polygon_parts(make_valid(Polygon(ring[i], holes)))
    return polygons


def _polygon_parts(geometry) -> list[Polygon]:
    if isinstance(geometry, Polygon):
        return [geometry] if geometry.area > 0 else []
    if isinstance(geometry, MultiPolygon) or hasattr(geometry, "geoms"):
        return [p for g in geometry.geoms for p in _polygon_parts(g)]
    return []


def attribution_budget(plan: TilingPlan) -> int:
    """The most bytes a plan's attribution file may expand to: float64 maps of every level's grid, twice over, and
    16 MiB for regions, weights and summary (a compressed .npz that declares more is a decompression bomb)."""
    cells = sum(plan.n_rows * plan.n_cols * 4**i for i in range(plan.levels.n_levels))
    return 16 * cells + (16 << 20)


def _declared_bytes(handle) -> int:
    """What the members of a .npz (a zip) declare they expand to, read from its directory alone."""
    with zipfile.ZipFile(handle) as archive:
        return sum(member.file_size for member in archive.infolist())


def read_attribution(path: Path, plan: TilingPlan) -> dict:
    """A slide's attribution file from `mixmag predict` (maps, regions, weights, summary), checked against the plan
    (and what it declares against the plan's size, before anything is decompressed)."""
    try:
        with open_regular(path, "attribution file") as handle:
            declared, budget = _declared_bytes(handle), attribution_budget(plan)
            if declared > budget:
                raise InteropError(
                    f"{path}: the attribution file declares {declared / 2**20:,.0f} MiB, more than the "
                    f"{budget / 2**20:,.0f} MiB plan {plan.slide.slide_id}'s maps can take (a decompression bomb?); "
                    "run `mixmag predict` again on this plan's store"
                )
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        summary = json.loads(str(data.pop("summary")))
        regions = np.asarray(data.get("regions", np.zeros((0, 2))), np.int64).reshape(-1, 2)
        weights = np.asarray(data.get("region_weight", []), np.float64).ravel()
        # older predict outputs carry no contributions: the measurement is then left out
        contribution = np.asarray(data.get("region_contribution", np.full(len(weights), np.nan)), np.float64).ravel()
        maps = {name: np.asarray(data.get(f"map_{name}"), np.float64) for name in plan.levels.names}
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        raise InteropError(
            f"{path}: not a readable attribution file of `mixmag predict` ({exc}); re-run predict"
        ) from None
    if (
        not np.array_equal(regions, np.asarray(plan.regions, np.int64).reshape(-1, 2))
        or len(weights) != len(regions)
        or len(contribution) != len(regions)
        or not _maps_cover(plan, maps)
    ):
        raise InteropError(
            f"{path}: these predictions were made on other regions than plan {plan.slide.slide_id}'s "
            "(a stale work folder?); run `mixmag predict` again on this plan's store"
        )
    return {
        "maps": maps,
        "weights": weights,
        "contribution": contribution,
        "score": _finite_number(summary.get("score")) if isinstance(summary, dict) else None,
    }


def _finite_number(value: object) -> float | None:
    """A score QuPath can show as a measurement, or None (a string, a list or NaN in a hostile file)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return None
    return float(value)


def _maps_cover(plan: TilingPlan, maps: dict[str, np.ndarray]) -> bool:
    """Every level's map is a 2-D grid large enough for every accepted region at that level."""
    t = plan.params.region_size
    rows, cols = (max((r[k] for r in plan.regions), default=-t) + t for k in (0, 1))
    need = [(rows * 2**i, cols * 2**i) for i in range(len(maps))]
    return all(m.ndim == 2 and m.shape[0] >= h and m.shape[1] >= w for m, (h, w) in zip(maps.values(), need))


def region_measurements(plan: TilingPlan, k: int, attribution: dict | None) -> dict:
    """The numbers QuPath shows for region k: tissue, place, and where the model looked inside it."""
    row, col = plan.regions[k]
    out = {"tissue fraction": plan.region_tissue[k], "region row": row, "region col": col}
    if attribution is None:
        return out
    t = plan.params.region_size
    out["AB-MIL attention"] = float(attribution["weights"][k])
    out["score contribution"] = float(attribution["contribution"][k])  # NaN (left out) for older predict outputs
    per_level = {}
    for i, name in enumerate(plan.levels.names):
        s = 2**i
        block = attribution["maps"][name][row * s : (row + t) * s, col * s : (col + t) * s]
        per_level[name] = float(np.nansum(block)) if block.size else float("nan")
    total = sum(v for v in per_level.values() if np.isfinite(v))
    for name, value in per_level.items():
        out[f"attribution {name}"] = value
        out[f"attribution share {name}"] = value / total if total > 0 else float("nan")
    return out


def qupath_frame(plan: TilingPlan) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the part of level 0 QuPath shows as its image: OpenSlide's bounds where the plan
    recorded them (QuPath's OpenSlide server crops to them by default, OpenslideImageServer.java l.160-187 at
    b273689), else the whole slide. Plans made before mixmag recorded bounds are answered by opening the slide."""
    if plan.slide.bounds is not None:
        return tuple(plan.slide.bounds)
    if plan.slide.backend != "openslide":  # TiffSlide-read TIFFs, OME-Zarr, CZI: OpenSlide reports no bounds for them
        return (0, 0, plan.slide.width, plan.slide.height)
    try:
        with plan.open_slide() as slide:
            return slide.bounds
    except MixmagError as exc:
        raise InteropError(
            f"{plan.slide.slide_id}: the plan predates mixmag's record of OpenSlide's bounds and the slide cannot be "
            f"opened to read them ({exc}); re-tile it (`mixmag tile --force`) so QuPath's frame is known"
        ) from None


def object_id(plan: TilingPlan, what: str) -> str:
    """A QuPath object id (UUID, read since QuPath 0.4) fixed by slide and object: exporting again gives the same ids,
    so QuPath can tell a re-import from new objects (its importer, InteractiveObjectImporter.promptToImportObjects at
    e56bf11, asks before adding objects whose ids the image already holds)."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{plan.slide.slide_id}/{what}"))


def slide_collection(plan: TilingPlan, mask: np.ndarray | None, attribution: dict | None = None) -> dict:
    """The FeatureCollection of one slide, in QuPath's frame (`qupath_frame`), which the file names."""
    x0, y0, width, height = qupath_frame(plan)
    features = []
    score = {"slide score": attribution["score"]} if attribution and attribution.get("score") is not None else {}
    for k, polygon in enumerate(tissue_polygons(mask, plan.slide.width, plan.slide.height) if mask is not None else []):
        geometry = mapping(translate(polygon, -x0, -y0))
        oid = object_id(plan, f"tissue/{k}")
        features.append(_feature(oid, geometry, "annotation", "tissue", TISSUE_CLASS, score, locked=True))
    for k, (row, col) in enumerate(plan.regions):
        box = plan.grid.window_box(row, col, plan.params.region_size)
        a, b, c, d = box.x0 - x0, box.y0 - y0, box.x1 - x0, box.y1 - y0
        ring = [[a, b], [c, b], [c, d], [a, d], [a, b]]
        features.append(
            _feature(
                object_id(plan, f"region/{row},{col}"),
                {"type": "Polygon", "coordinates": [ring]},
                "tile",
                f"region {row},{col}",
                REGION_CLASS,
                region_measurements(plan, k, attribution),
            )
        )
    if width == plan.slide.width or height == plan.slide.height:  # QuPath keeps the full size then (l.178)
        width, height = plan.slide.width, plan.slide.height
    frame = {
        "slide": plan.slide.slide_id,
        "frame": FRAME,
        "offset": [x0, y0],
        "size": [width, height],
        "level0_size": [plan.slide.width, plan.slide.height],
    }
    return {"type": "FeatureCollection", "mixmag": frame, "features": features}


def _feature(
    oid: str, geometry: dict, kind: str, name: str, klass: dict, measurements: dict, locked: bool = False
) -> dict:
    properties = {"objectType": kind, "name": name, "classification": klass, "color": klass["color"]}
    if locked:
        properties["isLocked"] = True
    numbers = {k: float(v) for k, v in measurements.items() if v is not None and np.isfinite(float(v))}
    if numbers:
        properties["measurements"] = numbers
    return {"type": "Feature", "id": oid, "geometry": json.loads(json.dumps(geometry)), "properties": properties}


def write_slide(plan_path: Path, plan: TilingPlan, out: Path, attributions: Path | None = None) -> Path:
    """`<out>/<slide>.geojson` for one plan (tissue from the mask beside it; predictions if a folder is given)."""
    slide = plan.slide.slide_id
    target = path_for_id(out, slide, ".geojson", where=str(plan_path))
    mask_path = Path(plan_path).parent / TISSUE_MASK
    try:
        mask = read_picture(mask_path, what="tissue mask", mode="L")
    except PictureError as exc:
        raise InteropError(f"{exc} (`mixmag tile` for slide {slide})") from None
    attribution = None
    if attributions is not None:
        npz = path_for_id(attributions, slide, ".npz", where=str(attributions))
        if not npz.is_file():
            raise InteropError(
                f"{npz}: no predictions for slide {slide}; pass the heatmaps/ folder of `mixmag predict`'s "
                "work folder, or leave out --attributions"
            )
        attribution = read_attribution(npz, plan)
    collection = slide_collection(plan, mask > 127, attribution)
    return write_atomic(target, json.dumps(collection, allow_nan=False))
