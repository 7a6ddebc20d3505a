"""Colour normalization of stained smears: Reinhard (Lab statistics), Macenko (stain vectors) and
levels (the image's own darkest and brightest colours).

Each maps an RGB uint8 image onto a reference appearance, so a model sees one staining protocol
whatever the lab. References default to typical May-Grunwald-Giemsa values and can be fitted to
any image with ``fit_reference``.
"""

from __future__ import annotations

import numpy as np
from leukodx.errors import InvalidInputError

# --- sRGB <-> CIE Lab (D65) -------------------------------------------------------------------
_RGB2XYZ = np.array([[0.412453, 0.357580, 0.180423],
                     [0.212671, 0.715160, 0.072169],
                     [0.019334, 0.119193, 0.950227]])
_XYZ2RGB = np.linalg.inv(_RGB2XYZ)
_WHITE = np.array([0.950456, 1.0, 1.088754])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ _RGB2XYZ.T / _WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = fy - lab[..., 2] / 200.0
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(f > 0.206893, f ** 3, (f - 16.0 / 116.0) / 7.787) * _WHITE
    c = xyz @ _XYZ2RGB.T
    c = np.where(c > 0.0031308, 1.055 * np.clip(c, 0, None) ** (1 / 2.4) - 0.055, 12.92 * c)
    return np.clip(c * 255.0 + 0.5, 0, 255).astype(np.uint8)


# --- Reinhard ---------------------------------------------------------------------------------
#: Lab mean and std of a typical MGG-stained CellaVision cell image (pbc median).
REINHARD_REFERENCE = {"mean": (80.0, 8.0, -6.0), "std": (12.0, 9.0, 8.0)}


def reinhard(rgb: np.ndarray, reference: dict | None = None) -> np.ndarray:
    """Match the per-channel Lab mean and std of ``rgb`` to the reference's."""
    ref = reference or REINHARD_REFERENCE
    lab = rgb_to_lab(rgb)
    mean = lab.reshape(-1, 3).mean(0)
    std = lab.reshape(-1, 3).std(0) + 1e-6
    out = (lab - mean) / std * np.asarray(ref["std"]) + np.asarray(ref["mean"])
    return lab_to_rgb(out)


def reinhard_reference(rgb: np.ndarray) -> dict:
    lab = rgb_to_lab(rgb).reshape(-1, 3)
    return {"mean": tuple(float(v) for v in lab.mean(0)), "std": tuple(float(v) for v in lab.std(0))}


# --- Macenko ----------------------------------------------------------------------------------
#: Two stain vectors in optical density (rows: the purple nuclear and the pink eosin-like stain)
#: and their 99th-percentile concentrations, for a typical MGG smear.
MACENKO_REFERENCE = {
    "stains": ((0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581)),
    "max_conc": (1.9705, 1.0308),
}
_IO = 255.0


def _stain_matrix(od: np.ndarray, alpha: float = 1.0, beta: float = 0.15) -> np.ndarray | None:
    tissue = od[(od > beta).all(axis=1)]
    if len(tissue) < 10:
        return None
    _, eigvecs = np.linalg.eigh(np.cov(tissue.T))
    plane = eigvecs[:, 1:3]
    proj = tissue @ plane
    angles = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angles, alpha), np.percentile(angles, 100 - alpha)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.array([v1, v2]) if v1[0] > v2[0] else np.array([v2, v1])
    stains *= np.sign(stains.sum(axis=1, keepdims=True))  # OD vectors are positive
    return stains / np.linalg.norm(stains, axis=1, keepdims=True)


def macenko(rgb: np.ndarray, reference: dict | None = None) -> np.ndarray:
    """Separate the two stains, rescale their concentrations, recompose with reference stains.

    An image with too little stained area (blank glass) is returned unchanged.
    """
    ref = reference or MACENKO_REFERENCE
    h, w, _ = rgb.shape
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / _IO)
    stains = _stain_matrix(od)
    if stains is None:
        return rgb.copy()
    conc, *_ = np.linalg.lstsq(stains.T, od.T, rcond=None)
    max_conc = np.percentile(conc, 99, axis=1)
    conc *= (np.asarray(ref["max_conc"]) / np.maximum(max_conc, 1e-6))[:, None]
    out = _IO * np.exp(-(np.asarray(ref["stains"]).T @ conc))
    return np.clip(out.T.reshape(h, w, 3), 0, 255).astype(np.uint8)


def macenko_reference(rgb: np.ndarray) -> dict:
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / _IO)
    stains = _stain_matrix(od)
    if stains is None:
        raise InvalidInputError("reference image has too little stained area to fit stain vectors")
    conc, *_ = np.linalg.lstsq(stains.T, od.T, rcond=None)
    return {"stains": stains.tolist(), "max_conc": np.percentile(conc, 99, axis=1).tolist()}


# --- Levels -----------------------------------------------------------------------------------
#: The mean colour of the darkest 2% of pixels (nuclear chromatin) and of the brightest 10% (glass
#: and plasma) of a typical CellaVision MGG cell image: the medians of 100 images each of pbc,
#: deepapl and wbc-seg Dataset-2, rounded.
LEVELS_REFERENCE = {"dark": (75.0, 28.0, 124.0), "bright": (254.7, 229.0, 204.3)}


def levels(rgb: np.ndarray, reference: dict | None = None) -> np.ndarray:
    """A per-channel linear map taking the image's darkest colour (mean of the darkest 2% of pixels by
    brightness) and brightest (mean of the brightest 10%) onto the reference's: a lab whose glass
    looks yellow or whose nuclei stain paler is brought to one white point and one black point.
    A flat image (less than 8 levels between the two in every channel) is returned unchanged."""
    ref = reference or LEVELS_REFERENCE
    x = rgb.reshape(-1, 3).astype(np.float32)
    lum = x.sum(axis=1)
    lo, hi = np.percentile(lum, (2.0, 90.0))
    dark, bright = x[lum <= lo].mean(axis=0), x[lum >= hi].mean(axis=0)
    span = bright - dark
    if (span < 8).all():
        return rgb.copy()
    gain = (np.asarray(ref["bright"], np.float32) - np.asarray(ref["dark"], np.float32)) / np.maximum(span, 8.0)
    out = (x - dark) * gain + np.asarray(ref["dark"], np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8).reshape(rgb.shape)


STAIN_METHODS = {"none": lambda rgb, reference=None: rgb, "reinhard": reinhard, "macenko": macenko, "levels": levels}
