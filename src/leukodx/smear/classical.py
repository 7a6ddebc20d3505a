"""The classical baseline for white cells: colour thresholding, morphology and a watershed.

Wright-Giemsa stains white-cell nuclei (and platelets) blue-purple, red cells pink, the
background pale: blue minus green separates nuclei from everything else. Lobes of one nucleus
are joined by a dilation; touching cells are split by a watershed on the distance transform;
small purple objects (platelets) are dropped by area. Parameters are for BCCD's magnification
and scale with ``pixel_scale`` (field pixels per BCCD pixel); the defaults were chosen on
BCCD val (benchmarks/results/smear.md reports test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class NucleusThreshold:
    min_contrast: float = 35.0       # floor under Otsu's threshold on blue - green
    join_radius: int = 16            # px: lobes of one nucleus closer than this are one cell
    min_nucleus_area: int = 1800     # px: platelets are ~1,200 px, white-cell nuclei ~5,000+
    min_cell_distance: int = 90      # px between watershed seeds: two cells' centres are further apart
    box_margin: float = 0.15         # nucleus box grown by this fraction per side to cover the cytoplasm
    pixel_scale: float = 1.0


def nucleus_mask(rgb: np.ndarray, params: NucleusThreshold = NucleusThreshold()) -> np.ndarray:
    """Boolean mask of blue-purple (nucleus or platelet) pixels."""
    from skimage.filters import threshold_otsu

    rgb = np.asarray(rgb)
    contrast = rgb[..., 2].astype(np.float32) - rgb[..., 1].astype(np.float32)
    contrast = ndimage.gaussian_filter(contrast, 2.0 * params.pixel_scale)
    if float(contrast.max() - contrast.min()) < 1e-3:  # a flat image: nothing stained
        return np.zeros(rgb.shape[:2], dtype=bool)
    threshold = max(float(threshold_otsu(contrast)), params.min_contrast)
    mask = contrast > threshold
    mask = ndimage.binary_opening(mask, iterations=max(1, int(round(2 * params.pixel_scale))))
    return ndimage.binary_fill_holes(mask)


def detect_white_cells(rgb: np.ndarray, params: NucleusThreshold = NucleusThreshold()) -> dict:
    """White cells as boxes (field pixels), each scored by its nucleus area relative to the minimum."""
    from skimage.feature import peak_local_max
    from skimage.morphology import disk
    from skimage.segmentation import watershed

    h, w = rgb.shape[:2]
    mask = nucleus_mask(rgb, params)
    scale = params.pixel_scale
    joined = ndimage.binary_dilation(mask, structure=disk(max(1, int(round(params.join_radius * scale)))))
    distance = ndimage.distance_transform_edt(joined)
    blobs, n = ndimage.label(joined)
    if n == 0:
        return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, int), "scores": np.zeros(0, np.float32)}
    peaks = peak_local_max(distance, min_distance=max(1, int(params.min_cell_distance * scale)), labels=blobs,
                           exclude_border=False)
    markers = np.zeros_like(blobs)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    regions = watershed(-distance, markers, mask=joined)
    boxes, scores = [], []
    min_area = params.min_nucleus_area * scale * scale
    for i, sl in enumerate(ndimage.find_objects(regions), start=1):
        if sl is None:
            continue
        nucleus = (regions[sl] == i) & mask[sl]
        area = int(nucleus.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(nucleus)
        y0, y1 = ys.min() + sl[0].start, ys.max() + sl[0].start + 1
        x0, x1 = xs.min() + sl[1].start, xs.max() + sl[1].start + 1
        my, mx = (y1 - y0) * params.box_margin, (x1 - x0) * params.box_margin
        boxes.append([max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)])
        scores.append(min(1.0, area / (4 * min_area)))
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.ones(len(boxes), int),
            "scores": np.asarray(scores, np.float32)}
