"""TiffSlide backend: JPEG-tiled TIFF/SVS/OME-TIFF near the raw decode rate (tiles decoded directly, see
slides.tiff_tiles), and TIFFs OpenSlide refuses (strip-based OME-TIFF). A slide URL (s3://, https://, ...) is
read through an fsspec file: only the byte ranges of the IFDs and the tiles decoded are fetched (slides.remote)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import tiffslide

from ..remote import is_url, open_ranges
from ..tiff_tiles import level_guards, level_readers
from .base import BackendHandle, as_rgb, composite_on_white


class TiffSlideHandle(BackendHandle):
    name = "tiffslide"

    def __init__(self, path: Path | str) -> None:
        self._file = open_ranges(path) if is_url(path) else None
        try:
            self._ts = tiffslide.TiffSlide(self._file if self._file is not None else path)
        except Exception:
            self._close_file()
            raise
        try:
            self.level_dimensions = tuple((int(d[0]), int(d[1])) for d in self._ts.level_dimensions)
            self.level_downsamples = tuple(float(d) for d in self._ts.level_downsamples)
            self.properties = dict(self._ts.properties)
            series = int(self.properties.get("tiffslide.series-index") or 0)
            lock = threading.Lock()
            self.direct = level_readers(self._ts.ts_tifffile, series, lock)
            self._guards = level_guards(self._ts.ts_tifffile, series, lock)
        except Exception:
            self._ts.close()
            self._close_file()
            raise

    @property
    def raw(self) -> tiffslide.TiffSlide:
        return self._ts

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        direct = self.direct[level] if level < len(self.direct) else None
        if direct is not None:
            return direct.read(x, y, width, height)
        guard = self._guards[level] if level < len(self._guards) else None
        if guard is not None:  # what tifffile will decode for this read must not declare more than its segment
            guard.check_box(x, y, width, height)
        ds = self.level_downsamples[level]
        # tiffslide floors location / downsample; ceil makes that land exactly on x.
        loc = (int(np.ceil(x * ds)), int(np.ceil(y * ds)))
        arr = np.asarray(self._ts.read_region(loc, level, (width, height), as_array=True))
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = composite_on_white(arr)
        return as_rgb(arr, "this TIFF")

    def close(self) -> None:
        try:
            self._ts.close()
        finally:
            self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
