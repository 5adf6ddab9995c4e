"""Region reads from a tiled TIFF page by decoding just the covering tiles.

TiffSlide finds the pyramid (series, levels, metadata) in any TIFF flavour; this module reads pixels
from a level's page directly (tifffile's segment reader and codecs), which spares the zarr layer's
per-call overhead and keeps a read at the cost of decoding the covering tiles once.

What a TIFF declares is bounded before anything is decoded: a tile or strip may hold at most `MAX_SEGMENT_PIXELS`
(`segment_problem`, run before any backend opens the file); a YCbCr JPEG tile decodes into an array of the tile's own
size (`imagecodecs` refuses a JPEG stream that declares more), and any other JPEG, JPEG 2000, PNG or WebP segment has
the size its header declares checked against its tile or strip before tifffile decodes it (`SegmentGuard`), so a
2 kB file cannot ask for gigabytes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import cv2
import numpy as np
import tifffile

from ..images import declared_size


def box_reduce(block: np.ndarray, k: int, out: np.ndarray | None = None) -> np.ndarray:
    """Mean of every k x k block (sides are multiples of k), into `out` when given (a view of the right size: OpenCV
    writes into it, sparing a temporary and its copy)."""
    h, w = block.shape[:2]
    if k == 2:  # bilinear sampling at 2x2 block centres is their mean, and OpenCV's fastest path
        return cv2.resize(block, (w // 2, h // 2), dst=out, interpolation=cv2.INTER_LINEAR)
    return cv2.resize(block, (w // k, h // k), dst=out, interpolation=cv2.INTER_AREA)


class TruncatedTileError(OSError):
    """A tile's bytes lie (partly) past the end of the file."""


# 8192 x 8192: four times the largest tiles scanners write (Aperio 240-1024 px, OME-TIFF 512-2048); a strip of a
# strip-organised TIFF is width x RowsPerStrip and is decoded whole for any read inside it
MAX_SEGMENT_PIXELS = 1 << 26


def segment_size(page: tifffile.TiffPage) -> tuple[int, int]:
    """(width, height) of one tile, or of one strip (the image's width x RowsPerStrip), as the page declares it."""
    if page.is_tiled:
        return int(page.tilewidth), int(page.tilelength)
    return int(page.imagewidth), min(int(page.rowsperstrip), int(page.imagelength))


def segment_problem(tiff: tifffile.TiffFile) -> str | None:
    """Why a TIFF's tiles or strips are too large to decode (each read decodes whole ones), or None."""
    for series in tiff.series:
        for level in series.levels:
            page = level.keyframe
            if not isinstance(page, tifffile.TiffPage) or not len(page.dataoffsets):
                continue
            cols, rows = segment_size(page)
            if rows * cols > MAX_SEGMENT_PIXELS:
                kind = "tile" if page.is_tiled else "strip"
                return (
                    f"its {page.imagewidth} x {page.imagelength} px image is stored in {kind}s of {cols} x {rows} px "
                    f"({rows * cols / 1e6:,.0f} Mpx each, more than the {MAX_SEGMENT_PIXELS / 1e6:,.0f} Mpx mixmag "
                    f"decodes at once)"
                )
    return None


def check_complete(tiff: tifffile.TiffFile, series_index: int) -> None:
    """Every tile of every level must lie inside the file: a truncated copy fails at open."""
    size = tiff.filehandle.size
    for level in tiff.series[series_index].levels:
        for page in level.pages:
            if page is None or not len(page.dataoffsets):
                continue
            end = max(o + c for o, c in zip(page.dataoffsets, page.databytecounts))
            if end > size:
                raise TruncatedTileError(
                    f"the file is truncated: image data runs to byte {end} but the file has {size} bytes"
                )


class TileSizeError(ValueError):
    """A tile whose compressed stream declares another size than the TIFF's tiles."""


def supports_direct_read(page: tifffile.TiffPage) -> bool:
    """Tiled, chunky (interleaved), 8-bit RGB(A) pages; anything else goes through TiffSlide."""
    return (
        page.is_tiled
        and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
        and page.dtype == np.uint8
        and page.samplesperpixel in (3, 4)
        and page.tiledepth == 1
        and page.imagedepth == 1
    )


