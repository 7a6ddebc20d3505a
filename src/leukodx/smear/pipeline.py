"""Smear-field analysis: detect every cell, classify each white cell, count, flag.

    analyzer = SmearAnalyzer()                      # bundled detector + the default white-cell model
    field = analyzer.analyze(rgb, name="field-1")   # cells, counts, differential, flags
    case = summarize_fields([field, ...])           # per-case differential and flags

A field of any size is accepted: large ones are tiled by the detector. Each field's scale is
measured from its own red cells (``leukodx.smear.scale``) unless the user gives ``um_per_px`` or
``pixel_scale`` (image px per px at the detector's training magnification, BCCD's ~103 px per red
cell: an image at a third of that magnification has ``pixel_scale=0.33``). A field whose scale
cannot be trusted is not counted, and says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from PIL import Image

from leukodx.errors import InvalidInputError
from leukodx.data.vocabulary import is_leukocyte, leukocyte_classes
from leukodx.smear.classical import NucleusThreshold, nucleus_mask
from leukodx.models.reliability import shift_verdict
from leukodx.smear.evaluate import counted
from leukodx.smear.scale import Scale, estimate_scale, given_scale, to_detector_scale
from leukodx.smear.tiling import background_colour

#: crop side / white-cell box side: frames the cell as in the cell-type model's training images
CROP_FACTOR = 1.8
#: a white cell whose blast probability (the cell-type model's own) reaches this is flagged for review,
#: whatever its top class: a blast missed costs more than a second look
BLAST_REVIEW_PROBABILITY = 0.3
DARK_MEAN, BRIGHT_MEAN, GRAY_SPREAD = 40.0, 235.0, 4.0
#: red cells outnumber white cells ~30:1 even at a leukemic count of 200,000/uL; a field where the
#: detector finds more than one white cell per two red cells (and at least 5) is a misreading, not counted
PLAUSIBLE_WHITE_PER_RED = 0.5
MIN_WHITE_FOR_PLAUSIBILITY = 5


def image_quality(rgb: np.ndarray) -> list[str]:
    """Warnings about an input the models were not trained for (results are still given)."""
    sample = rgb[::max(1, rgb.shape[0] // 256), ::max(1, rgb.shape[1] // 256)].astype(np.float32)
    warnings = []
    if float(np.abs(sample - sample.mean(axis=2, keepdims=True)).mean()) < GRAY_SPREAD:
        warnings.append("no stain colour (a grayscale, blank or washed-out image): the models were trained on stained "
                        "colour fields; counts and types are unreliable")
    brightness = float(sample.mean())
    if brightness < DARK_MEAN:
        warnings.append(f"very dark image (mean {brightness:.0f}/255): cells may be missed")
    elif brightness > BRIGHT_MEAN:
        warnings.append(f"over-exposed image (mean {brightness:.0f}/255): cells may be missed")
    return warnings


def square_crop(rgb: np.ndarray, box, factor: float = CROP_FACTOR, fill: np.ndarray | None = None) -> np.ndarray:
    """A square around ``box`` (xyxy), ``factor`` times its longer side, padded with ``fill`` at the border."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(8, int(round(max(x1 - x0, y1 - y0) * factor)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    out = np.empty((side, side, 3), dtype=np.uint8)
    out[:] = fill if fill is not None else np.uint8(255)
    h, w = rgb.shape[:2]
    sy0, sx0 = max(0, top), max(0, left)
    sy1, sx1 = min(h, top + side), min(w, left + side)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = rgb[sy0:sy1, sx0:sx1]
    return out


def nucleus_fraction(rgb: np.ndarray, box, pixel_scale: float = 1.0) -> float:
    """Share of a white cell's box covered by blue-purple nucleus: a size-free proxy for the N:C ratio."""
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    patch = rgb[max(0, y0):max(0, y1), max(0, x0):max(0, x1)]
    if patch.size == 0:
        return 0.0
    mask = nucleus_mask(patch, NucleusThreshold(pixel_scale=pixel_scale))
    return float(mask.mean())


