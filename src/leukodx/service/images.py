"""Pictures the review screen shows: a cell's gallery thumbnail, a field reduced for the overlay
view, and a cell cut from its field at full resolution (the zoom). All decoded through
``leukodx.data.images`` (size limits, EXIF orientation) and sent as JPEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leukodx.data.images import jpeg_bytes, read_image, thumbnail_jpeg

#: the longest side a field preview is sent at (the overlay's boxes are in full-resolution pixels)
PREVIEW_SIDE = 1600


def crop(rgb: np.ndarray, box) -> np.ndarray:
    """The square around a cell's box that the smear pipeline's cell classifier sees."""
    from leukodx.smear.pipeline import CROP_FACTOR, square_crop

    return square_crop(rgb, box, CROP_FACTOR)


def cell_thumbnail(field: np.ndarray, box) -> bytes:
    """The gallery thumbnail of a cell found in ``field`` at ``box`` (xyxy, field pixels)."""
    return thumbnail_jpeg(crop(field, box))


def field_preview(path: Path, max_side: int = PREVIEW_SIDE) -> bytes:
    """A field reduced to about ``max_side`` px on its longer side (decoded reduced, never at full size)."""
    rgb = read_image(path, max_side=max_side)
    scale = max_side / max(rgb.shape[:2])
    if scale < 1:
        from PIL import Image

        rgb = np.asarray(Image.fromarray(rgb).resize((max(1, round(rgb.shape[1] * scale)),
                                                      max(1, round(rgb.shape[0] * scale)))))
    return jpeg_bytes(rgb, quality=85)


def cell_zoom(path: Path, box) -> bytes:
    """A cell cut from its field at full resolution."""
    return jpeg_bytes(crop(read_image(path), box), quality=92)
