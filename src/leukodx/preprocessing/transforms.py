"""The deterministic part of preprocessing: resize/crop and colour normalization.

A ``Preprocess`` is configuration as data: it is stored in every model card, and the exact same
object runs at training and at inference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from leukodx.errors import InvalidInputError
from leukodx.preprocessing.stain import STAIN_METHODS

RESIZE_MODES = ("resize", "center-crop", "pad", "cell-crop")
#: cell-crop: the square crop's side as a multiple of the nucleus box's longer side
CELL_CROP_FACTOR = 1.9


@dataclass(frozen=True)
class Preprocess:
    """size: output side in px; resize: how an image becomes the square input ('resize' stretches,
    'center-crop' crops the centre square, 'pad' pads with white, 'cell-crop' crops a square around
    the white cell's nucleus so the cell fills the same fraction of the input whatever the crop size
    or magnification of the source, padding with the image's own background colour);
    stain: 'none' | 'reinhard' | 'macenko'; mean/std: per-channel normalization in [0, 1] units."""

    size: int = 64
    resize: str = "resize"
    stain: str = "none"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    stain_reference: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise InvalidInputError(f"resize mode {self.resize!r}: expected one of {RESIZE_MODES}")
        if self.stain not in STAIN_METHODS:
            raise InvalidInputError(f"stain method {self.stain!r}: expected one of {tuple(STAIN_METHODS)}")
        if not 8 <= self.size <= 1024:
            raise InvalidInputError(f"input size {self.size}: expected 8..1024 px")

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (size, size, 3) uint8."""
        rgb = STAIN_METHODS[self.stain](rgb, self.stain_reference)
        h, w = rgb.shape[:2]
        if self.resize == "cell-crop":
            rgb = cell_crop(rgb)
        elif self.resize == "center-crop" and h != w:
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            rgb = rgb[top:top + s, left:left + s]
        elif self.resize == "pad" and h != w:
            s = max(h, w)
            canvas = np.full((s, s, 3), 255, dtype=np.uint8)
            top, left = (s - h) // 2, (s - w) // 2
            canvas[top:top + h, left:left + w] = rgb
            rgb = canvas
        im = Image.fromarray(rgb)
        # reducing_gap makes large downscales fast without visible aliasing
        im = im.resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(im, dtype=np.uint8)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def _nucleus_box(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the blue-purple nucleus nearest the centre (lobes joined), or None."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    small = 96 / max(rgb.shape[:2])
    im = Image.fromarray(rgb)
    if small < 1:
        im = im.resize((max(8, round(rgb.shape[1] * small)), max(8, round(rgb.shape[0] * small))), Image.Resampling.BILINEAR)
    else:
        small = 1.0
    x = np.asarray(im, dtype=np.float32)
    contrast = ndimage.gaussian_filter(x[..., 2] - x[..., 1], 1.0)
    if float(contrast.max() - contrast.min()) < 5:
        return None
    mask = contrast > max(float(threshold_otsu(contrast)), 10.0)
    # opening removes the thin purple rims of red cells, closing joins the lobes of one nucleus
    mask = ndimage.binary_opening(mask, structure=ndimage.generate_binary_structure(2, 1), iterations=3)
    mask = ndimage.binary_closing(mask, iterations=2)
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    h, w = mask.shape
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    centres = ndimage.center_of_mass(mask, labels, range(1, n + 1))
    # the nucleus: large and central (platelets and neighbours' edges are small or off-centre)
    score = [size / (1.0 + np.hypot(cy - h / 2, cx - w / 2) / (0.25 * max(h, w))) for size, (cy, cx) in zip(sizes, centres)]
    k = int(np.argmax(score)) + 1
    ys, xs = np.nonzero(labels == k)
    return (int(ys.min() / small), int(xs.min() / small), int((ys.max() + 1) / small), int((xs.max() + 1) / small))


def cell_crop(rgb: np.ndarray, factor: float = CELL_CROP_FACTOR) -> np.ndarray:
    """A square crop centred on the white cell's nucleus, side ``factor`` x the nucleus box's longer side,
    padded with the image's border colour where it leaves the image. The whole image if no nucleus is found."""
    box = _nucleus_box(rgb)
    h, w = rgb.shape[:2]
    if box is None:
        return rgb
    top, left, bottom, right = box
    side = max(16, int(round(factor * max(bottom - top, right - left))))
    cy, cx = (top + bottom) // 2, (left + right) // 2
    y0, x0 = cy - side // 2, cx - side // 2
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).reshape(-1, 3)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = np.median(border, axis=0).astype(np.uint8)
    sy0, sx0, sy1, sx1 = max(0, y0), max(0, x0), min(h, y0 + side), min(w, x0 + side)
    canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return canvas


def normalize_batch(batch_uint8: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 normalized, the model's input."""
    x = batch_uint8.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.asarray(pre.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(pre.std, dtype=np.float32)[None, :, None, None]
    return (x - mean) / std
