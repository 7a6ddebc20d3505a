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

RESIZE_MODES = ("resize", "center-crop", "pad")


@dataclass(frozen=True)
class Preprocess:
    """size: output side in px; resize: how a non-square image becomes square
    ('resize' stretches, 'center-crop' crops the centre square, 'pad' pads with white);
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
        if self.resize == "center-crop" and h != w:
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


def normalize_batch(batch_uint8: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 normalized, the model's input."""
    x = batch_uint8.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.asarray(pre.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(pre.std, dtype=np.float32)[None, :, None, None]
    return (x - mean) / std
