"""How big a pixel is: each field's scale measured from its own red cells, never assumed.

The detector was trained on BCCD fields, where a red cell's box is ~103 px on a side (median of the
training boxes; a red cell is ~7.5 um across, so ~0.073 um per px). A field from another microscope
is brought to that scale before detection. The scale comes from, in order:

1. ``um_per_px`` given by the user (they know their camera): ``pixel_scale = DETECTOR_UM_PER_PX / um_per_px``;
2. ``pixel_scale`` given by the user (image px per detector px);
3. an estimate: red cells are the most common round objects of a smear, so the typical radius of the
   stained objects (distance-transform maxima inside the cell mask) proposes a scale; the detector
   then checks the proposal and native scale, and the candidate at which it finds the most red
   cells of the size it was trained on wins and is refined by their median box side.

An estimate is *uncertain* when too few red cells of training size are found at any candidate:
the field then gets no counts, and the output says why (the stain, the magnification or the
focus is outside what the detector knows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from leukodx.errors import InvalidInputError

#: median side of the red-cell boxes in the detector's training fields (BCCD), in px
TRAINING_RBC_SIDE_PX = 103.0
#: a red cell's diameter (normocyte), um
RBC_DIAMETER_UM = 7.5
DETECTOR_UM_PER_PX = RBC_DIAMETER_UM / TRAINING_RBC_SIDE_PX
#: a red-cell box "fits" the detector when its side is within this factor range of the training median
FIT_RANGE = (0.7, 1.4)
#: fewer fitting red cells than this at the best candidate: the scale is uncertain, nothing is counted
MIN_FITTING_RBC = 3
#: the stained objects' size reads red cells small on pale, crowded smears (BCCD: ~0.67x): also probe this much larger
PROPOSAL_UNDERREAD = 1.45
#: the range of pixel scales the pipeline accepts (image px per detector px)
SCALE_RANGE = (0.02, 50.0)
#: rescaling the input beyond this many pixels would exhaust memory, whatever the field
MAX_RESCALED_PIXELS = 150_000_000


@dataclass
class Scale:
    """The scale a field was analysed at, and how it was obtained."""

    pixel_scale: float | None       # image px per detector px; None when no scale could be trusted
    um_per_px: float | None
    source: str                     # "given: --um-per-px" | "given: --pixel-scale" | "estimated" | "uncertain"
    detail: str
    fitting_rbc: int | None = None  # red cells of training size at the chosen scale (estimates only)
    rbc_diameter_px: float | None = None
    #: the detector's output at ``pixel_scale`` when the estimate already ran it there (reused, not saved)
    detections: dict | None = field(default=None, repr=False, compare=False)

    @property
    def uncertain(self) -> bool:
        return self.pixel_scale is None

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "detections"}
        return {**out, "uncertain": self.uncertain}


def given_scale(pixel_scale: float | None = None, um_per_px: float | None = None) -> Scale | None:
    """The user's scale, checked; None when they gave none (estimate it)."""
    if pixel_scale is not None and um_per_px is not None:
        raise InvalidInputError("give --um-per-px or --pixel-scale, not both")
    if um_per_px is not None:
        if not 0.005 <= um_per_px <= 5:
            raise InvalidInputError(f"--um-per-px {um_per_px}: expected 0.005..5 um per pixel")
        scale = DETECTOR_UM_PER_PX / um_per_px
        _check_range(scale)
        return Scale(scale, um_per_px, "given: --um-per-px", f"{um_per_px} um/px given by the user")
    if pixel_scale is not None:
        _check_range(pixel_scale)
        return Scale(pixel_scale, DETECTOR_UM_PER_PX / pixel_scale, "given: --pixel-scale",
                     f"{pixel_scale} image px per detector px given by the user")
    return None


def _check_range(pixel_scale: float) -> None:
    lo, hi = SCALE_RANGE
    if not lo <= pixel_scale <= hi:
        raise InvalidInputError(f"pixel scale {pixel_scale:g}: expected {lo}..{hi} (image px per detector px; "
                                f"the detector sees ~{TRAINING_RBC_SIDE_PX:.0f} px per red cell)")


