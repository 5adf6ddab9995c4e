"""Write real pyramidal whole slide image files (tiled TIFF, Aperio-style SVS, OME-TIFF) tile by tile.

Used by the tests, the benchmarks and the demo: files that OpenSlide and TiffSlide open like scanner
output, with the resolution recorded where readers look for it. The pixels come from an array (test-sized
slides; levels by area downsampling, as before) or from a `Pattern` drawn window by window (any size: a
100,000 x 80,000 px slide is written with a few hundred MB of memory). tifffile writes each level from an
iterator of tiles, so no level is ever held whole.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, get_args

import cv2
import imagecodecs
import numpy as np
import tifffile

from ..fileio import DiskFullError, atomic_path
from .patterns import Pattern

Compression = Literal["jpeg", "deflate", "none"]
Flavor = Literal["generic", "aperio", "ome", "ome-strips"]
FLAVORS: tuple[Flavor, ...] = get_args(Flavor)
COMPRESSIONS: tuple[Compression, ...] = get_args(Compression)
Progress = Callable[[int, int], None]  # (level rows written, level rows in all)

_SPAN_PX = 4096  # a pattern is drawn this many columns at a time (bounded memory at any slide width)
_STRIP_ROWS = 64  # rows per strip of the strip-organised OME-TIFF
_JPEG_MAX_SIDE = 65535  # the JPEG format's limit on either side of one encoded image (a strip is one)


class PixelSource(Protocol):
    """Level-0 size and a reader of any window of the slide resampled to any level size."""

    size: tuple[int, int]

    def level(self, size: tuple[int, int]) -> Callable[[int, int, int, int], np.ndarray]: ...


@dataclass
class ArraySource:
    """An in-memory image; a level is its area downsampling (cv2 INTER_AREA), one level held at a time."""

    image: np.ndarray
    size: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        image = self.image
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        self.size = (image.shape[1], image.shape[0])

    def level(self, size: tuple[int, int]) -> Callable[[int, int, int, int], np.ndarray]:
        level = self.image if size == self.size else cv2.resize(self.image, size, interpolation=cv2.INTER_AREA)
        return lambda x, y, w, h: level[y : y + h, x : x + w]


@dataclass(frozen=True)
class PatternSource:
    """A pattern over a `size` px slide at `mpp`; each level is the pattern drawn at that level's pixel size."""

    pattern: Pattern
    size: tuple[int, int]
    mpp: float

    def level(self, size: tuple[int, int]) -> Callable[[int, int, int, int], np.ndarray]:
        mpp_x, mpp_y = self.mpp * self.size[0] / size[0], self.mpp * self.size[1] / size[1]
        return lambda x, y, w, h: self.pattern.render(x, y, w, h, mpp_x, mpp_y)


def level_sizes(size: tuple[int, int], downsamples: Sequence[int]) -> list[tuple[int, int]]:
    """(width, height) of each level (downsamples must start at 1 and increase)."""
    if not downsamples or downsamples[0] != 1 or list(downsamples) != sorted(set(downsamples)):
        raise ValueError(f"downsamples must start at 1 and increase, got {list(downsamples)}")
    w, h = size
    return [(max(1, round(w / d)), max(1, round(h / d))) for d in downsamples]


def pyramid_levels(image: np.ndarray, downsamples: Sequence[int]) -> list[np.ndarray]:
    """Level images by area downsampling of level 0 (downsamples must start at 1 and increase)."""
    source = ArraySource(image)
    return [source.level(size)(0, 0, *size) for size in level_sizes(source.size, downsamples)]


