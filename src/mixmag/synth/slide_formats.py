"""Slides in the formats mixmag reads besides TIFF, made from known pixels with a known pixel size by each format's
own well-kept writer: wsidicomizer (DICOM), ome-zarr-py (OME-Zarr), pylibCZIrw (CZI). For tests and benchmarks;
each writer is an optional package (the `dev` extra installs all three) and its absence is an ImportError that
names the install command."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import tiffslide

INSTALL = {
    "wsidicomizer": "pip install wsidicomizer (in mixmag's dev extra)",
    "ome_zarr": "pip install ome-zarr (in mixmag's dev extra)",
    "pylibCZIrw": "pip install 'mixmag[czi]'",
    "slideio": "pip install 'mixmag[slides]'",
}


def require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{module} is not installed: {INSTALL[module]}")


def slide_pixels(path: Path) -> np.ndarray:
    """Level 0 of a TIFF slide as (H, W, 3) uint8."""
    with tiffslide.TiffSlide(path) as ts:
        return np.asarray(ts.read_region((0, 0), 0, ts.level_dimensions[0], as_array=True))[..., :3]


def write_dicom(source: Path, folder: Path, description: str | None = None) -> Path:
    """A DICOM WSI folder (one .dcm per level, JPEG q95 4:4:4 re-encoded, missing levels added) made from a TIFF
    slide; with `description`, the series is added to the folder under that SeriesDescription."""
    require("wsidicomizer")
    from pydicom import Dataset
    from wsidicom.codec.settings import JpegSettings, Subsampling
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.wsidicomizer import SourceIdentifier

    if description is None and folder.exists():
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    extra = None
    if description:
        extra = Dataset()
        extra.SeriesDescription = description
    WsiDicomizer.convert(
        source,
        tmp,
        metadata_post_processor=extra,
        preferred_source=SourceIdentifier.TIFFSLIDE,
        add_missing_levels=True,
        include_label=False,
        include_overview=False,
        include_thumbnail=False,
        workers=1,
        encoding=JpegSettings(quality=95, subsampling=Subsampling.R444),
    )
    folder.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        f.rename(folder / f.name)
    tmp.rmdir()
    return folder


def write_ome_zarr(
    image: np.ndarray,
    mpp: float,
    path: Path,
    n_levels: int = 3,
    *,
    version: str = "0.5",
    unit: str | None = "micrometer",
) -> Path:
    """An OME-NGFF pyramid (c, y, x; 2x local-mean levels; scale in `unit`, none when None) written by ome-zarr-py,
    as NGFF 0.5 (Zarr v3) or 0.4 (Zarr v2)."""
    require("ome_zarr")
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    if not path.exists():
        fmt = {"0.4": FormatV04, "0.5": FormatV05}[version]()
        root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
        units = {"axes_units": {"y": unit, "x": unit}} if unit else {}
        write_image(
            np.moveaxis(image, 2, 0),
            root,
            scale_factors=tuple(2**k for k in range(1, n_levels)),
            axes="cyx",
            scale={"c": 1.0, "y": mpp, "x": mpp},
            storage_options={"chunks": (3, 256, 256)},
            method="local_mean",
            fmt=fmt,
            **units,
        )
    return path


def write_czi(image: np.ndarray, mpp: float | None, path: Path, tile: int = 1024) -> Path:
    """A brightfield CZI (Bgr24 subblocks of `tile` px) with Scaling X/Y = mpp, written by pylibCZIrw."""
    require("pylibCZIrw")
    from pylibCZIrw import czi as pyczi

    if not path.exists():
        bgr = np.ascontiguousarray(image[..., ::-1])
        with pyczi.create_czi(str(path), exist_ok=True) as doc:
            for y in range(0, bgr.shape[0], tile):
                for x in range(0, bgr.shape[1], tile):
                    doc.write(np.ascontiguousarray(bgr[y : y + tile, x : x + tile]), location=(x, y))
            if mpp is None:
                doc.write_metadata()
            else:  # CZI stores the pixel size in meters (pylibCZIrw writes the value as given)
                doc.write_metadata(scale_x=mpp * 1e-6, scale_y=mpp * 1e-6)
    return path
