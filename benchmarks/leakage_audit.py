"""Near-duplicates across splits of pbc and all-aria, and why all-aria is so easy.

For each dataset: near-duplicate pairs overall, across a naive stratified split (seed 0) and
across the bundled near-duplicate-grouped split. For all-aria, also how well colour statistics
alone (per-image Lab mean and std, no shape at all) predict the stage.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _common import write_result
from leukodx.data.cache import cached_arrays
from leukodx.data.leakage import audit
from leukodx.data.registry import load_dataset
from leukodx.data.splits import apply_split, bundled_split_path, load_split, make_split
from leukodx.evaluation.metrics import classification_metrics
from leukodx.preprocessing.stain import rgb_to_lab
from leukodx.preprocessing.transforms import Preprocess


def colour_only_baseline(name: str) -> dict:
    index = load_dataset(name)
    sides = apply_split(index, load_split(bundled_split_path(name)))
    pre = Preprocess(size=64)

    def features(sub):
        lab = rgb_to_lab(cached_arrays(sub, pre)).reshape(len(sub), -1, 3)
        return np.concatenate([lab.mean(1), lab.std(1)], axis=1)

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(features(sides["train"]), sides["train"].labels)
    proba = model.predict_proba(features(sides["test"]))
    m = classification_metrics(sides["test"].labels, proba, index.classes, n_boot=500)
    per_class_l = {c: float(features(sides["train"].subset(np.flatnonzero(sides["train"].labels == i)))[:, 0].mean())
                   for i, c in enumerate(index.classes)}
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "mean_lightness_L_by_class": per_class_l}


def main() -> None:
    out, rows = {}, []
    for name in ("pbc", "all-aria"):
        index = load_dataset(name)
        naive = audit(index, make_split(index, seed=0))
        grouped = audit(index, load_split(bundled_split_path(name)))
        out[name] = {"naive_split": naive.as_dict(), "bundled_split": grouped.as_dict()}
        rows.append([name, naive.n_images, naive.n_pairs, naive.n_pairs_cross_class,
                     sum(naive.cross_split.values()), sum(grouped.cross_split.values())])
    notes = []
    for name in ("pbc", "all-aria"):
        base = colour_only_baseline(name)
        out[name]["colour_only_baseline"] = base
        notes.append(f"{name}: a logistic regression on 6 colour statistics per image (Lab mean and std, no shape) "
                     f"reaches test accuracy {base['accuracy']['value']:.3f} [{base['accuracy']['ci95'][0]:.3f}, "
                     f"{base['accuracy']['ci95'][1]:.3f}], macro-F1 {base['macro_f1']['value']:.3f}")
    for name in ("pbc", "all-aria"):
        for ex in out[name]["naive_split"]["examples"][:3]:
            notes.append(f"{name} example: {ex['a']} ~ {ex['b']} (pHash distance {ex['hamming']}, "
                         f"{ex['side_a']} / {ex['side_b']})")
    write_result("leakage_audit", out,
                 ["dataset", "images", "near-duplicate pairs", "of which across classes",
                  "pairs across a naive split", "pairs across the bundled split"], rows, notes)


if __name__ == "__main__":
    main()
