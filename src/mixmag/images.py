"""Pictures mixmag reads back from files (tissue masks, QC pictures): decoded only when their declared size fits.

A PNG or JPEG states its width and height in a few header bytes and may compress a huge, uniform image into almost
nothing (a 1 MB PNG can declare a gigapixel). Every picture is read through `read_picture`, which opens the file
lazily with PIL, compares the declared size with a pixel budget and only then decodes. PIL's own check, made as it
opens a file (`Image.MAX_IMAGE_PIXELS`, set here once for the whole process), uses the same budget, and its
`DecompressionBombWarning` is an error inside `read_picture`. Slides are not pictures: their tiles are bounded in
`mixmag.slides.tiff_tiles` and their size in `mixmag.slides.reader`.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import MixmagError
from .fileio import open_regular

# 16384 x 16384: the QC pictures and tissue mask of the largest slide mixmag reads (100 mm a side, slides.reader) at
# 6.1 um/px or coarser (the default thumbnail is 8 um/px); a decoded RGB picture of this size takes 0.8 GB
MAX_PICTURE_PIXELS = 1 << 28
Image.MAX_IMAGE_PIXELS = MAX_PICTURE_PIXELS


class PictureError(MixmagError):
    """A picture file that is missing, unreadable, or declares more pixels than mixmag decodes."""


def declared_size(data: bytes) -> tuple[int, int] | None:
    """The (width, height) a compressed picture (JPEG, JPEG 2000, PNG, WebP; e.g. one tile of a TIFF) declares in its
    header, read by PIL without decoding a pixel; None when PIL cannot tell. A size beyond PIL's bomb limit is
    reported as that limit's double (it is refused anyway)."""
    try:
        with Image.open(io.BytesIO(data), formats=_TILE_FORMATS) as image:
            return image.size
    except Image.DecompressionBombError:
        side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 1
        return side, side
    except (OSError, ValueError, SyntaxError, struct.error):
        return None


_TILE_FORMATS = ("JPEG", "JPEG2000", "PNG", "WEBP")


def _too_large(path: Path, what: str, declared: str, max_pixels: int) -> PictureError:
    return PictureError(
        f"{path}: the {what} declares {declared}, more than the {max_pixels / 1e6:,.0f} Mpx mixmag decodes; it is not "
        "the picture mixmag wrote: re-run the command that made it"
    )


def read_picture(path: str | Path, *, what: str, mode: str = "RGB", max_pixels: int = MAX_PICTURE_PIXELS) -> np.ndarray:
    """The picture as an (H, W, 3) RGB or (H, W) grey ("L") uint8 array, decoded only if its declared size fits
    `max_pixels` (and PIL's process-wide budget, checked as PIL opens it); a missing, damaged or oversized file is one
    sentence naming it."""
    path = Path(path)
    if not path.is_file():
        raise PictureError(f"{path}: {what} not found; re-run the command that writes it")
    with open_regular(path, what) as handle, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(handle) as image:  # reads the header only
                width, height = image.size
                if width * height > max_pixels:
                    raise _too_large(path, what, f"{width} x {height} px ({width * height / 1e6:,.0f} Mpx)", max_pixels)
                return np.asarray(image.convert(mode))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # PIL's words: "(N pixels)"
            found = re.search(r"\((\d+) pixels\)", str(exc))
            declared = f"{int(found.group(1)) / 1e6:,.0f} Mpx" if found else "more pixels"
            raise _too_large(path, what, declared, min(max_pixels, MAX_PICTURE_PIXELS)) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise PictureError(
                f"{path}: the {what} cannot be read as a picture ({type(exc).__name__}: {exc}); re-run the command "
                "that made it"
            ) from None
