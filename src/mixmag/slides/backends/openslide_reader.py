"""OpenSlide backend: MRXS, NDPI, SCN, BIF, DICOM and the TIFF flavours; faster than TiffSlide on JPEG 2000 SVS.

DICOM whole slide images are read by OpenSlide from any one file of the series (it finds the other levels in
the same folder); a folder is first resolved to one series (slides.backends.dicom).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide

from .base import BackendHandle, composite_on_white
from .dicom import resolve_dicom_path


class OpenSlideHandle(BackendHandle):
    name = "openslide"

    def __init__(self, path: Path) -> None:
        self._osr = openslide.OpenSlide(str(resolve_dicom_path(path)))
        self.level_dimensions = tuple((int(d[0]), int(d[1])) for d in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self.properties = dict(self._osr.properties)
        self.direct = []

    @property
    def raw(self) -> openslide.OpenSlide:
        return self._osr

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        rgba = np.asarray(self._osr.read_region((round(x * ds), round(y * ds)), level, (width, height)))
        return composite_on_white(rgba)

    def close(self) -> None:
        self._osr.close()
