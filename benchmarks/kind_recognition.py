"""How often ``leukodx diagnose --kind auto`` recognises a case's input kind correctly.

Cases of 10 images drawn at random (seeded) from one class of a dataset: pbc and wbc-seg are
single-cell images, all-aria smear fields.
"""

from __future__ import annotations

import numpy as np

from _common import write_result
from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
from leukodx.diagnosis.case import recognise_kind

CASES_PER_CLASS = 20
CASE_SIZE = 10
TRUTH = {"pbc": "cells", "wbc-seg": "cells", "all-aria": "fields"}


def main() -> None:
    rng = np.random.default_rng(0)
    out, rows = {}, []
    for name, truth in TRUTH.items():
        index = load_dataset(name)
        per_class = {}
        for c, cls in enumerate(index.classes):
            members = np.flatnonzero(index.labels == c)
            correct = 0
            for _ in range(CASES_PER_CLASS):
                pick = rng.choice(members, min(CASE_SIZE, len(members)), replace=False)
                images = [read_image(index.abspath(i)) for i in pick]
                correct += recognise_kind(images)[0] == truth
            per_class[cls] = correct / CASES_PER_CLASS
            rows.append([name, cls, truth, f"{correct}/{CASES_PER_CLASS}"])
        out[name] = per_class
    write_result("kind_recognition", {"cases_per_class": CASES_PER_CLASS, "case_size": CASE_SIZE, "accuracy": out},
                 ["dataset", "class", "true kind", "cases recognised"], rows,
                 ["A case = 10 images of one class (fewer where the class has fewer); the kind is the majority of per-image votes."])


if __name__ == "__main__":
    main()
