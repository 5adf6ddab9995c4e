"""Fallback for formats OpenSlide and TiffSlide cannot open (Olympus/Evident VSI, Akoya QPTIFF, Leica SCN,
Zeiss ZVI, Hamamatsu AFI, ...), through slideio (the optional extra `pip install 'mixmag[slides]'`).

Why slideio: of the multi-format libraries tried (slideio 2.10, fastslide 0.8.1, bioio 3.6) it decoded the real
CMU-1-Small-Region.svs bit-identically to OpenSlide (fastslide: up to 1 grey level off, mean 0.61), covers the
formats pathology labs hold beyond OpenSlide (VSI, QPTIFF, SCN, ZVI, AFI, CZI, NDPI, DICOM), is BSD-3 licensed
and released regularly; bioio needs one plugin per format (the VSI one is young) and reads through dask/xarray.
See docs/formats-readers.md. A slideio file may hold several scenes (a VSI's overview and its scans): the largest
2-D scene is the slide, and its index is recorded in the properties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slideio

from .base import BackendHandle, NativeMpp, as_rgb


class SlideioHandle(BackendHandle):
    name = "slideio"

    def __init__(self, path: Path) -> None:
        self._slide = slideio.open_slide(str(path), "AUTO")
        scenes = [self._slide.get_scene(i) for i in range(self._slide.num_scenes)]
        if not scenes:
            raise ValueError("the file holds no image scene")
        index = max(range(len(scenes)), key=lambda i: scenes[i].rect[2] * scenes[i].rect[3])
        self._scene = scene = scenes[index]
        if scene.num_channels not in (1, 3, 4) or any(
            scene.get_channel_data_type(c) != np.uint8 for c in range(scene.num_channels)
        ):
            raise ValueError(
                f"scene {index} has {scene.num_channels} channel(s) of {scene.get_channel_data_type(0)}; "
                "mixmag reads 8-bit brightfield (RGB or grey)"
            )
        width, height = int(scene.rect[2]), int(scene.rect[3])
        zooms = [scene.get_zoom_level_info(i) for i in range(scene.num_zoom_levels)] or []
        dims = [(int(z.size.width), int(z.size.height)) for z in zooms] or [(width, height)]
        if dims[0] != (width, height):
            dims = [(width, height)]
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple((width / w + height / h) / 2 for w, h in dims)
        self.properties = {
            "slideio.scene": str(index),
            "slideio.scenes": str(len(scenes)),
            "slideio.scene-name": str(scene.name),
        }
        rx, ry = scene.resolution  # meters per pixel, 0 when unknown
        self.native_mpp = NativeMpp("slideio scene resolution", rx * 1e6, ry * 1e6 or None) if rx > 0 else None
        self.direct = []

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        if level == 0:
            block = self._scene.read_block((x, y, width, height))
        else:  # a level's own pixels: the level-0 rectangle it covers, asked for at the level's size
            w0, h0 = self.level_dimensions[0]
            x0, y0 = round(x * ds), round(y * ds)
            rect = (x0, y0, min(round(width * ds), w0 - x0), min(round(height * ds), h0 - y0))
            block = self._scene.read_block(rect, size=(width, height))
        return as_rgb(np.asarray(block), "this slide")

    def close(self) -> None:
        self._scene = None
        self._slide = None
