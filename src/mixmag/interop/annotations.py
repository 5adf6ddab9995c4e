"""QuPath annotations in: the regions a user drew restrict (or replace) the tissue `mixmag tile` finds.

Read from QuPath's GeoJSON (File › Export objects, or a script's per-slide ``.geojson``): a FeatureCollection, a bare
list of Features (QuPath 0.2-0.3) or one Feature; only annotations count (``objectType`` "annotation" or none, as
QuPath reads them: qupath interop.qupath's docstring), Polygon and MultiPolygon geometries, in QuPath's frame (level-0
px less OpenSlide's bounds: `qupath.qupath_frame`), which mixmag's own exports use too. Each annotation's class
(``classification.name``, or ``names`` joined by ": " for a derived class; "" when unclassified) picks its role by
`AnnotationRule`: excluded when it matches an exclude pattern (Pen, Artifact... by default), included when it matches an
include pattern (every class by default).

On the tissue thumbnail (`rasterise`): the included polygons' pixels (boundary pixels kept, holes' interiors out) and
the excluded ones' pixels. "restrict" keeps tissue inside the included annotations and outside the excluded ones (when
no annotation is included and no include class was named, the whole tissue less the exclusions); "replace" takes the
included annotations less the excluded ones as the tissue. Regions are then accepted as ever: where the tissue left
passes the threshold. The plan records the file's digest and the rule (`AnnotationSet.record`), so a changed
annotation file re-tiles. A file is untrusted: its size, feature and vertex counts are bounded, coordinates must be
finite numbers, and anything else is refused in one sentence naming the file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..fileio import FileTooLargeError, UnsafePathError, read_bytes_limited
from .assemble import InteropError
from .files import slide_name

MAX_BYTES = 64 << 20  # a QuPath export of a few thousand detailed annotations is a few MB; JSON inflates ~50x in memory
MAX_FEATURES = 100_000
MAX_VERTICES = 2_000_000
MAX_COORD = 2.0**31  # level-0 px: far beyond any slide (tiling's MAX_SLIDE_SIDE_PX is 2^24)
DEFAULT_EXCLUDE = ("Pen", "Pen*", "Artifact", "Artefact", "Ignore*", "Background", "Marker*")
MODES = ("restrict", "replace")
SUFFIXES = (".geojson", ".json")


class AnnotationError(InteropError):
    """An annotation file mixmag will not use, with the file and the fix."""


@dataclass(frozen=True)
class AnnotationRule:
    """Which annotation classes include, which exclude, and whether the included ones restrict or replace tissue."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    mode: str = "restrict"

    def role(self, klass: str) -> str | None:
        """'exclude', 'include' or None (ignored) for a class name; patterns match case-insensitively."""
        name = klass.casefold()
        if any(fnmatch.fnmatchcase(name, p.casefold()) for p in self.exclude):
            return "exclude"
        if any(fnmatch.fnmatchcase(name, p.casefold()) for p in self.include):
            return "include"
        return None

    @property
    def names_classes(self) -> bool:
        return tuple(self.include) != ("*",)

    def describe(self) -> str:
        return f"{self.mode} include={','.join(self.include)} exclude={','.join(self.exclude)}"


@dataclass
class AnnotationSet:
    """One slide's annotations, as polygons (exterior ring, hole rings) in QuPath's frame, by role."""

    path: Path
    digest: str
    rule: AnnotationRule
    include: list[list[np.ndarray]] = field(default_factory=list)
    exclude: list[list[np.ndarray]] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=dict)  # class name -> annotations read

    @property
    def record(self) -> str:
        """What the plan records: the file, its digest and the rule (any change re-tiles)."""
        return f"{self.path.name}#{self.digest[:16]} {self.rule.describe()}"

    def apply(self, mask: np.ndarray, width: int, height: int, bounds: tuple[int, int, int, int]) -> tuple:
        """(mask, warnings): the tissue mask of a width x height slide after the rule, QuPath's frame starting at
        bounds' (x, y) in level 0."""
        shape = mask.shape
        included = rasterise(self.include, shape, width, height, bounds[:2])
        excluded = rasterise(self.exclude, shape, width, height, bounds[:2])
        warnings = []
        if self.rule.mode == "replace":
            out = included & ~excluded
        elif self.include or self.rule.names_classes:
            out = mask & included & ~excluded
        else:
            out = mask & ~excluded
        if self.include and not included.any():
            warnings.append(
                f"the {len(self.include)} included annotation(s) in {self.path.name} lie outside this "
                f"{width} x {height} px slide (QuPath's frame); were they exported from another image? Nothing is "
                "tiled"
            )
        if not self.include and self.rule.names_classes:
            seen = ", ".join(sorted(k or "unclassified" for k in self.classes)) or "none"
            warnings.append(
                f"no annotation of class {', '.join(self.rule.include)} in {self.path.name} (classes: {seen}); "
                "nothing is tiled"
            )
        return out, warnings