def write_slide(
    path: str | Path,
    image: np.ndarray | PixelSource,
    mpp: float | None,
    *,
    downsamples: Sequence[int] = (1, 2, 4),
    tile: int = 256,
    compression: Compression = "jpeg",
    quality: int = 90,
    flavor: Flavor = "generic",
    resolution_dpi: float | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write `image` ((H, W, 3) uint8 array or a `PixelSource`) as a slide file at `mpp` um/px; return the path.

    - generic: tiled TIFF, one IFD per level (reduced levels flagged), resolution tags in cm.
    - aperio: the same with an Aperio ImageDescription (OpenSlide's "aperio" vendor, MPP in the text).
    - ome: OME-TIFF pyramid (levels as SubIFDs), PhysicalSizeX/Y in um.
    - ome-strips: a plain, single-level, strip-organised OME-TIFF (OpenSlide refuses it; TiffSlide reads it).
    `mpp=None` writes no resolution at all; `resolution_dpi` writes a raw dpi instead (e.g. 72, to test
    that an absurd resolution is rejected). The file is written to a temporary name and renamed.
    `progress(done, total)` is called as each row of tiles (or strip) of any level is started.
    """
    path = Path(path)
    if flavor not in FLAVORS:
        raise ValueError(f"unknown slide flavor {flavor!r}; use one of {', '.join(FLAVORS)}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")
    source = ArraySource(image) if isinstance(image, np.ndarray) else image
    sizes = [source.size] if flavor == "ome-strips" else level_sizes(source.size, downsamples)
    if flavor == "ome-strips" and compression == "jpeg" and source.size[0] > _JPEG_MAX_SIDE:
        raise ValueError(f"a JPEG strip cannot be wider than {_JPEG_MAX_SIDE} px; use --compression deflate")
    codec = {"jpeg": ("jpeg", {"level": quality}), "deflate": ("zlib", None), "none": (None, None)}[compression]
    common = dict(photometric="rgb", compression=codec[0], compressionargs=codec[1], dtype=np.uint8, metadata=None)
    _check_room(path, sizes, compression)
    rows = _RowCounter(sum(-(-h // (_STRIP_ROWS if flavor == "ome-strips" else tile)) for _, h in sizes), progress)
    bigtiff = source.size[0] * source.size[1] * 3 > 2**31  # level 0 alone; the other levels add a third at most
    ome_metadata = {"axes": "YXS"} | ({"PhysicalSizeX": mpp, "PhysicalSizeY": mpp} if mpp else {})
    with atomic_path(path) as tmp:  # no suffix: tifffile must not read "OME" into a name ending .ome.tif
        with tifffile.TiffWriter(tmp, ome=flavor.startswith("ome"), bigtiff=bigtiff) as tif:
            if flavor == "ome-strips":
                strips = _encoded_strips(source.level(source.size), source.size, codec, rows)
                w, h = source.size
                tif.write(strips, shape=(h, w, 3), rowsperstrip=_STRIP_ROWS, **common | {"metadata": ome_metadata})
            elif flavor == "ome":
                for i, size in enumerate(sizes):
                    level = dict(subifds=len(sizes) - 1, metadata=ome_metadata) if i == 0 else dict(subfiletype=1)
                    tif.write(_tiles(source.level(size), size, tile, rows), **_tiled(size, tile), **common | level)
            else:
                _write_tiff_levels(tif, source, sizes, mpp, tile, flavor, resolution_dpi, common, rows)
    return path


def _write_tiff_levels(tif, source, sizes, mpp, tile, flavor, resolution_dpi, common, rows) -> None:
    """Generic TIFF or SVS: one tiled page per level; SVS has a stripped thumbnail after the baseline."""
    description = _aperio_description(source.size, mpp, tile) if flavor == "aperio" else None
    resolution = _resolution_kwargs(mpp, resolution_dpi) if flavor == "generic" else {}
    for i, size in enumerate(sizes):
        tif.write(
            _tiles(source.level(size), size, tile, rows),
            **_tiled(size, tile),
            # SVS levels are plain tiled pages (reduced pages there mean label/macro)
            subfiletype=0 if i == 0 or flavor == "aperio" else 1,
            description=description if i == 0 else None,
            **resolution,
            **common,
        )
        if i == 0 and flavor == "aperio":
            tif.write(
                _thumbnail(source),
                description="Aperio Image Library thumbnail",
                metadata=None,
                photometric="rgb",
            )


# lower bounds of the bytes a pixel takes in the file (JPEG q90 on TissueField measured 0.115, levels included)
_MIN_BYTES_PER_PX = {"jpeg": 0.05, "deflate": 0.5, "none": 3.0}


def _check_room(path: Path, sizes: list[tuple[int, int]], compression: str) -> None:
    """Refuse before writing a slide that cannot fit the free space (a typo of one zero in --width would otherwise
    fill the disk that other work shares before the write fails)."""
    needed = int(sum(w * h for w, h in sizes) * _MIN_BYTES_PER_PX[compression])
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DiskFullError(path, needed=needed, free=free)


def _tiled(size: tuple[int, int], tile: int) -> dict:
    return {"shape": (size[1], size[0], 3), "tile": (tile, tile)}


def _tiles(read, size: tuple[int, int], tile: int, rows: _RowCounter) -> Iterator[np.ndarray]:
    """The level's tiles in row-major order, read `_SPAN_PX` columns at a time (tifffile zero-pads edge tiles)."""
    width, height = size
    span = max(tile, _SPAN_PX // tile * tile)
    for y in range(0, height, tile):
        th = min(tile, height - y)
        rows.advance()  # counted when started: tifffile stops asking after the last tile
        for x0 in range(0, width, span):
            block = read(x0, y, min(span, width - x0), th)
            for x in range(0, block.shape[1], tile):
                yield block[:, x : x + tile]


def _encoded_strips(read, size: tuple[int, int], codec, rows: _RowCounter) -> Iterator[bytes]:
    """Strips of `_STRIP_ROWS` rows, encoded here because tifffile takes an iterator of strips only as bytes.
    The encoder and its arguments are those tifffile uses itself for compressed RGB strips (tifffile.py,
    TiffWriter.write: JPEG of RGB data gets subsampling (2, 2) and YCbCr output)."""
    width, height = size
    name, args = codec
    for y in range(0, height, _STRIP_ROWS):
        h = min(_STRIP_ROWS, height - y)
        strip = np.concatenate([read(x, y, min(_SPAN_PX, width - x), h) for x in range(0, width, _SPAN_PX)], axis=1)
        rows.advance()
        if name == "jpeg":
            yield imagecodecs.jpeg_encode(
                strip, level=args["level"], subsampling=(2, 2), colorspace="RGB", outcolorspace="YCBCR"
            )
        elif name == "zlib":
            yield imagecodecs.deflate_encode(strip)
        else:
            yield strip.tobytes()


@dataclass
class _RowCounter:
    """Counts tile (or strip) rows written over all levels for a progress callback."""

    total: int
    callback: Progress | None
    done: int = 0

    def advance(self) -> None:
        self.done += 1
        if self.callback:
            self.callback(self.done, self.total)


def _resolution_kwargs(mpp: float | None, dpi: float | None) -> dict:
    if dpi is not None:
        return {"resolution": (dpi, dpi), "resolutionunit": "INCH"}
    if mpp is None:
        return {"resolutionunit": "NONE"}
    per_cm = 10000.0 / mpp
    return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}


def _aperio_description(size: tuple[int, int], mpp: float | None, tile: int) -> str:
    w, h = size
    parts = [
        f"Aperio Image Library v12.0.0 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90",
        "AppMag = 40" if mpp and mpp < 0.375 else "AppMag = 20",
    ]
    if mpp:
        parts.append(f"MPP = {mpp:.6f}")
    return "|".join(parts)


def _thumbnail(source: PixelSource, longest: int = 768) -> np.ndarray:
    w, h = source.size
    scale = min(1.0, longest / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return source.level(size)(0, 0, *size)
