"""OME-Zarr (OME-NGFF 0.4 and 0.5) image pyramids, read with zarr (installed with TiffSlide).

The first multiscale image of the group is the slide: its datasets are the levels, finest first; `axes` name the
dimensions (y and x of type "space", an optional channel axis of 1, 3 or 4 uint8 channels, t/z of size 1), and
each dataset's "scale" coordinate transformation gives its pixel size in the axis unit. The mpp is level 0's
x scale in µm (NGFF spec 0.4 §"multiscales", 0.5 §"coordinateTransformations"); a level's downsample is its x
scale over level 0's. A half-pixel "translation" of coarser levels (pixel centres, as ome-zarr-py writes) is the
same geometry as OpenSlide's levels, so it is accepted and not applied.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..tiff_tiles import MAX_SEGMENT_PIXELS
from .base import BackendHandle, NativeMpp, as_rgb

_UNIT_MICRONS = {
    "micrometer": 1.0,
    "micron": 1.0,
    "µm": 1.0,
    "um": 1.0,
    "nanometer": 1e-3,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}


def is_zarr_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("zarr.json", ".zattrs", ".zgroup"))


def _multiscale(attrs: dict) -> dict:
    ome = attrs.get("ome", attrs)  # NGFF 0.5 nests under "ome"; 0.4 keeps "multiscales" at the top
    scales = ome.get("multiscales") if isinstance(ome, dict) else None
    if not isinstance(scales, list) or not scales or not isinstance(scales[0], dict):
        raise ValueError("not an OME-Zarr image: the group has no 'multiscales' metadata")
    return scales[0]


def _scale(transforms) -> list[float] | None:
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale" and isinstance(t.get("scale"), list):
            return [float(v) for v in t["scale"]]
    return None


class OmeZarrHandle(BackendHandle):
    name = "omezarr"

    def __init__(self, path: Path) -> None:
        import zarr  # here, not at module level: tiling an SVS never imports zarr

        group = zarr.open_group(str(path), mode="r")
        ms = _multiscale(dict(group.attrs))
        axes = [a if isinstance(a, dict) else {"name": str(a)} for a in ms.get("axes", [])]
        names = [str(a.get("name", "")).lower() for a in axes]
        if "x" not in names or "y" not in names:
            raise ValueError(f"OME-Zarr axes {names} have no y and x")
        self._ix, self._iy = names.index("x"), names.index("y")
        self._ic = next((i for i, a in enumerate(axes) if a.get("type") == "channel" or names[i] == "c"), None)
        datasets = ms.get("datasets") or []
        self._arrays = [group[str(d["path"])] for d in datasets]
        scales = [_scale(d.get("coordinateTransformations")) for d in datasets]
        for arr in self._arrays:
            self._check_array(arr, names)
        self.level_dimensions = tuple((int(a.shape[self._ix]), int(a.shape[self._iy])) for a in self._arrays)
        if all(s is not None for s in scales):
            self.level_downsamples = tuple(s[self._ix] / scales[0][self._ix] for s in scales)
        else:  # no scales: the sizes tell the downsamples (as OpenSlide does)
            w0, h0 = self.level_dimensions[0]
            self.level_downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in self.level_dimensions)
        self.properties = {
            "omezarr.version": str(dict(group.attrs).get("ome", {}).get("version", ms.get("version", ""))),
            "omezarr.axes": ",".join(names),
        }
        self.native_mpp = self._mpp(axes, scales[0])
        self.direct = []

    def _check_array(self, arr, names: list[str]) -> None:
        if arr.ndim != len(names):
            raise ValueError(f"OME-Zarr level {arr.path} has {arr.ndim} dimensions but {len(names)} axes")
        if arr.dtype != np.uint8:
            raise ValueError(f"OME-Zarr pixels are {arr.dtype}; mixmag reads 8-bit brightfield (RGB or grey) images")
        values = math.prod(int(c) for c in arr.chunks)  # a chunk is decompressed whole for any read inside it
        if values > 4 * MAX_SEGMENT_PIXELS:
            raise ValueError(
                f"OME-Zarr level {arr.path} is stored in chunks of {tuple(arr.chunks)} ({values / 1e6:,.0f} M values "
                f"each, more than the {4 * MAX_SEGMENT_PIXELS / 1e6:,.0f} M mixmag decodes at once); re-save it with "
                "chunks of 256-1024 px"
            )
        for i, n in enumerate(names):
            if i not in (self._ix, self._iy, self._ic) and arr.shape[i] != 1:
                raise ValueError(
                    f"OME-Zarr axis {n!r} has {arr.shape[i]} planes; mixmag reads one 2-D image (t = z = 1)"
                )
        if self._ic is not None and arr.shape[self._ic] not in (1, 3, 4):
            raise ValueError(
                f"OME-Zarr has {arr.shape[self._ic]} channels; mixmag reads RGB or grey brightfield images"
            )

    def _mpp(self, axes: list[dict], scale: list[float] | None) -> NativeMpp | None:
        if scale is None:
            return None
        values = []
        for i in (self._ix, self._iy):
            factor = _UNIT_MICRONS.get(str(axes[i].get("unit", "")).lower())
            values.append(None if factor is None else scale[i] * factor)
        if values[0] is None:
            return None
        return NativeMpp(f"OME-NGFF scale ({axes[self._ix].get('unit')})", values[0], values[1])

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        arr = self._arrays[level]
        index: list = [0] * arr.ndim
        index[self._ix] = slice(x, x + width)
        index[self._iy] = slice(y, y + height)
        if self._ic is not None:
            index[self._ic] = slice(None)
        block = np.asarray(arr[tuple(index)])
        order = [self._iy, self._ix] + ([self._ic] if self._ic is not None else [])
        kept = sorted(order)  # axes that survive the integer indexing, in array order
        block = np.transpose(block, [kept.index(a) for a in order])
        return as_rgb(block, "this OME-Zarr image")

    def close(self) -> None:
        self._arrays = []
