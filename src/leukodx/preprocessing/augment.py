"""Random augmentation of whole training batches on tensors.

Per-image PIL pipelines are the bottleneck on a 2-core CPU; drawing per-sample parameters and
warping the whole uint8-cached batch with one ``grid_sample`` keeps the cores on the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from leukodx.errors import InvalidInputError


@dataclass(frozen=True)
class Augment:
    """flip: random horizontal+vertical flips; rotate: max degrees (180 = any angle);
    translate: max shift as a fraction of the side; scale: (min, max) zoom;
    color: strength of brightness/contrast/saturation jitter (0 = off);
    stain: strength of stain jitter in haematoxylin-eosin-DAB optical density (Tellez et al. 2018:
    each stain's density scaled by 1 +- stain and shifted by +- stain, per image; 0 = off);
    hue: max hue rotation as a fraction of a full turn; grayscale: probability of a grey image.
    The last three imitate another lab's staining and scanner, the cause of most cross-site error."""

    flip: bool = True
    rotate: float = 180.0
    translate: float = 0.05
    scale: tuple[float, float] = (0.9, 1.1)
    color: float = 0.1
    stain: float = 0.0
    hue: float = 0.0
    grayscale: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Augment":
        d = dict(d)
        if "scale" in d:
            d["scale"] = tuple(d["scale"])
        return cls(**d)

    @property
    def geometric(self) -> bool:
        return self.flip or self.rotate > 0 or self.translate > 0 or self.scale != (1.0, 1.0)


NO_AUGMENT = Augment(flip=False, rotate=0.0, translate=0.0, scale=(1.0, 1.0), color=0.0)

#: every geometric change plus another lab's look: stain densities, hue, brightness, grey images
_STAIN = Augment(color=0.2, stain=0.1, hue=0.04, grayscale=0.1)

AUGMENT_PRESETS = {
    "all": Augment(),
    # flips and any rotation with faint colour jitter: for one-site sets with consistent staining
    "light": Augment(flip=True, rotate=180.0, translate=0.0, scale=(1.0, 1.0), color=0.05),
    "none": NO_AUGMENT,
    "flip": Augment(flip=True, rotate=0.0, translate=0.0, scale=(1.0, 1.0), color=0.0),
    "rotation": Augment(flip=False, rotate=180.0, translate=0.0, scale=(1.0, 1.0), color=0.0),
    "color": Augment(flip=False, rotate=0.0, translate=0.0, scale=(1.0, 1.0), color=0.2),
    "stain": _STAIN,
    # the same plus magnification x0.8-1.6: a cell zoomed in by another lab's optics or crop size
    # (the detector's "scale-stain" does this for fields)
    "scale-stain": replace(_STAIN, scale=(0.8, 1.6)),
}

# optical densities of haematoxylin, eosin and DAB per RGB channel (Ruifrok & Johnston 2001; skimage.color)
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
# RGB <-> YIQ: hue is an angle in the I-Q plane
_YIQ_FROM_RGB = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)


def augment_preset(name: str) -> Augment:
    """Named augmentation recipes (the arms of the augmentation ablation)."""
    if name not in AUGMENT_PRESETS:
        raise InvalidInputError(f"--augment {name!r}: expected one of {', '.join(AUGMENT_PRESETS)}")
    return AUGMENT_PRESETS[name]


def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """x: (N, 3, S, S) float in [0, 1]; returns an augmented copy of the same shape."""
    n = x.shape[0]
    if aug.geometric:
        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(n, generator=generator) * (hi - lo) + lo

        angle = uniform(-aug.rotate, aug.rotate) * math.pi / 180.0
        zoom = uniform(*aug.scale)
        sx = torch.ones(n)
        sy = torch.ones(n)
        if aug.flip:
            sx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
            sy = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sy
        theta[:, 1, 0], theta[:, 1, 1] = sin * sx, cos * sy
        theta[:, 0, 2] = uniform(-aug.translate, aug.translate) * 2
        theta[:, 1, 2] = uniform(-aug.translate, aug.translate) * 2
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # reflection keeps corners filled with smear-like texture instead of black
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if aug.color > 0:
        c = aug.color
        brightness = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * c
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * c
        saturation = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * c
        x = x * brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        gray = x.mean(dim=1, keepdim=True)
        x = (x - gray) * saturation + gray
        x = x.clamp(0, 1)
    if aug.stain > 0:
        x = _stain_jitter(x, aug.stain, generator)
    if aug.hue > 0:
        angle = (torch.rand(n, generator=generator) * 2 - 1) * aug.hue * 2 * math.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(n, 3, 3)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        matrix = _RGB_FROM_YIQ @ rot @ _YIQ_FROM_RGB          # (n, 3, 3) per-image colour transform
        x = torch.einsum("nij,njhw->nihw", matrix, x).clamp(0, 1)
    if aug.grayscale > 0:
        grey = (torch.rand(n, generator=generator) < aug.grayscale).view(n, 1, 1, 1)
        luma = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = torch.where(grey, luma.expand_as(x), x)
    return x


def _stain_jitter(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Scale and shift each image's stain densities in HED space, then back to RGB."""
    n = x.shape[0]
    alpha = 1 + (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * sigma
    beta = (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * sigma
    return shift_stains(x, alpha, beta)


def shift_stains(x: torch.Tensor, alpha, beta) -> torch.Tensor:
    """Each stain's density (haematoxylin, eosin, DAB) times ``alpha`` plus ``beta`` (per image,
    broadcast as (N, 3, 1, 1) or a 3-sequence): another lab's staining, on x (N, 3, H, W) in [0, 1]."""
    alpha = torch.as_tensor(alpha, dtype=x.dtype).reshape(-1, 3, 1, 1)
    beta = torch.as_tensor(beta, dtype=x.dtype).reshape(-1, 3, 1, 1)
    od = -torch.log(x.clamp(min=1e-3))                               # optical density per RGB channel
    hed = torch.einsum("cs,nchw->nshw", _HED_FROM_RGB, od)           # stain densities
    od = torch.einsum("sc,nshw->nchw", _RGB_FROM_HED, hed * alpha + beta)
    return torch.exp(-od).clamp(0, 1)
