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


LEICA_XMLNS = "http://www.leica-microsystems.com/scn/2010/10/01"  # openslide-vendor-leica.c LEICA_XMLNS_2


def write_leica_scn(
    image: np.ndarray, mpp: float, path: Path, offset: tuple[int, int], margin: tuple[int, int]
) -> Path:
    """A Leica SCN (tiled BigTIFF, the collection XML in ImageDescription) whose one brightfield main image sits at
    `offset` px inside a collection `margin` px larger on the right and bottom: OpenSlide reads it with level 0 the
    collection's size and reports the main image as `openslide.bounds-x/y/width/height` (openslide-vendor-leica.c:
    view offsets in nm, level size ceil(collection nm / nm per px)). For tests of software that crops to bounds
    (QuPath's OpenSlide server)."""
    import tifffile

    if path.exists():
        return path
    h, w = image.shape[:2]
    nm = mpp * 1000
    coll_w, coll_h = w + offset[0] + margin[0], h + offset[1] + margin[1]
    levels = [image, image[::2, ::2]]
    dims = "".join(
        f'<dimension sizeX="{lv.shape[1]}" sizeY="{lv.shape[0]}" r="{i}" ifd="{i}"/>' for i, lv in enumerate(levels)
    )
    xml = (
        f'<?xml version="1.0" encoding="utf-8"?><scn xmlns="{LEICA_XMLNS}">'
        f'<collection name="mixmag" uuid="mixmag-test" sizeX="{round(coll_w * nm)}" sizeY="{round(coll_h * nm)}">'
        '<image name="main" uuid="main"><creationDate>2026-01-01T00:00:00Z</creationDate>'
        '<device model="mixmag synth" version="1"/>'
        f'<pixels sizeX="{w}" sizeY="{h}">{dims}</pixels>'
        f'<view sizeX="{round(w * nm)}" sizeY="{round(h * nm)}" offsetX="{round(offset[0] * nm)}" '
        f'offsetY="{round(offset[1] * nm)}" spacingZ="0"/>'
        "<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings>"
        "<illuminationSettings><numericalAperture>0.7</numericalAperture>"
        "<illuminationSource>brightfield</illuminationSource></illuminationSettings></scanSettings>"
        "</image></collection></scn>"
    )
    tmp = path.with_name(path.name + ".partial")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, level in enumerate(levels):
            tif.write(
                np.ascontiguousarray(level),
                tile=(256, 256),
                compression="deflate",
                photometric="rgb",
                description=xml if i == 0 else None,
                metadata=None,
                resolution=(1e4 / (mpp * 2**i), 1e4 / (mpp * 2**i)),
                resolutionunit="CENTIMETER",
            )
    tmp.rename(path)
    return path
