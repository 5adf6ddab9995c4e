"""One slide interface over OpenSlide and TiffSlide, and the one function that plans every read.

Backend choice per file: TiffSlide decodes JPEG-tiled TIFF/SVS/OME-TIFF near the raw decode rate and
reads TIFFs OpenSlide refuses (strip-based OME-TIFF); OpenSlide covers MRXS, NDPI, DICOM and friends
and is faster on JPEG 2000 SVS. The chosen backend is named in every output's provenance.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import ResolutionError, SlideNotFoundError, SlideUnreadableError
from ..geometry import Box
from .metadata import resolve_mpp

BACKENDS = ("tiffslide", "openslide")
_TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".btf", ".tf8"}
_JPEG2000_COMPRESSIONS = {33003, 33004, 33005, 34712}
GLASS_WHITE = 255  # pixels outside the scanned area read as white glass


@dataclass(frozen=True)
class ReadPlan:
    """One pixel read: a box of `width` x `height` pixels at pyramid `level` (top-left in level
    pixels), resampled to `out_width` x `out_height`."""

    level: int
    x: int
    y: int
    width: int
    height: int
    out_width: int
    out_height: int


def choose_level(
    level_mpps: Sequence[float], target_mpp: float, tolerance: float = 0.05
) -> int | None:
    """Coarsest pyramid level whose mpp is <= target (within a relative tolerance), or None."""
    best = None
    for k, mpp in enumerate(level_mpps):
        if mpp <= target_mpp * (1 + tolerance) and (best is None or mpp > level_mpps[best]):
            best = k
    return best


def plan_read(
    level_downsamples: Sequence[float],
    slide_mpp: float,
    box: Box,
    target_mpp: float,
    out_size: tuple[int, int] | None = None,
    *,
    tolerance: float = 0.05,
    allow_upsample: bool = False,
    slide_name: str = "slide",
) -> ReadPlan:
    """Decide level, read box and output size for a box (level-0 px) wanted at `target_mpp`.

    The level is the coarsest one fine enough for the target; the box is rounded once, at that
    level, so the read is within half a level pixel of the exact box (less than one output pixel).
    """
    level_mpps = [slide_mpp * d for d in level_downsamples]
    level = choose_level(level_mpps, target_mpp, tolerance)
    if level is None:
        if not allow_upsample:
            raise ResolutionError(
                slide_name,
                f"{target_mpp:g} um/px is finer than the slide's finest level ({level_mpps[0]:g} um/px); "
                "mixmag does not invent detail by upsampling.",
                "use coarser levels (e.g. --base-mpp), or allow upsampling explicitly with --allow-upsample.",
            )
        level = 0
    ds = level_downsamples[level]
    if out_size is None:
        out_size = (round(box.width * slide_mpp / target_mpp), round(box.height * slide_mpp / target_mpp))
    k = integer_reduction(level_mpps[level], target_mpp)
    if k and abs(box.width / ds - k * out_size[0]) < 1 and abs(box.height / ds - k * out_size[1]) < 1:
        # Whole k x k blocks of level pixels make each output pixel: snap the origin to the
        # k-lattice (still within half an output pixel) so the reduction is an exact box mean.
        x0, y0 = k * round(box.x0 / ds / k), k * round(box.y0 / ds / k)
        return ReadPlan(level, x0, y0, k * out_size[0], k * out_size[1], out_size[0], out_size[1])
    x0, y0 = round(box.x0 / ds), round(box.y0 / ds)
    x1, y1 = round(box.x1 / ds), round(box.y1 / ds)
    return ReadPlan(level, x0, y0, max(1, x1 - x0), max(1, y1 - y0), out_size[0], out_size[1])


def integer_reduction(level_mpp: float, target_mpp: float) -> int | None:
    """k when the target is exactly k times coarser than the level (e.g. 0.25 -> 0.5 um/px: 2)."""
    factor = target_mpp / level_mpp
    k = round(factor)
    return k if k >= 1 and abs(factor - k) < 1e-6 else None


def resize_area(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample to exactly width x height: area averaging when shrinking, bilinear when growing."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    if image.shape[1] == 2 * width and image.shape[0] == 2 * height:
        return halve(image)
    shrinking = width <= image.shape[1] and height <= image.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def halve(image: np.ndarray) -> np.ndarray:
    """Exact 2x area downsample: the mean of each 2x2 block (bilinear sampling at the block centre
    is that mean, and OpenCV's bilinear path is the fastest way to compute it)."""
    h, w = image.shape[:2]
    return cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_LINEAR)


