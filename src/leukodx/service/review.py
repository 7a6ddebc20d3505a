"""The review arithmetic: counts and differential from the cells' current (reviewed) labels, with
the same leukocyte vocabulary and flags as ``leukodx diagnose``."""

from __future__ import annotations

from leukodx.data.vocabulary import leukocyte_classes


def differential(cells) -> dict:
    """Counts per label and the leukocyte differential (percent) of a case's cells, and flags."""
    if not cells:
        return {"counts": {}, "differential_percent": {}, "flags": []}
    classes = list(cells[0].probabilities)
    counts = {c: 0 for c in classes}
    for cell in cells:
        counts[cell.label] = counts.get(cell.label, 0) + 1
    wbc = leukocyte_classes(classes)
    n_wbc = sum(counts[c] for c in wbc)
    diff = {c: round(100.0 * counts[c] / n_wbc, 1) if n_wbc else 0.0 for c in wbc}
    flags = []
    if "blast" in diff and diff["blast"] >= 20.0:
        flags.append(f"blasts {diff['blast']}% of leukocytes (>= 20%, the WHO threshold for acute leukemia)")
    unsure = sum(1 for c in cells if c.unsure and c.label == c.model_label)
    if unsure:
        flags.append(f"{unsure} cell(s) the model was unsure of and nobody has reviewed yet")
    return {"counts": counts, "differential_percent": diff, "flags": flags}
