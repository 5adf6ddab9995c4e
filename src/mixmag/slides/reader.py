"""The one slide interface over every backend (slides.backends), and the one function that plans every read.

Backend choice per file (slides.backends.candidates): TiffSlide decodes JPEG-tiled TIFF/SVS/OME-TIFF near the
raw decode rate; OpenSlide covers MRXS, NDPI, SCN, BIF and DICOM (a file or a folder) and is faster on JPEG 2000
SVS; zarr reads OME-Zarr pyramids; the optional extras add CZI (libCZI) and a fallback (slideio) for VSI, QPTIFF
and others. Whatever the backend, mpp is exact or an error, coordinates are level-0 pixels and reads go through
the same plan. The chosen backend is named in every output's provenance.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from ..errors import MppError, ResolutionError, SlideError, SlideNotFoundError, SlideUnreadableError
from ..fileio import type_name
from ..geometry import Box
from .backends import BACKENDS, TIFF_SUFFIXES, Candidate, candidates, installed, open_backend
from .backends.base import GLASS_WHITE, BackendHandle
from .backends.dicom import is_dicom_file
from .backends.dicomweb import dicomweb_fingerprint
from .metadata import PLAUSIBLE_MPP, openslide_bounds, resolve_mpp
from .remote import (
    CACHE_ENV,
    RemoteAccessError,
    RemoteInfo,
    SlideLocation,
    access_error,
    cache_folder,
    cached_copy,
    is_dicomweb,
    is_network_error,
    is_url,
    remote_info,
    slide_location,
)
from .remote import fingerprint as remote_fingerprint
from .tiff_tiles import TileSizeError, segment_problem

# a side of the largest glass a slide can be scanned on, with room to spare: a standard slide is 75 x 25 mm, a
# large-format one 75 x 50 mm. A level 0 larger than this at the slide's mpp is a wrong mpp or a forged file.
MAX_SLIDE_MM = 100.0
# the same bound in pixels at the finest plausible resolution, for what is checked before the mpp is known
MAX_SLIDE_PX = round(MAX_SLIDE_MM * 1000 / PLAUSIBLE_MPP[0])


class SlideTooLargeError(SlideError):
    """A slide that declares more than any glass slide holds, or tiles too large to decode: refused before decoding."""


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


def choose_level(level_mpps: Sequence[float], target_mpp: float, tolerance: float = 0.05) -> int | None:
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
    keep_within: float = 0.0,
    slide_name: str = "slide",
) -> ReadPlan:
    """Decide level, read box and output size for a box (level-0 px) wanted at `target_mpp`.

    The level is the coarsest one fine enough for the target; the box is rounded once, at that
    level, so the read is within half a level pixel of the exact box (less than one output pixel).
    A level within `keep_within` (relative) of the target is read as it is, out_size pixels from the box's origin,
    with no resampling (`kept_mpp` says the mpp the pixels then have): the resampling at factors near 1 costs more
    CPU than decoding (issue 29), and a user who accepts a 0.2% scale error may skip it.
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
    if _kept(level_mpps[level], target_mpp, keep_within):
        x0, y0 = round(box.x0 / ds), round(box.y0 / ds)
        return ReadPlan(level, x0, y0, out_size[0], out_size[1], out_size[0], out_size[1])
    k = integer_reduction(level_mpps[level], target_mpp)
    if k and abs(box.width / ds - k * out_size[0]) < 1 and abs(box.height / ds - k * out_size[1]) < 1:
        # Whole k x k blocks of level pixels make each output pixel: snap the origin to the
        # k-lattice (still within half an output pixel) so the reduction is an exact box mean.
        x0, y0 = k * round(box.x0 / ds / k), k * round(box.y0 / ds / k)
        return ReadPlan(level, x0, y0, k * out_size[0], k * out_size[1], out_size[0], out_size[1])
    x0, y0 = round(box.x0 / ds), round(box.y0 / ds)
    x1, y1 = round(box.x1 / ds), round(box.y1 / ds)
    return ReadPlan(level, x0, y0, max(1, x1 - x0), max(1, y1 - y0), out_size[0], out_size[1])


def _where(plan: ReadPlan) -> tuple[int, int, int, int, int]:
    """Level, x, y, width and height of a plan's read, as a decode error names them."""
    return plan.level, plan.x, plan.y, plan.width, plan.height


def _kept(level_mpp: float, target_mpp: float, keep_within: float) -> bool:
    return keep_within > 0 and abs(level_mpp / target_mpp - 1) <= keep_within