def object_diameter(rgb: np.ndarray, work_side: int = 320) -> tuple[float | None, int]:
    """Typical diameter (px) of the stained round objects of a field, and how many maxima gave it.

    The field is reduced to ~``work_side`` px, cells are told from the background by their colour
    distance to it (Otsu), holes (red-cell pallor) are filled, and the distance transform's local
    maxima are the cells' radii. Crowded or pale fields can mislead it: the detector checks it.
    """
    from skimage.filters import threshold_otsu

    h, w = rgb.shape[:2]
    k = max(1, int(round(max(h, w) / work_side)))
    small = np.asarray(Image.fromarray(rgb).resize((max(1, w // k), max(1, h // k)), Image.Resampling.BILINEAR),
                       dtype=np.float32)
    flat = small.reshape(-1, 3)
    total = flat.sum(1)
    background = np.median(flat[total >= np.percentile(total, 85)], axis=0)
    distance = np.sqrt(((small - background) ** 2).sum(2))
    if float(distance.max() - distance.min()) < 1e-3:
        return None, 0
    mask = distance > threshold_otsu(distance)
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=1))
    edt = ndimage.distance_transform_edt(mask)
    peaks = (edt == ndimage.maximum_filter(edt, size=5)) & (edt > 2)
    radii = edt[peaks]
    if len(radii) < 5:
        return None, int(len(radii))
    # the upper quartile: maxima also sit in gaps, on ridges and on platelets, which pull the median down
    return float(np.percentile(radii, 75) * 2 * k), int(len(radii))


def to_detector_scale(rgb: np.ndarray, pixel_scale: float) -> np.ndarray:
    """The field resized to the detector's magnification (boxes come back divided by 1 / pixel_scale)."""
    if abs(pixel_scale - 1.0) < 1e-3:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, int(round(w / pixel_scale))), max(1, int(round(h / pixel_scale))))
    if size[0] * size[1] > MAX_RESCALED_PIXELS:
        raise InvalidInputError(f"pixel scale {pixel_scale:g}: a {w}x{h} image would become "
                                f"{size[0]}x{size[1]} px; analyse it in parts")
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def fitting_red_cells(detections: dict, rbc_label: int, threshold: float) -> np.ndarray:
    """Sides (detector px) of the confident red-cell boxes of training size."""
    keep = (detections["labels"] == rbc_label) & (detections["scores"] >= threshold)
    boxes = detections["boxes"][keep]
    sides = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    lo, hi = FIT_RANGE
    return sides[(sides >= lo * TRAINING_RBC_SIDE_PX) & (sides <= hi * TRAINING_RBC_SIDE_PX)]


def estimate_scale(rgb: np.ndarray, detector, rbc_threshold: float = 0.5, max_pixels: int = 12_000_000) -> Scale:
    """The field's scale from its own red cells, checked by ``detector`` (see the module doc)."""
    diameter, n_objects = object_diameter(rgb)
    candidates = [1.0]
    if diameter:
        # on pale, crowded smears the objects' size under-reads red cells by up to ~1/1.5: probe both
        for factor in (1.0, PROPOSAL_UNDERREAD):
            proposal = float(np.clip(factor * diameter / TRAINING_RBC_SIDE_PX, *SCALE_RANGE))
            if all(abs(np.log(proposal / c)) > np.log(1.25) for c in candidates):  # close ones add nothing
                candidates.append(proposal)
    rbc = detector.classes.index("RBC")
    h, w = rgb.shape[:2]
    best = None
    for candidate in candidates:
        if h * w / candidate ** 2 > max_pixels:
            continue  # upscaling this far would be slower than useful
        detections = detector.detect(to_detector_scale(rgb, candidate))
        sides = fitting_red_cells(detections, rbc, rbc_threshold)
        if best is None or len(sides) > len(best[1]):
            best = (candidate, sides, detections)
        if len(sides) >= MIN_FITTING_RBC:
            break  # native scale fits: no need to probe the proposal
    proposal_text = (f"stained objects ~{diameter:.1f} px across ({n_objects} maxima)" if diameter
                     else "no clear round objects")
    if best is None or len(best[1]) < MIN_FITTING_RBC:
        tried = ", ".join(f"{c:.3g}" for c in candidates)
        found = 0 if best is None else len(best[1])
        return Scale(None, None, "uncertain",
                     f"{proposal_text}; at pixel scales {tried} the detector found at most {found} red cells of the "
                     f"size it was trained on (needs {MIN_FITTING_RBC}): the magnification, stain or focus is "
                     "outside what it knows", fitting_rbc=found, rbc_diameter_px=diameter)
    candidate, sides, detections = best
    refined = float(np.clip(candidate * np.median(sides) / TRAINING_RBC_SIDE_PX, *SCALE_RANGE))
    if abs(np.log(refined / candidate)) >= np.log(1.1) and h * w / refined ** 2 <= max_pixels:
        # the size window clips boxes far from training size: measure once more at the refined scale
        again = detector.detect(to_detector_scale(rgb, refined))
        again_sides = fitting_red_cells(again, rbc, rbc_threshold)
        if len(again_sides) >= MIN_FITTING_RBC:
            candidate, sides, detections = refined, again_sides, again
            refined = float(np.clip(candidate * np.median(sides) / TRAINING_RBC_SIDE_PX, *SCALE_RANGE))
    if abs(np.log(refined / candidate)) < np.log(1.1):
        refined = candidate  # within the detector's own size tolerance: keep the scale it was run at
    return Scale(refined, DETECTOR_UM_PER_PX / refined, "estimated",
                 f"{proposal_text}; {len(sides)} red cells of training size found at pixel scale {candidate:.3g}, "
                 f"median red cell {np.median(sides) * candidate:.1f} image px = {RBC_DIAMETER_UM} um",
                 fitting_rbc=int(len(sides)), rbc_diameter_px=float(np.median(sides) * candidate),
                 detections=detections if refined == candidate else None)