@dataclass(frozen=True)
class AnnotationSource:
    """`mixmag tile --annotations FILE|FOLDER` with its rule: each slide's annotations on demand."""

    root: Path
    rule: AnnotationRule = AnnotationRule()

    def for_slide(self, slide_id: str, slide_path: str | Path) -> AnnotationSet:
        return read_annotations(find_annotation_file(self.root, slide_id, slide_path), self.rule)


def find_annotation_file(root: Path, slide_id: str, slide_path: str | Path) -> Path:
    """The annotation file of one slide: `root` itself when it is a file, else `<root>/<name>.geojson` (or .json)
    for the slide id, the slide file's name without extension, or with it (QuPath names images by file name)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        return root  # a file, or a FIFO or device that reading refuses in one sentence saying what it is
    if not root.is_dir():
        raise AnnotationError(f"{root}: no such annotation file or folder; pass QuPath's exported .geojson")
    names = [n for n in dict.fromkeys([slide_id, slide_name(str(slide_path)), Path(slide_path).name]) if _plain(n)]
    found = [root / f"{n}{s}" for n in names for s in SUFFIXES if (root / f"{n}{s}").exists()]  # a FIFO: said
    if not found:
        tried = ", ".join(f"{n}.geojson" for n in names)
        raise AnnotationError(
            f"{slide_id}: no annotation file in {root} (looked for {tried}); export the slide's annotations from "
            "QuPath under one of these names, or tile it without --annotations"
        )
    if len(found) > 1:
        raise AnnotationError(
            f"{slide_id}: {root} holds {len(found)} annotation files for this slide "
            f"({', '.join(p.name for p in found)}); keep one"
        )
    return found[0]


def _plain(name: str) -> bool:
    """A file name to look up inside the folder (read only): no separators, no parent, no hidden or empty name."""
    return bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0") and name.isprintable()


def read_annotations(path: Path, rule: AnnotationRule) -> AnnotationSet:
    """A QuPath GeoJSON file's annotations by role (bounded, checked; see the module docstring)."""
    path = Path(path)
    try:
        data = read_bytes_limited(path, MAX_BYTES, what="annotation file")
    except (UnsafePathError, FileTooLargeError) as exc:
        raise AnnotationError(f"{exc}; export the annotations again from QuPath") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read the annotation file ({exc.strerror or exc})") from None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:120]
        raise AnnotationError(f"{path}: not GeoJSON ({why}); export the annotations from QuPath as GeoJSON") from None
    result = AnnotationSet(path=path, digest=hashlib.sha256(data).hexdigest(), rule=rule)
    vertices = 0
    for index, feature in _features(path, doc):
        props = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
        if str(props.get("objectType", props.get("type", "annotation"))) != "annotation":
            continue  # tiles, detections, cells: not regions a user drew
        klass = _class_name(props.get("classification"))
        result.classes[klass] = result.classes.get(klass, 0) + 1
        role = rule.role(klass)
        polygons = _polygons(path, feature.get("geometry"), index)
        vertices += sum(len(ring) for polygon in polygons for ring in polygon)
        if vertices > MAX_VERTICES:
            raise AnnotationError(
                f"{path}: more than {MAX_VERTICES:,} vertices; simplify the annotations in QuPath "
                "(Objects › Annotations › Simplify shape) and export again"
            )
        if role is not None:
            getattr(result, role).extend(polygons)
    return result