def kept_mpp(
    level_mpps: Sequence[float], target_mpp: float, *, tolerance: float = 0.05, keep_within: float = 0.0, **_
) -> float:
    """The mpp that pixels asked for at `target_mpp` really have: the target, or the level's own mpp where
    `plan_read` keeps a level within `keep_within` of it as it is. Takes a plan's `read_options`."""
    level = choose_level(level_mpps, target_mpp, tolerance)
    if level is not None and _kept(level_mpps[level], target_mpp, keep_within):
        return level_mpps[level]
    return target_mpp


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


def split_tiles(image: np.ndarray, tile_px: int, out: np.ndarray | None = None) -> np.ndarray:
    """(n*tile, n*tile, 3) -> (n*n, tile, tile, 3), row-major (into `out` when given)."""
    n_y, n_x = image.shape[0] // tile_px, image.shape[1] // tile_px
    blocks = image[: n_y * tile_px, : n_x * tile_px].reshape(n_y, tile_px, n_x, tile_px, image.shape[2])
    tiles = blocks.transpose(0, 2, 1, 3, 4).reshape(n_y * n_x, tile_px, tile_px, image.shape[2])
    if out is None:
        return np.ascontiguousarray(tiles)
    out[...] = tiles
    return out


def halve_tiles(fine: np.ndarray, per_side: int, out: np.ndarray) -> np.ndarray:
    """The tiles of a level's 2x halving from its tiles (both row-major; `per_side` fine tiles a side, even; tile side
    even): each fine tile halves into a quadrant of its coarse tile, the pixels of halving the whole frame (no 2 x 2
    block crosses a tile edge), while the fine tile is still in cache and without a frame to cut again."""
    half = fine.shape[1] // 2
    coarse_side = per_side // 2
    for r in range(per_side):
        for c in range(per_side):
            quadrant = out[
                (r // 2) * coarse_side + c // 2,
                (r % 2) * half : (r % 2 + 1) * half,
                (c % 2) * half : (c % 2 + 1) * half,
            ]
            cv2.resize(fine[r * per_side + c], (half, half), dst=quadrant, interpolation=cv2.INTER_LINEAR)
    return out


def preferred_backends(path: Path | str) -> list[str]:
    """Installed backends that may read a file or URL, fastest capable first (see slides.backends.candidates)."""
    return [c.backend for c in candidates(slide_location(path)) if c.installed]


def slide_fingerprint(path: str | Path) -> dict:
    """Path, size and mtime that tell whether a slide changed: a DICOM slide is its folder's files, an OME-Zarr
    folder all of its files (sizes summed, newest mtime); a URL what the storage says now (size, ETag)."""
    if is_dicomweb(path):
        return dicomweb_fingerprint(str(path))
    if is_url(path):
        return remote_fingerprint(str(path), remote_info(str(path)))
    path = Path(path)
    folder = path if path.is_dir() else (path.parent if is_dicom_file(path) else None)
    if folder is None:
        stat = os.stat(path)
        return {"path": str(path.resolve()), "size_bytes": int(stat.st_size), "mtime": float(stat.st_mtime)}
    size, mtime = 0, os.stat(folder).st_mtime
    for root, _, files in os.walk(folder):
        for name in files:
            st = os.stat(os.path.join(root, name))
            size, mtime = size + st.st_size, max(mtime, st.st_mtime)
    return {"path": str(path.resolve()), "size_bytes": int(size), "mtime": float(mtime)}


def _check_local(path: Path) -> None:
    """A local slide path must exist and be a file or folder (a FIFO would block the reader and the batch forever)."""
    if not path.exists():
        raise SlideNotFoundError(
            path,
            "file not found.",
            "check the path (relative paths in a cohort table are relative to the table).",
        )
    kind = os.stat(path).st_mode
    if not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
        raise SlideUnreadableError(
            path, f"is {type_name(kind)}, not a slide file.", "give the path of the slide file itself."
        )


def check_remote_segments(url: str | Path, handle: BackendHandle) -> None:
    """`check_declared_segments` for a TIFF read by URL, on the TIFF the backend already opened (no second fetch)."""
    tiff = getattr(getattr(handle, "raw", None), "ts_tifffile", None)
    problem = segment_problem(tiff) if tiff is not None else None
    if problem is not None:
        raise SlideTooLargeError(url, problem + ".", "re-save the slide as a tiled TIFF (e.g. tiles of 256-1024 px).")


def check_pixel_count(path: Path, size: tuple[int, int]) -> None:
    """Refuse a level 0 larger than the largest glass slide even at the finest plausible mpp (0.1 um/px)."""
    width, height = size
    if max(width, height) > MAX_SLIDE_PX:
        raise SlideTooLargeError(
            path,
            f"declares {width} x {height} px, more than {MAX_SLIDE_PX} px a side: larger than any glass slide "
            f"({MAX_SLIDE_MM:g} mm) even at {PLAUSIBLE_MPP[0]:g} um/px.",
            "the file is damaged or forged; re-export it from the scanner's software.",
        )


def check_physical_size(path: Path, size: tuple[int, int], mpp: float, source: str) -> None:
    """Refuse a level 0 whose size at `mpp` is larger than any glass slide: a wrong mpp, or a forged file."""
    width_mm, height_mm = (v * mpp / 1000 for v in size)
    if max(width_mm, height_mm) > MAX_SLIDE_MM:
        raise SlideTooLargeError(
            path,
            f"declares {size[0]} x {size[1]} px at {mpp:g} um/px ({source}), {width_mm:,.0f} x {height_mm:,.0f} mm: "
            f"larger than any glass slide (at most {MAX_SLIDE_MM:g} mm a side; a standard slide is 75 x 25 mm).",
            "check the resolution: pass the slide's true --mpp (or an 'mpp' column in the cohort table), or "
            "re-export the file if its size is wrong.",
        )


def check_declared_segments(path: Path) -> None:
    """Refuse a TIFF whose tiles or strips are too large to decode, before any backend decodes one."""
    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        return
    try:
        with tifffile.TiffFile(path) as tif:
            problem = segment_problem(tif)
    except Exception:  # noqa: BLE001 - an unreadable TIFF is the backends' to report, with their own words
        return
    if problem is not None:
        raise SlideTooLargeError(
            path, problem + ".", "re-save the slide as a tiled TIFF (e.g. tiles of 256-1024 px), or re-copy it."
        )


@contextmanager
def _tifffile_log_once() -> Iterator[dict[str, logging.LogRecord]]:
    """tifffile logs what it finds wrong in a file (e.g. 'invalid offset to first page') each time the file is
    opened, and opening tries it more than once: hold the messages (the caller may take them into its error, by
    emptying the dict) and let the others through once at the end."""
    logger = logging.getLogger("tifffile")
    records: dict[str, logging.LogRecord] = {}

    def hold(record: logging.LogRecord) -> bool:
        records.setdefault(record.getMessage(), record)
        return False

    logger.addFilter(hold)
    try:
        yield records
    finally:
        logger.removeFilter(hold)
    for record in records.values():
        logger.handle(record)


class Slide:
    """An open whole slide image with a resolved mpp and exact-mpp reads."""

    def __init__(
        self,
        path: str | Path,
        *,
        mpp: float | None = None,
        backend: str = "auto",
    ) -> None:
        self.path: SlideLocation = slide_location(path)
        self._remote: RemoteInfo | None = None
        self._location: SlideLocation = self.path  # what the backends open: the path, the URL or its cached copy
        if is_url(self.path):
            self._open_url()
        else:
            _check_local(self.path)
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown slide backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
        self._handle: BackendHandle | None = None
        with _tifffile_log_once() as tifffile_said:
            try:
                self.backend = self._open(backend, mpp)
            except SlideUnreadableError as exc:  # what tifffile found wrong belongs in the one sentence
                if not tifffile_said:
                    raise
                said = "; ".join(tifffile_said)
                tifffile_said.clear()
                raise SlideUnreadableError(
                    exc.slide, exc.problem.replace("(", f"(tifffile: {said}; ", 1), exc.fix
                ) from exc
        props = dict(self._handle.properties)
        self.properties = props
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
            tuple(map(int, d)) for d in self._handle.level_dimensions
        )
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._handle.level_downsamples)
        try:
            resolved = resolve_mpp(self.path, props, mpp, self._handle.native_mpp)
        except SlideError:
            self._close_handle()
            raise
        self.mpp = resolved.value
        self.mpp_source = resolved.source

    def _open_url(self) -> None:
        """A slide URL: ask the storage what it is now (one sentence when it cannot say), and download it first when
        a cache folder is set (see slides.remote)."""
        url = str(self.path)
        if is_dicomweb(url):
            return  # the DICOMweb backend asks the server for the series' instances itself
        self._remote = remote_info(url)
        folder = cache_folder()
        if folder is not None:
            self._location = cached_copy(url, self._remote, folder)

    def _open(self, backend: str, mpp: float | None) -> str:
        """Open with the first backend that reads the file (fastest capable first); say why none could."""
        if backend == "auto":
            options = candidates(self._location)
        else:
            options = [Candidate(backend, "asked for", installed(backend))]
        if is_url(self._location):  # only backends that read by URL; the others need the download cache
            by_url = {c.backend for c in candidates(self._location)}
            options = [o for o in options if o.backend in by_url]
        if is_url(self._location) and not options:
            reader = "this format is" if backend == "auto" else f"the {backend} backend reads"
            raise SlideUnreadableError(
                self.path,
                f"{reader} only read from a local file; range reads by URL are for TIFF/SVS/OME-TIFF slides "
                "(TiffSlide) and DICOMweb series.",
                f"download it on request into a cache folder: --cache DIR (or {CACHE_ENV}=DIR).",
            )
        if not is_url(self._location):
            check_declared_segments(Path(self._location))
        failures, fixes = [], []
        for option in options:
            if not option.installed:
                failures.append(f"{option.backend}: not installed ({option.install})")
                continue
            try:
                self._handle = open_backend(option.backend, self._location)
                self._direct = self._handle.direct
                if is_url(self._location):
                    check_remote_segments(self.path, self._handle)
                self._check_readable(mpp)
                return option.backend
            except (SlideTooLargeError, RemoteAccessError):  # the file's fault or the network's, whichever backend
                self._close_handle()
                raise
            except SlideUnreadableError as exc:  # the backend knows what is wrong (e.g. a folder of two DICOM series)
                failures.append(f"{option.backend}: {exc.problem}")
                fixes += [exc.fix] if exc.fix else []
            except Exception as exc:  # noqa: BLE001 - each backend fails in its own way; all are reported
                if is_url(self._location) and is_network_error(exc):
                    self._close_handle()
                    raise access_error(str(self.path), exc) from None
                failures.append(f"{option.backend}: {type(exc).__name__}: {exc}")
            self._close_handle()
        missing = [o.install for o in options if not o.installed and o.install]
        fix = (
            "check the file is a complete whole slide image (re-copy it if truncated); supported: SVS, TIFF, OME-TIFF, "
            "NDPI, MRXS, SCN, BIF, DICOM (file or folder), OME-Zarr, CZI and, with the fallback reader, VSI, QPTIFF, "
            "ZVI, AFI."
        )
        if fixes:
            fix = " ".join(dict.fromkeys(fixes))
        elif missing:
            fix = f"install the reader for this format: {' or '.join(dict.fromkeys(missing))}; or " + fix
        what = (
            "; ".join(failures)
            if failures
            else "mixmag has no reader for this kind of " + ("folder" if self.path.is_dir() else "file")
        )
        raise SlideUnreadableError(self.path, f"no backend could read it ({what}).", fix)

    def _check_readable(self, mpp: float | None) -> None:
        """Decode one pixel so a truncated or corrupt file fails at open, not mid-run; first refuse a size no glass
        slide has (in pixels, and in mm where the mpp is known: a missing mpp is said once the slide is open)."""
        if not self._handle.level_dimensions or min(min(d) for d in self._handle.level_dimensions) < 1:
            raise SlideUnreadableError(self.path, f"empty image (levels {self._handle.level_dimensions}).")
        size = tuple(map(int, self._handle.level_dimensions[0]))
        check_pixel_count(self.path, size)
        try:
            resolved = resolve_mpp(self.path, dict(self._handle.properties), mpp, self._handle.native_mpp)
        except MppError:
            resolved = None
        if resolved is not None:
            check_physical_size(self.path, size, resolved.value, resolved.source)
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
    def bounds(self) -> tuple[int, int, int, int]:
        """The part of level 0 QuPath's OpenSlide server shows (x, y, width, height): OpenSlide's bounds where it
        reports them (MRXS, SCN, ...: `metadata.openslide_bounds`), else the whole of level 0."""
        return openslide_bounds(self.properties) or (0, 0, self.width, self.height)

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
        keep_within: float = 0.0,
    ) -> ReadPlan:
        return plan_read(
            self.level_downsamples,
            self.mpp,
            box,
            target_mpp,
            out_size,
            tolerance=tolerance,
            allow_upsample=allow_upsample,
            keep_within=keep_within,
            slide_name=str(self.path),
        )

    def read(self, plan: ReadPlan) -> np.ndarray:
        """Execute a plan: (out_height, out_width, 3) uint8 RGB."""
        direct, k = self._direct_reader(plan)
        if direct is not None and k > 1:
            # fused decode + box reduction, tile by tile while each tile is hot in cache
            return self._guarded(*_where(plan), lambda: direct.read(plan.x, plan.y, plan.width, plan.height, reduce=k))
        raw = self._read_raw(plan.level, plan.x, plan.y, plan.width, plan.height)
        return resize_area(raw, plan.out_width, plan.out_height)

    def read_tiles(self, plan: ReadPlan, out: np.ndarray) -> np.ndarray:
        """Execute a plan into `out`'s tiles ((n, t, t, 3), row-major over the output, whose sides are multiples of t):
        `split_tiles(read(plan), t)`, to the bit. A JPEG-tiled TIFF level read as it is or by whole k x k blocks is
        decoded tile by tile straight into the tiles, with no frame between them (one copy of each pixel fewer)."""
        direct, k = self._direct_reader(plan)
        if direct is not None:
            return self._guarded(*_where(plan), lambda: direct.read_tiles(*_where(plan)[1:], k, out))
        return split_tiles(self.read(plan), out.shape[1], out)

    def _direct_reader(self, plan: ReadPlan):
        """(the level's direct TIFF tile reader, k) when the plan reads whole k x k blocks of it (k = 1: as it is)
        inside the level; (None, k) otherwise."""
        direct = self._direct[plan.level] if plan.level < len(self._direct) else None
        k = plan.width // plan.out_width
        if (
            direct is not None
            and k >= 1
            and (plan.width, plan.height) == (k * plan.out_width, k * plan.out_height)
            and direct.fits(plan.x, plan.y, plan.width, plan.height, k)
        ):
            return direct, k
        return None, k

    def read_box(self, box: Box, target_mpp: float, out_size: tuple[int, int] | None = None, **kwargs) -> np.ndarray:
        return self.read(self.plan(box, target_mpp, out_size, **kwargs))

    def _read_raw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Pixels [x, x+width) x [y, y+height) of a level, in that level's pixels; white outside."""
        level_w, level_h = (int(v) for v in self._handle.level_dimensions[level])
        cx0, cy0 = max(x, 0), max(y, 0)
        cx1, cy1 = min(x + width, level_w), min(y + height, level_h)
        if cx1 <= cx0 or cy1 <= cy0:
            return np.full((height, width, 3), GLASS_WHITE, np.uint8)
        inner = self._guarded(
            level, cx0, cy0, cx1 - cx0, cy1 - cy0, lambda: self._backend_read(level, cx0, cy0, cx1 - cx0, cy1 - cy0)
        )
        if (cx0, cy0, cx1, cy1) == (x, y, x + width, y + height):
            return inner
        out = np.full((height, width, 3), GLASS_WHITE, np.uint8)
        out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = inner
        return out

    def _guarded(self, level: int, x: int, y: int, w: int, h: int, read):
        """Run a pixel read; a decoder failure becomes an error that names the slide and place. A tile that declares
        more than the file says it holds is the file's fault, not the backend's: no other backend is tried on it."""
        try:
            return read()
        except TileSizeError as exc:
            raise SlideTooLargeError(
                self.path,
                f"level {level} at ({x}, {y}): {exc}.",
                "re-copy or re-export the slide; mixmag never decodes a tile larger than the file declares.",
            ) from None
        except Exception as exc:  # noqa: BLE001 - decoder errors differ per backend and codec
            if is_url(self._location) and is_network_error(exc):
                raise access_error(str(self.path), exc) from None
            raise SlideUnreadableError(
                self.path,
                f"could not decode level {level} at ({x}, {y}) size {w}x{h}: {type(exc).__name__}: {exc}.",
                "the file is probably corrupt or truncated; re-copy or re-export it.",
            ) from exc

    def _backend_read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._handle.read(level, x, y, width, height)

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
        """What tells whether the slide changed: path, size, mtime (and, by URL, the ETag or the series digest)."""
        if self._remote is not None:
            return remote_fingerprint(str(self.path), self._remote)
        if is_dicomweb(self.path) and self._handle is not None:
            return dict(self._handle.fingerprint)
        return slide_fingerprint(self.path)

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
        return (
            f"Slide({str(self.path)!r}, backend={self.backend!r}, mpp={self.mpp:g}, size={self.width}x{self.height}, "
            f"levels={len(self.level_dimensions)})"
        )
