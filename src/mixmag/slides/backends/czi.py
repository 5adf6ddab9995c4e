"""Zeiss CZI through libCZI (pylibCZIrw, the optional extra `pip install 'mixmag[czi]'`).

A brightfield CZI holds one Bgr24 (or Gray8) channel in subblocks placed in a logical plane whose bounding box may
not start at (0, 0): the slide's level-0 pixel (0, 0) is the bounding box's top-left. The mpp is the document's
Scaling/Items/Distance[@Id="X"] value, stored in meters (CZI file format spec, "Scaling" metadata). mixmag exposes
level 0 only: libCZI's zoomed reads resample with its own filter, which would break the exact area downsampling of
every other backend; coarser levels are made by mixmag's own downsampling (cells are read at their finest level
anyway; only the tissue thumbnail reads the whole slide once).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pylibCZIrw import czi as pyczi

from .base import BackendHandle, NativeMpp, as_rgb

_WHITE = (1.0, 1.0, 1.0)  # libCZI's background colour (RGB floats): unscanned area reads as glass


class CziHandle(BackendHandle):
    name = "czi"

    def __init__(self, path: Path) -> None:
        self._doc = pyczi.CziReader(str(path))
        try:
            self._setup()
        except Exception:
            self._doc.close()
            raise

    def _setup(self) -> None:
        box = self._doc.total_bounding_box
        channels = box.get("C", (0, 1))
        if channels[1] - channels[0] > 1:
            raise ValueError(
                f"the CZI has {channels[1] - channels[0]} channels (fluorescence?); mixmag reads one RGB or grey "
                "brightfield channel"
            )
        for dim in ("T", "Z"):
            lo, hi = box.get(dim, (0, 1))
            if hi - lo > 1:
                raise ValueError(f"the CZI has {hi - lo} planes along {dim}; mixmag reads one 2-D image")
        self._pixel_type = self._doc.get_channel_pixel_type(channels[0])
        if self._pixel_type not in ("Bgr24", "Gray8"):
            raise ValueError(
                f"the CZI's pixels are {self._pixel_type}; mixmag reads 8-bit brightfield (Bgr24 or Gray8)"
            )
        rect = self._doc.total_bounding_rectangle
        self._origin = (int(rect.x), int(rect.y))
        self.level_dimensions = ((int(rect.w), int(rect.h)),)
        self.level_downsamples = (1.0,)
        self.properties = {"czi.pixel-type": self._pixel_type, "czi.origin": f"{rect.x},{rect.y}"}
        self.native_mpp = self._mpp()
        self.direct = []

    def _mpp(self) -> NativeMpp | None:
        try:
            items = self._doc.metadata["ImageDocument"]["Metadata"]["Scaling"]["Items"]["Distance"]
        except (KeyError, TypeError):
            return None
        items = items if isinstance(items, list) else [items]
        meters = {str(d.get("@Id")): _float(d.get("Value")) for d in items if isinstance(d, dict)}
        x, y = meters.get("X"), meters.get("Y")
        if not x:
            return None
        return NativeMpp("CZI Scaling (Distance X)", x * 1e6, y * 1e6 if y else None)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        roi = (self._origin[0] + x, self._origin[1] + y, width, height)
        block = self._doc.read(roi=roi, plane={"C": 0, "T": 0, "Z": 0}, background_pixel=_WHITE)
        if self._pixel_type == "Bgr24":
            block = block[..., ::-1]  # libCZI hands back BGR
        return as_rgb(np.asarray(block), "this CZI")

    def close(self) -> None:
        self._doc.close()


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