def _features(path: Path, doc) -> list[tuple[int, dict]]:
    """(index in the file, feature) of every object; the index names a feature in an error."""
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, dict) and isinstance(doc.get("features"), list):
        features = doc["features"]
    elif isinstance(doc, list):
        features = doc
    else:
        raise AnnotationError(
            f"{path}: not a GeoJSON FeatureCollection, Feature or list of Features; export the annotations from QuPath"
        )
    if len(features) > MAX_FEATURES:
        raise AnnotationError(f"{path}: {len(features):,} objects, more than {MAX_FEATURES:,}; export annotations only")
    return [(i, f) for i, f in enumerate(features) if isinstance(f, dict)]


def _class_name(classification) -> str:
    """QuPath's class name: {"name": ...}, {"names": [...]} (a derived class) or a bare string; "" if none. Printable
    characters only, at most 200 (the name may reach a console in a warning)."""
    name = ""
    if isinstance(classification, str):
        name = classification
    elif isinstance(classification, dict):
        names = classification.get("names")
        if isinstance(classification.get("name"), str):
            name = classification["name"]
        elif isinstance(names, list) and all(isinstance(n, str) for n in names[:50]):
            name = ": ".join(names[:50])
    return "".join(c for c in name[:400] if c.isprintable())[:200]


def _polygons(path: Path, geometry, index: int) -> list[list[np.ndarray]]:
    """[exterior, *holes] rings (float64 (K, 2)) of a Polygon or MultiPolygon; other geometries give none. A polygon
    without an area (no coordinates, an outline of fewer than 3 points) is refused: left out, it could leave a slide
    with no included region, and then the whole tissue would be tiled."""
    if not isinstance(geometry, dict):
        return []
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        parts = [coords]
    elif kind == "MultiPolygon" and isinstance(coords, list):
        parts = coords
    else:
        return []  # points, lines: no area to tile
    out = []
    for part in parts:
        if not isinstance(part, list):
            raise AnnotationError(f"{path}: a {kind} whose coordinates are not rings of [x, y]; export it again")
        rings = [_ring(path, ring) for ring in part]
        if not rings or len(rings[0]) < 3:
            raise AnnotationError(
                f"{path}: feature {index} is a {kind} without an area (an outline of "
                f"{len(rings[0]) if rings else 0} points); delete or redraw it in QuPath and export again"
            )
        out.append([r for r in rings if len(r) >= 3])
    if not out:
        raise AnnotationError(
            f"{path}: feature {index} is a {kind} with no polygons; delete or redraw it in QuPath and export again"
        )
    return out


def _ring(path: Path, ring) -> np.ndarray:
    try:
        array = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        array = None
    if array is None or array.ndim != 2 or array.shape[1] < 2:
        raise AnnotationError(f"{path}: a polygon ring that is not a list of [x, y] numbers; export it again")
    array = array[:, :2]
    if not np.isfinite(array).all() or np.abs(array).max(initial=0) > MAX_COORD:
        raise AnnotationError(
            f"{path}: a polygon with coordinates that are not finite pixel positions; export it again"
        )
    return array


def rasterise(
    polygons: Iterable[list[np.ndarray]], shape: tuple[int, int], width: int, height: int, origin: tuple[int, int]
) -> np.ndarray:
    """Boolean mask (shape) of polygons given in QuPath's frame (level-0 px less `origin`) on a thumbnail spanning the
    width x height level 0: a pixel is in when its centre is inside or on the boundary of an exterior ring and not
    strictly inside a hole (so a mask traced through its boundary pixels' centres, as `qupath.tissue_polygons`
    writes it, comes back pixel for pixel)."""
    h, w = shape[:2]
    out = np.zeros((h, w), np.uint8)
    scale = np.array([w / width, h / height])
    shift = 4  # cv2 fixed-point vertices: 1/16 px

    def points(ring: np.ndarray) -> np.ndarray:
        pixel = (ring + np.asarray(origin, np.float64)) * scale - 0.5  # pixel centres at integers
        return np.rint(np.clip(pixel, -(2**20), 2**20) * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)

    for polygon in polygons:
        exterior, holes = points(polygon[0]), [points(r) for r in polygon[1:]]
        piece = np.zeros((h, w), np.uint8)
        cv2.fillPoly(piece, [exterior], 1, lineType=cv2.LINE_8, shift=shift)
        if holes:
            cv2.fillPoly(piece, holes, 0, lineType=cv2.LINE_8, shift=shift)
            cv2.polylines(piece, holes, True, 1, lineType=cv2.LINE_8, shift=shift)  # a hole's rim is the polygon's
        out |= piece
    return out.astype(bool)