@dataclass
class SmearAnalyzer:
    detector: object = None      # CellDetector; the bundled one when None
    classifier: object = None    # leukodx Classifier of white-cell types; the default cell model when None
    pixel_scale: float | None = None   # image px per detector px; None: measured per field
    um_per_px: float | None = None     # the camera's scale, when known (instead of pixel_scale)
    thresholds: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from leukodx.inference.classifier import DEFAULT_CELL_MODEL, load_model
        from leukodx.smear.detector import load_detector

        self.given = given_scale(self.pixel_scale, self.um_per_px)
        self.detector = self.detector or load_detector()
        self.classifier = self.classifier or load_model(DEFAULT_CELL_MODEL)
        if self.classifier.card.get("input_kind") == "fields" or not leukocyte_classes(self.classifier.classes):
            raise InvalidInputError(f"{self.classifier.name}: classifies {self.classifier.card.get('input_kind', 'images')}"
                                    f" ({', '.join(self.classifier.classes)}), not white cells; give a cell-type "
                                    f"model such as {DEFAULT_CELL_MODEL}")
        self.thresholds = {**{c: 0.5 for c in self.detector.classes},
                           **self.detector.card.get("count_thresholds", {}), **self.thresholds}

    def scale_of(self, rgb: np.ndarray) -> Scale:
        """The scale this field is analysed at: the user's, else measured from its red cells."""
        return self.given or estimate_scale(rgb, self.detector, self.thresholds.get("RBC", 0.5))

    def analyze(self, rgb: np.ndarray, name: str = "field") -> dict:
        """One field: its scale, every detected cell, counts per kind, white-cell differential and flags.

        A field whose scale is uncertain is not counted: ``counted`` is False and a flag says why.
        """
        from leukodx.models.device import one_blas_thread

        with one_blas_thread():  # the detector's threads hold the cores: extra BLAS threads would only spin
            return self._analyze(rgb, name)

    def _analyze(self, rgb: np.ndarray, name: str) -> dict:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InvalidInputError(f"{name}: expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        quality = image_quality(rgb)
        scale = self.scale_of(rgb)
        size = [int(rgb.shape[1]), int(rgb.shape[0])]
        if scale.uncertain:
            reason = f"the scale is uncertain ({scale.detail})"
            # no scale at which the detector recognises this field's red cells: unlike its training fields
            return {"field": name, "size": size, "scale": scale.as_dict(), "counted": False, "cells": [],
                    "ood_score": None, "ood": True, "quality": quality, "not_counted_reason": reason,
                    "flags": quality + [f"not counted: {reason}; give --um-per-px if the camera's scale is known"]}
        pixel_scale = scale.pixel_scale
        factor = 1.0 / pixel_scale
        if scale.detections is not None:  # the estimate ran the detector at this very scale
            detections = scale.detections
        else:
            detections = self.detector.detect(to_detector_scale(rgb, pixel_scale))
        classes = self.detector.classes
        ood_score, ood = self.detector.field_ood(detections)
        ood_fields = {"ood_score": None if ood_score is None else round(ood_score, 3), "ood": ood}
        keep = counted(detections, classes, self.thresholds)
        boxes = detections["boxes"][keep] / factor
        labels, scores = detections["labels"][keep], detections["scores"][keep]
        cells = [{"kind": classes[k], "box": [round(float(v), 1) for v in b], "score": round(float(s), 4)}
                 for b, k, s in zip(boxes, labels, scores)]
        white = [c for c in cells if c["kind"] == "WBC"]
        n_red = sum(c["kind"] == "RBC" for c in cells)
        if len(white) >= MIN_WHITE_FOR_PLAUSIBILITY and len(white) > PLAUSIBLE_WHITE_PER_RED * n_red:
            reason = (f"{len(white)} white cells against {n_red} red cells is not blood at any white count: the "
                      "detector is likely taking this stain's red cells for white cells")
            return {"field": name, "size": size, "scale": scale.as_dict(), "counted": False, "cells": [], **ood_fields,
                    "quality": quality, "not_counted_reason": reason, "flags": quality + [f"not counted: {reason}"]}
        if white:
            self._classify_white_cells(rgb, white, pixel_scale)
        summary = _field_summary(cells, self.classifier.abstain_below, quality, self.leukocyte_types)
        if ood:
            summary["flags"].append("field unlike the detector's training fields (ood): stain, focus or "
                                    "preparation differ; its counts need checking by eye")
        return {"field": name, "size": size, "scale": scale.as_dict(), "counted": True, **ood_fields,
                "cells": cells, "quality": quality, **summary}

    @property
    def leukocyte_types(self) -> list[str]:
        return leukocyte_classes(self.classifier.classes)

    @property
    def has_blast_class(self) -> bool:
        return "blast" in self.classifier.classes

    def totals(self) -> "FieldTotals":
        """An empty ``FieldTotals`` for this analyzer's fields (its shift check reads the detector's reference)."""
        rel = self.detector.reliability
        return FieldTotals(None if rel is None else rel.reference)

    def _classify_white_cells(self, rgb: np.ndarray, white: list[dict], pixel_scale: float) -> None:
        fill = background_colour(rgb)
        crops = [self.classifier.preprocess(square_crop(rgb, c["box"], CROP_FACTOR, fill)) for c in white]
        scored = self.classifier.score_arrays(np.stack(crops))
        for cell, row in zip(white, self.classifier.rows_for([""] * len(white), scored, decimals=4)):
            cell["cell_type"] = row["top_class"]
            cell["probability"] = row["probability"]
            cell["unsure"] = row["unsure"]
            cell["ood"] = row["ood"]
            cell["prediction_set"] = row["prediction_set"]
            cell["probabilities"] = row["probabilities"]
            cell["nucleus_fraction"] = round(nucleus_fraction(rgb, cell["box"], pixel_scale), 3)
            if self.has_blast_class:
                cell["blast_probability"] = row["probabilities"]["blast"]
                cell["blast_review"] = bool(cell["blast_probability"] >= BLAST_REVIEW_PROBABILITY)


def _tally(cells: list[dict], leukocyte_types: list[str]) -> dict:
    """Counts per kind, white cells per type, the differential over confidently typed leukocytes, and
    the blasts: typed as blast, and any white cell whose blast probability calls for review."""
    counts = {kind: sum(c["kind"] == kind for c in cells) for kind in ("WBC", "RBC", "Platelets")}
    white = [c for c in cells if c["kind"] == "WBC"]
    typed = [c for c in white if not c.get("unsure", True)]
    types = {t: sum(c.get("cell_type") == t for c in typed) for t in leukocyte_types}
    n_typed = sum(types.values())
    return {"counts": counts, "white_cell_types": types, "white_cells_typed": n_typed,
            "differential_percent": {t: round(100.0 * types[t] / n_typed, 1) if n_typed else 0.0
                                     for t in leukocyte_types},
            "not_leukocyte": sum(not is_leukocyte(c.get("cell_type", "")) for c in typed),
            "unsure": sum(c.get("unsure", False) for c in white),
            "blasts": types.get("blast", 0),
            "blast_review": sum(c.get("blast_review", False) for c in white)}


def _field_summary(cells: list[dict], abstain_below: float, quality: list[str], leukocyte_types: list[str]) -> dict:
    tally = _tally(cells, leukocyte_types)
    flags = list(quality)
    if not cells:
        flags.append("no cells found: empty field, wrong magnification (see pixel scale) or not a smear")
    if tally["blast_review"]:
        flags.append(f"{tally['blast_review']} white cell(s) with blast probability >= {BLAST_REVIEW_PROBABILITY}: review")
    if tally["unsure"]:
        flags.append(f"{tally['unsure']} of {tally['counts']['WBC']} white cell(s) unsure (unlike the cell-type "
                     "model's training cells, more than one type in their conformal set, or below its confidence "
                     f"threshold {abstain_below:.2f}): review, not counted")
    if tally["not_leukocyte"]:
        flags.append(f"{tally['not_leukocyte']} detected white cell(s) typed as a non-leukocyte "
                     "(erythroblast, platelet or smudge)")
    return {**tally, "flags": flags}


def summarize_fields(fields: Iterable[dict]) -> dict:
    """Per-case totals over the counted fields: counts, differential over every typed white cell,
    the scales used, flags (fields left uncounted for an uncertain scale are named, not summed)."""
    totals = FieldTotals()
    for f in fields:
        totals.add(f)
    return totals.summary()


#: the parts of ``_tally`` that add up over fields (the differential and the blasts follow from them)
_ADDITIVE = ("counts", "white_cell_types", "white_cells_typed", "not_leukocyte", "unsure", "blast_review")


class FieldTotals:
    """``summarize_fields`` one field at a time: running sums of each field's tally, so a batch of any
    number of fields is summarized without holding its fields (only a number or two per field).
    ``reference``: the detector's validation fields' OOD scores, for the shift check's rank test."""

    def __init__(self, reference: np.ndarray | None = None):
        self.reference = reference
        self.ood_scores: list[float] = []
        self.leukocyte_types: list[str] | None = None
        self.tally: dict | None = None
        self.counted = self.uncounted = self.quality = self.empty = 0
        self.uncounted_reason = None
        self.per_field_wbc: list[int] = []
        self.scales: list[float] = []
        self.sources: set[str] = set()
        self.judged = self.flagged_ood = 0

    def add(self, f: dict) -> None:
        if f.get("ood") is not None:
            self.judged += 1
            self.flagged_ood += bool(f["ood"])
            if f.get("ood_score") is not None:
                self.ood_scores.append(float(f["ood_score"]))
        if f.get("scale"):
            self.sources.add(f["scale"]["source"])
        if not f.get("counted", True):
            self.uncounted += 1
            self.uncounted_reason = self.uncounted_reason or f["not_counted_reason"]
            return
        if self.leukocyte_types is None:  # the first counted field's model names the types
            self.leukocyte_types = list(f["white_cell_types"])
        tally = {k: v for k, v in _tally(f["cells"], self.leukocyte_types).items() if k in _ADDITIVE}
        if self.tally is None:
            self.tally = tally
        else:
            for key, value in tally.items():
                if isinstance(value, dict):
                    for k, v in value.items():
                        self.tally[key][k] += v
                else:
                    self.tally[key] += value
        self.counted += 1
        self.quality += bool(f["quality"])
        self.empty += not f["cells"]
        self.per_field_wbc.append(f["counts"]["WBC"])
        if f.get("scale"):
            self.scales.append(f["scale"]["pixel_scale"])

    def summary(self) -> dict:
        types = self.leukocyte_types or []
        totals = self.tally if self.tally is not None else _tally([], types)
        n_typed = totals["white_cells_typed"]
        summary = {"counts": totals["counts"], "white_cell_types": totals["white_cell_types"], "white_cells_typed": n_typed,
                   "differential_percent": {t: round(100.0 * totals["white_cell_types"][t] / n_typed, 1) if n_typed
                                            else 0.0 for t in types},
                   "not_leukocyte": totals["not_leukocyte"], "unsure": totals["unsure"],
                   "blasts": totals["white_cell_types"].get("blast", 0), "blast_review": totals["blast_review"]}
        flags = []
        if self.uncounted:
            flags.append(f"{self.uncounted} field(s) not counted (e.g. {self.uncounted_reason})")
        if not self.counted:
            flags.append("no field could be counted: give the camera's scale with --um-per-px, or use fields like "
                         "the detector's training smears")
        if summary["blasts"]:
            flags.append(f"{summary['blasts']} white cell(s) typed as blasts "
                         f"({summary['differential_percent'].get('blast', 0.0)}% of typed leukocytes): review")
        if summary["blast_review"]:
            flags.append(f"{summary['blast_review']} white cell(s) in the case with blast probability >= "
                         f"{BLAST_REVIEW_PROBABILITY}: review")
        if summary["unsure"]:
            flags.append(f"{summary['unsure']} white cell(s) could not be typed confidently: review")
        if summary["white_cells_typed"] < 100:
            flags.append(f"only {summary['white_cells_typed']} typed white cells: a differential needs at least 100")
        if self.quality:
            flags.append(f"{self.quality} field(s) with image-quality warnings")
        if self.empty:
            flags.append(f"{self.empty} field(s) with no cell found")
        shift = (shift_verdict(self.flagged_ood, self.judged, unit="fields", scores=self.ood_scores,
                               reference=self.reference,
                               advice="Check the overlays by eye; give the camera's scale with --um-per-px, and for "
                                      "another stain try --detector bccd-frcnn-aug.") if self.judged else
                 {"flagged": None, "score": None, "reason": "OOD check unavailable: the detector's bundle has no "
                                                            "reliability statistics (leukodx reliability fit)"})
        if shift["flagged"]:
            flags.insert(0, f"shift: {shift['reason']}")
        if not self.counted:
            summary = {**summary, "counts": None, "differential_percent": None, "white_cell_types": None}
        return {**summary, "n_fields": self.counted + self.uncounted, "fields_counted": self.counted,
                "fields_not_counted": self.uncounted, "per_field_wbc": self.per_field_wbc,
                "pixel_scale_median": round(float(np.median(self.scales)), 4) if self.scales else None,
                "scale_sources": sorted(self.sources), "shift": shift, "flags": flags}


def render_overlay(rgb: np.ndarray, result: dict, max_side: int = 4096) -> Image.Image:
    """The field with a box per cell: white cells labelled with type and probability."""
    from PIL import ImageDraw

    # a 10,000 px overlay is unreadable and a full copy costs 300 MB: draw on a strided reduction
    step = max(1, -(-max(rgb.shape[:2]) // max_side))
    im = Image.fromarray(np.ascontiguousarray(rgb[::step, ::step]))
    scale = 1.0 / step
    draw = ImageDraw.Draw(im)
    colours = {"WBC": (40, 90, 255), "RBC": (220, 40, 40), "Platelets": (20, 160, 60)}
    for cell in result["cells"]:
        x0, y0, x1, y1 = (v * scale for v in cell["box"])
        colour = colours.get(cell["kind"], (0, 0, 0))
        if cell.get("blast_review") or cell.get("unsure"):
            colour = (255, 140, 0)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2 if cell["kind"] == "WBC" else 1)
        if cell["kind"] == "WBC":
            label = f"{cell.get('cell_type', 'WBC')} {cell.get('probability', cell['score']):.2f}"
            draw.text((x0 + 3, max(0, y0 - 12)), label, fill=colour)
    return im