def preferred_backends(path: Path) -> list[str]:
    """Backends to try for a file, fastest capable first."""
    if path.is_file() and path.suffix.lower() in _TIFF_SUFFIXES:
        if _tiff_compression(path) in _JPEG2000_COMPRESSIONS:
            return ["openslide", "tiffslide"]
        return ["tiffslide", "openslide"]
    return ["openslide", "tiffslide"]


def _tiff_compression(path: Path) -> int | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return int(tif.pages[0].compression)
    except Exception:  # noqa: BLE001 - any failure here only means "not a readable TIFF"
        return None


def _open_backend(name: str, path: Path):
    if name == "tiffslide":
        import tiffslide

        return tiffslide.TiffSlide(path)
    if name == "openslide":
        import openslide

        return openslide.OpenSlide(str(path))
    raise ValueError(f"unknown slide backend {name!r}; choose one of {', '.join(BACKENDS)}")


class Slide:
    """An open whole slide image with a resolved mpp and exact-mpp reads."""

    def __init__(
        self,
        path: str | Path,
        *,
        mpp: float | None = None,
        backend: str = "auto",
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SlideNotFoundError(self.path, "file not found.", "check the path (relative paths in a cohort table are relative to the table).")
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown slide backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
        candidates = preferred_backends(self.path) if backend == "auto" else [backend]
        failures = []
        self._handle = None
        for name in candidates:
            try:
                self._handle = _open_backend(name, self.path)
                self.backend = name
                self._direct = self._direct_readers()
                self._check_readable()
                break
            except Exception as exc:  # noqa: BLE001 - each backend fails in its own way; all are reported
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                self._close_handle()
        if self._handle is None:
            raise SlideUnreadableError(
                self.path,
                "no backend could read it (" + "; ".join(failures) + ").",
                "check the file is a complete whole slide image (re-copy it if truncated); "
                "supported: SVS, TIFF, OME-TIFF, NDPI, MRXS, DICOM and other OpenSlide formats.",
            )
        props = dict(self._handle.properties)
        self.properties = props
        resolved = resolve_mpp(self.path, props, mpp)
        self.mpp = resolved.value
        self.mpp_source = resolved.source
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(tuple(map(int, d)) for d in self._handle.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._handle.level_downsamples)

    def _direct_readers(self) -> list:
        """TiffSlide backend: per-level readers that decode covering tiles directly (see tiff_tiles)."""
        if self.backend != "tiffslide":
            return []
        from .tiff_tiles import level_readers

        series = int(self._handle.properties.get("tiffslide.series-index") or 0)
        return level_readers(self._handle.ts_tifffile, series, threading.Lock())

    def _check_readable(self) -> None:
        """Decode one pixel so a truncated or corrupt file fails at open, not mid-run."""
        pixel = self._read_raw(0, 0, 0, 1, 1)
        if pixel.shape != (1, 1, 3):
            raise SlideUnreadableError(self.path, f"unexpected pixel layout {pixel.shape}; mixmag needs RGB.")

    @property
    def width(self) -> int:
        return self.level_dimensions[0][0]

    @property
    def height(self) -> int:
        return self.level_dimensions[0][1]

    @property
    def level_mpps(self) -> tuple[float, ...]:
        return tuple(self.mpp * d for d in self.level_downsamples)

    def plan(
        self,
        box: Box,
        target_mpp: float,
        out_size: tuple[int, int] | None = None,
        *,
        tolerance: float = 0.05,
        allow_upsample: bool = False,
    ) -> ReadPlan:
        return plan_read(
            self.level_downsamples, self.mpp, box, target_mpp, out_size,
            tolerance=tolerance, allow_upsample=allow_upsample, slide_name=str(self.path),
        )

    def read(self, plan: ReadPlan) -> np.ndarray:
        """Execute a plan: (out_height, out_width, 3) uint8 RGB."""
        direct = self._direct[plan.level] if plan.level < len(self._direct) else None
        k = plan.width // plan.out_width
        if (
            direct is not None
            and k > 1
            and (plan.width, plan.height) == (k * plan.out_width, k * plan.out_height)
            and direct.fits(plan.x, plan.y, plan.width, plan.height, k)
        ):
            # fused decode + box reduction, tile by tile while each tile is hot in cache
            return self._guarded(plan.level, plan.x, plan.y, plan.width, plan.height, lambda: direct.read(plan.x, plan.y, plan.width, plan.height, reduce=k))
        raw = self._read_raw(plan.level, plan.x, plan.y, plan.width, plan.height)
        return resize_area(raw, plan.out_width, plan.out_height)

    def read_box(self, box: Box, target_mpp: float, out_size: tuple[int, int] | None = None, **kwargs) -> np.ndarray:
        return self.read(self.plan(box, target_mpp, out_size, **kwargs))

    def _read_raw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Pixels [x, x+width) x [y, y+height) of a level, in that level's pixels; white outside."""
        level_w, level_h = (int(v) for v in self._handle.level_dimensions[level])
        cx0, cy0 = max(x, 0), max(y, 0)
        cx1, cy1 = min(x + width, level_w), min(y + height, level_h)
        if cx1 <= cx0 or cy1 <= cy0:
            return np.full((height, width, 3), GLASS_WHITE, np.uint8)
        inner = self._guarded(level, cx0, cy0, cx1 - cx0, cy1 - cy0, lambda: self._backend_read(level, cx0, cy0, cx1 - cx0, cy1 - cy0))
        if (cx0, cy0, cx1, cy1) == (x, y, x + width, y + height):
            return inner
        out = np.full((height, width, 3), GLASS_WHITE, np.uint8)
        out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = inner
        return out

    def _guarded(self, level: int, x: int, y: int, w: int, h: int, read):
        """Run a pixel read; a decoder failure becomes an error that names the slide and place."""
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - decoder errors differ per backend and codec
            raise SlideUnreadableError(
                self.path,
                f"could not decode level {level} at ({x}, {y}) size {w}x{h}: {type(exc).__name__}: {exc}.",
                "the file is probably corrupt or truncated; re-copy or re-export it.",
            ) from exc

    def _backend_read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = float(self._handle.level_downsamples[level])
        direct = self._direct[level] if level < len(self._direct) else None
        if direct is not None:
            return direct.read(x, y, width, height)
        if self.backend == "tiffslide":
            # tiffslide floors location / downsample; ceil makes that land exactly on x.
            loc = (int(np.ceil(x * ds)), int(np.ceil(y * ds)))
            arr = np.asarray(self._handle.read_region(loc, level, (width, height), as_array=True))
            if arr.ndim == 3 and arr.shape[2] == 4:
                arr = _composite_on_white(arr)
            return np.ascontiguousarray(arr[..., :3]) if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)
        rgba = np.asarray(self._handle.read_region((round(x * ds), round(y * ds)), level, (width, height)))
        return _composite_on_white(rgba)

    def thumbnail(self, target_mpp: float, chunk: int = 1024, **kwargs) -> np.ndarray:
        """The whole slide at `target_mpp`, read in chunks so memory stays bounded on huge slides."""
        scale = self.mpp / target_mpp
        out_w, out_h = max(1, round(self.width * scale)), max(1, round(self.height * scale))
        out = np.empty((out_h, out_w, 3), np.uint8)
        for ty in range(0, out_h, chunk):
            for tx in range(0, out_w, chunk):
                w, h = min(chunk, out_w - tx), min(chunk, out_h - ty)
                box = Box(tx / scale, ty / scale, tx / scale + w / scale, ty / scale + h / scale)
                out[ty : ty + h, tx : tx + w] = self.read_box(box, target_mpp, (w, h), **kwargs)
        return out

    def fingerprint(self) -> dict:
        stat = os.stat(self.path)
        return {"path": str(self.path.resolve()), "size_bytes": int(stat.st_size), "mtime": float(stat.st_mtime)}

    def _close_handle(self) -> None:
        if self._handle is not None:
            try:
                self._handle.close()
            finally:
                self._handle = None

    def close(self) -> None:
        self._close_handle()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, backend={self.backend!r}, mpp={self.mpp:g}, size={self.width}x{self.height}, levels={len(self.level_dimensions)})"


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide marks unscanned area transparent (premultiplied): show it as white glass."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    # premultiplied alpha: value = rgb + (255 - a) * white / 255
    return np.clip(rgb.astype(np.uint16) + (255 - a), 0, 255).astype(np.uint8)
