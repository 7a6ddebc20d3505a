"""Magnification measured, not assumed: how well each field's scale is estimated, and what it does
to counts on fields from another lab.

1. BCCD test fields (the detector's own magnification, pixel scale 1 by definition) shown as taken,
   at half and at double magnification (resized): the estimated pixel scale against the true one.
2. 20 all-aria fields (5 per class, seeded draw), white cells counted by eye
   (``benchmarks/data/all-aria-hand-counts.csv``): the pipeline's white-cell count per field at the old
   fixed scale (1.0), at the scale once suggested in the README (0.15), and measured per field
   (uncertain or implausible fields are not counted).

Run: ``python benchmarks/scale.py [DETECTOR ...]`` (default: every bundled detector; ~5 min each on 2 cores).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from _common import write_result
from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset, load_fields
from leukodx.smear.pipeline import SmearAnalyzer

HAND = Path(__file__).parent / "data" / "all-aria-hand-counts.csv"
N_BCCD = 30


def _resized(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((int(w * factor), int(h * factor)), Image.Resampling.BILINEAR))


def bccd_scales(analyzer: SmearAnalyzer) -> dict:
    bccd = load_dataset("bccd")
    rgbs, _ = load_fields(bccd, bccd.splits["test"][:N_BCCD])
    out = {}
    for factor in (1.0, 0.5, 2.0):
        estimates = [analyzer.scale_of(_resized(rgb, factor) if factor != 1.0 else rgb).pixel_scale for rgb in rgbs]
        known = np.asarray([e for e in estimates if e is not None])
        ratio = known / factor
        out[str(factor)] = {"true_pixel_scale": factor, "fields": len(estimates), "uncertain": len(estimates) - len(known),
                            "median_ratio": float(np.median(ratio)) if len(known) else None,
                            "within_20_percent": int(np.sum(np.abs(np.log(ratio)) <= np.log(1.2))),
                            "estimates": [None if e is None else round(e, 4) for e in estimates]}
    return out


def aria_counts(analyzer_for) -> dict:
    index = load_dataset("all-aria")
    with open(HAND, newline="") as fh:
        hand = list(csv.DictReader(fh))
    truth = np.asarray([int(r["wbc_by_eye"]) for r in hand])
    settings = {"fixed 1.0 (old default)": {"pixel_scale": 1.0}, "fixed 0.15 (old README advice)": {"pixel_scale": 0.15},
                "measured per field (new default)": {}}
    out = {}
    for name, kwargs in settings.items():
        analyzer = analyzer_for(**kwargs)
        counts, scales = [], []
        for row in hand:
            field = analyzer.analyze(read_image(index.root / row["field"]), row["field"])
            counts.append(field["counts"]["WBC"] if field["counted"] else None)
            scales.append(field["scale"]["pixel_scale"])
        counted = np.asarray([c is not None for c in counts])
        err = np.asarray([abs(c - t) for c, t in zip(counts, truth) if c is not None], dtype=float)
        out[name] = {"counts": counts, "pixel_scales": scales, "fields_counted": int(counted.sum()),
                     "mae_counted": float(err.mean()) if len(err) else None,
                     "within_2_counted": int(np.sum(err <= 2)),
                     "total_counted": int(sum(c for c in counts if c is not None)),
                     "total_by_eye_same_fields": int(truth[counted].sum())}
    return {"fields": [r["field"] for r in hand], "by_eye": truth.tolist(), "settings": out}


def main(names: list[str]) -> None:
    from leukodx.hub import list_models
    from leukodx.inference.classifier import load_model
    from leukodx.smear.detector import load_detector

    names = names or list_models("detection")
    classifier = load_model()
    results, rows = {}, []
    for name in names:
        detector = load_detector(name)

        def analyzer_for(**kwargs) -> SmearAnalyzer:
            return SmearAnalyzer(detector, classifier, **kwargs)

        bccd = bccd_scales(analyzer_for())
        aria = aria_counts(analyzer_for)
        results[name] = {"sha256": detector.card.get("sha256"), "bccd": bccd, "all_aria": aria}
        for factor, r in bccd.items():
            rows.append([name, f"BCCD test fields x{factor} (true pixel scale {factor})", f"{r['fields']}",
                         f"{r['fields'] - r['uncertain']} measured, {r['uncertain']} uncertain",
                         f"median estimate / truth {r['median_ratio']:.3f}; {r['within_20_percent']} within 20%"
                         if r["median_ratio"] else "-"])
        for setting, r in aria["settings"].items():
            mae = f"{r['mae_counted']:.1f}" if r["mae_counted"] is not None else "-"
            rows.append([name, f"all-aria, 20 fields counted by eye: {setting}", "20", f"{r['fields_counted']} counted",
                         f"white cells {r['total_counted']} vs {r['total_by_eye_same_fields']} by eye on the counted "
                         f"fields; MAE {mae} per field; {r['within_2_counted']} fields within 2"])
    write_result("scale", {"detectors": results},
                 ["detector", "fields", "n", "scale", "result"], rows,
                 ["Pixel scale = image px per px at the detector's training magnification (BCCD, ~103 px per red "
                  "cell, ~0.073 um/px). 'Uncertain': the detector found fewer than 3 red cells of its training "
                  "size at any candidate scale. A field is also not counted when the detector finds more than one "
                  "white cell per two red cells (>= 5): no blood looks like that, so it is misreading the stain. "
                  "Uncounted fields say why in their flags.",
                  "By-eye counts are of white cells only (red cells are too many to count reliably by eye on "
                  "224 px fields); one person, once, from 2x enlargements; crowded fields are approximate (see "
                  "the CSV's notes)."])


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