class TiledPageReader:
    """Reads [x, x+w) x [y, y+h) of one tiled page (in its own pixels) into a new RGB array."""

    def __init__(self, page: tifffile.TiffPage, lock: threading.Lock) -> None:
        self.page = page
        self.tile_w = int(page.tilewidth)
        self.tile_h = int(page.tilelength)
        self.width = int(page.imagewidth)
        self.height = int(page.imagelength)
        self.tiles_across = -(-self.width // self.tile_w)
        self._guard = SegmentGuard(page, lock)
        self._decode = _fast_decoder(page) or self._guard.guarded(page.decode)
        self._lock = lock

    def fits(self, x: int, y: int, w: int, h: int, reduce: int = 1) -> bool:
        """Inside the page, and (when reducing) on the reduce-lattice that tiles also sit on."""
        inside = x >= 0 and y >= 0 and x + w <= self.width and y + h <= self.height
        return inside and all(v % reduce == 0 for v in (x, y, w, h, self.tile_w, self.tile_h))

    def read(self, x: int, y: int, w: int, h: int, reduce: int = 1) -> np.ndarray:
        """The box's pixels; with reduce = k, each k x k block averaged (an exact box mean)."""
        k = reduce
        out = np.empty((h // k, w // k, 3), np.uint8)
        for block, bx, by in self._blocks(x, y, w, h, k):
            target = out[by : by + (block.shape[0] // k), bx : bx + (block.shape[1] // k)]
            if k > 1:
                box_reduce(block, k, target)  # straight into the output, while the tile is hot in cache
            else:
                target[...] = block
        return out

    def read_tiles(self, x: int, y: int, w: int, h: int, reduce: int, out: np.ndarray) -> np.ndarray:
        """`read` cut into `out`'s tiles ((n, t, t, 3), row-major over the reduced box, whose sides are multiples of t):
        the pixels of `split_tiles(read(...))` with no frame between decoder and tiles, one copy fewer of each pixel."""
        k, t = reduce, out.shape[1]
        per_row = (w // k) // t
        if out.shape[1:] != (t, t, 3) or (w // k) % t or (h // k) % t or out.shape[0] != per_row * ((h // k) // t):
            raise ValueError(f"tiles of shape {out.shape} do not hold a {w // k} x {h // k} read")
        small = np.empty((self.tile_h // k, self.tile_w // k, 3), np.uint8) if k > 1 else None
        for block, bx, by in self._blocks(x, y, w, h, k):
            if small is not None:
                block = box_reduce(block, k, small[: block.shape[0] // k, : block.shape[1] // k])
            bh, bw = block.shape[:2]
            for r in range(by // t, (by + bh - 1) // t + 1):
                y0, y1 = max(by, r * t), min(by + bh, (r + 1) * t)
                for c in range(bx // t, (bx + bw - 1) // t + 1):
                    x0, x1 = max(bx, c * t), min(bx + bw, (c + 1) * t)
                    out[r * per_row + c, y0 - r * t : y1 - r * t, x0 - c * t : x1 - c * t] = block[
                        y0 - by : y1 - by, x0 - bx : x1 - bx
                    ]
        return out

    def _blocks(self, x: int, y: int, w: int, h: int, k: int) -> Iterator[tuple[np.ndarray, int, int]]:
        """Each covering tile's part of the box (unreduced) and where it lands in the k-reduced box. The block is a
        view of one decode buffer, valid until the next one is yielded."""
        if not self.fits(x, y, w, h, k):
            raise ValueError(f"read ({x}, {y}, {w}, {h}) / {k} does not fit page {self.width}x{self.height}")
        tx0, ty0 = x // self.tile_w, y // self.tile_h
        tx1, ty1 = (x + w - 1) // self.tile_w, (y + h - 1) // self.tile_h
        indices = [ty * self.tiles_across + tx for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
        page = self.page
        offsets = [page.dataoffsets[i] for i in indices]
        counts = [page.databytecounts[i] for i in indices]
        with self._lock:  # the file handle is shared; decoding happens outside the lock
            segments = list(page.parent.filehandle.read_segments(offsets, counts, indices, sort=True))
        buffer = np.empty((self.tile_h, self.tile_w, 3), np.uint8)  # one decode buffer for every tile of the read
        for data, index in segments:
            if data is None or len(data) != page.databytecounts[index]:
                raise TruncatedTileError(
                    f"tile {index} of a {self.width}x{self.height} level is cut short "
                    f"({0 if data is None else len(data)} of {page.databytecounts[index]} bytes)"
                )
            tile, _, _ = self._decode(data, index, jpegtables=page.jpegtables, out=buffer)
            tile = tile.reshape(self.tile_h, self.tile_w, -1)
            ty, tx = divmod(index, self.tiles_across)
            # intersection of this tile with the request, in page pixels
            px0, py0 = max(x, tx * self.tile_w), max(y, ty * self.tile_h)
            px1, py1 = min(x + w, (tx + 1) * self.tile_w), min(y + h, (ty + 1) * self.tile_h)
            block = tile[
                py0 - ty * self.tile_h : py1 - ty * self.tile_h, px0 - tx * self.tile_w : px1 - tx * self.tile_w, :3
            ]
            yield block, (px0 - x) // k, (py0 - y) // k


class SegmentGuard:
    """Checks, before tifffile decodes them, that the compressed tiles or strips of a page declare no more pixels than
    the tile or strip they stand for (tifffile hands image codecs no size to hold them to)."""

    def __init__(self, page: tifffile.TiffPage, lock: threading.Lock) -> None:
        self.page = page
        self.active = int(page.compression) in _IMAGE_CODECS and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
        self.width, self.height = segment_size(page)
        self._lock = lock
        self._checked: set[int] = set()

    def check(self, data: bytes | None, index: int) -> None:
        """Refuse segment `index` (its bytes `data`) when its header declares more than its tile or strip."""
        if not self.active or data is None or index in self._checked:
            return
        size = declared_size(data)
        if size is not None and (size[0] > self.width or size[1] > self.height):
            kind = "tile" if self.page.is_tiled else "strip"
            raise TileSizeError(
                f"{kind} {index}'s compressed data declares {size[0]} x {size[1]} px in a {self.width} x "
                f"{self.height} px {kind}; the file is damaged or forged"
            )
        self._checked.add(index)

    def guarded(self, decode):
        """`decode` (tifffile's segment decoder) preceded by `check`."""

        def checked(data: bytes | None, index: int, jpegtables: bytes | None = None, out: np.ndarray | None = None):
            self.check(data, index)
            return decode(data, index, jpegtables=jpegtables)  # tifffile allocates its own array

        return checked

    def check_box(self, x: int, y: int, w: int, h: int) -> None:
        """Check every segment a read of [x, x+w) x [y, y+h) decodes (reading their bytes from the file)."""
        if not self.active or w < 1 or h < 1:
            return
        across = -(-int(self.page.imagewidth) // self.width)
        rows = range(y // self.height, (y + h - 1) // self.height + 1)
        cols = range(x // self.width, (x + w - 1) // self.width + 1)
        wanted = [r * across + c for r in rows for c in cols if r * across + c not in self._checked]
        wanted = [i for i in wanted if i < len(self.page.dataoffsets) and self.page.databytecounts[i]]
        if not wanted:
            return
        offsets = [self.page.dataoffsets[i] for i in wanted]
        counts = [min(self.page.databytecounts[i], _HEADER_BYTES) for i in wanted]  # the header is at the start
        with self._lock:
            segments = list(self.page.parent.filehandle.read_segments(offsets, counts, wanted, sort=True))
        for data, index in segments:
            self.check(data, index)


_HEADER_BYTES = 1 << 16
_IMAGE_CODECS = {int(tifffile.COMPRESSION.JPEG)} | {int(c) for c in tifffile.TIFF.IMAGE_COMPRESSIONS}


def _fast_decoder(page: tifffile.TiffPage):
    """YCbCr JPEG tiles (Aperio and most scanners) go straight to libjpeg-turbo, skipping
    tifffile's per-tile dispatch; the pixels are identical (checked in the tests). Each tile decodes into an array of
    the tile's size: a JPEG stream declaring a larger frame is refused before libjpeg allocates it."""
    if page.compression != tifffile.COMPRESSION.JPEG or page.photometric != tifffile.PHOTOMETRIC.YCBCR:
        return None
    import imagecodecs

    shape = (int(page.tilelength), int(page.tilewidth), 3)

    def decode(data: bytes, index: int, jpegtables: bytes | None = None, out: np.ndarray | None = None):
        try:
            out = np.empty(shape, np.uint8) if out is None else out
            return imagecodecs.jpeg8_decode(data, tables=jpegtables, out=out), index, None
        except ValueError as exc:  # imagecodecs: "invalid out.shape=..., shape=<what the JPEG declares>"
            raise TileSizeError(
                f"tile {index}'s JPEG stream does not fit the {shape[1]} x {shape[0]} px tiles the TIFF declares "
                f"({exc}); the file is damaged or forged"
            ) from None

    return decode


def level_guards(tiff: tifffile.TiffFile, series_index: int, lock: threading.Lock) -> list[SegmentGuard | None]:
    """One segment guard per pyramid level of a series, for reads that tifffile decodes (None where a level is not one
    page)."""
    levels = tiff.series[series_index].levels
    return [
        SegmentGuard(level.keyframe, lock)
        if len(level.pages) == 1 and isinstance(level.keyframe, tifffile.TiffPage)
        else None
        for level in levels
    ]


def level_readers(tiff: tifffile.TiffFile, series_index: int, lock: threading.Lock) -> list[TiledPageReader | None]:
    """One direct reader per pyramid level of a series (None where the page layout is not supported)."""
    check_complete(tiff, series_index)
    readers: list[TiledPageReader | None] = []
    for level in tiff.series[series_index].levels:
        page = level.keyframe
        if len(level.pages) != 1 or not isinstance(page, tifffile.TiffPage) or not supports_direct_read(page):
            readers.append(None)
        else:
            readers.append(TiledPageReader(page, lock))
    return readers
