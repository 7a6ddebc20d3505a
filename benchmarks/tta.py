"""Test-time augmentation (``--tta``): each bundled image classifier on each of its test sides, every image read
as it is and averaged over its 8 flips and quarter turns: accuracy, macro-F1, ECE, conformal coverage at 0.90
(calibrated on single views) with 95% bootstrap CIs, and the model time per image either way.
"""

from __future__ import annotations

import time

import numpy as np

from _common import ci, held_out_sides, write_result
from leukodx.data.cache import cached_arrays
from leukodx.evaluation.evaluate import evaluate_index
from leukodx.inference.classifier import load_model
from leukodx.models.bundle import bundled_models

#: images timed per model and setting (the model's time only: decoded and preprocessed first)
TIMED = 512
COVERAGE = "0.90"


def _ms_per_image(clf, arrays) -> float:
    clf.predict_arrays(arrays[:8])  # warm: ONNX sessions, first-call allocations
    start = time.perf_counter()
    clf.predict_arrays(arrays)
    return 1000 * (time.perf_counter() - start) / len(arrays)


def main() -> None:
    out, rows = {}, []
    for name in bundled_models("image-classification"):
        clf = load_model(name)
        tests = held_out_sides(clf)
        arrays = cached_arrays(next(iter(tests.values())), clf.preprocess)[:TIMED]
        ms = {"as it is": _ms_per_image(clf, arrays), "tta": _ms_per_image(clf.with_tta(), arrays)}
        for dataset, test in tests.items():
            entry = {"model": name, "dataset": dataset, "backend": clf.backend, "precision": clf.precision}
            for setting, tta in (("as it is", False), ("tta", True)):
                result = evaluate_index(clf, test, tta=tta)
                m = result["metrics"]
                conformal = ((result.get("selective") or {}).get("conformal") or {}).get(COVERAGE, {})
                entry[setting] = {"n": result["n"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                                  "ece": m["ece"], "conformal_coverage": conformal.get("coverage"),
                                  "mean_set_size": conformal.get("mean_set_size"),
                                  "ms_per_image": round(ms[setting], 3),
                                  "test_time_augmentation": result["test_time_augmentation"]}
                # a call of a class this side lacks enters macro-F1 as that class's F1 of 0
                calls = np.asarray(result["roc_inputs"]["proba"]).argmax(1)
                absent = {c: int(np.sum(calls == clf.classes.index(c))) for c in clf.classes
                          if c not in result["classes_in_data"]}
                entry[setting]["calls_of_absent_classes"] = {c: n for c, n in absent.items() if n}
                cov = conformal.get("coverage")
                rows.append([name, dataset, setting, result["n"], ci(m["accuracy"]), ci(m["macro_f1"]),
                             ci(m["ece"]), "n/a" if cov is None else f"{cov:.3f}",
                             ", ".join(f"{c} {n}" for c, n in absent.items() if n) or "none",
                             f"{ms[setting]:.2f}"])
            out[f"{name} on {dataset}"] = entry
    write_result("tta", {"models": out, "timed_images": TIMED},
                 ["model", "test side", "images read", "n", "accuracy [95% CI]", "macro-F1 [95% CI]", "ECE [95% CI]",
                  f"conformal coverage at {COVERAGE}", "calls of classes the side lacks", "ms per image (model only)"],
                 rows,
                 ["tta: `--tta` of predict / evaluate / diagnose (`Classifier.with_tta`): each image's logits "
                  "averaged over its 8 flips and quarter turns, then the card's temperature. The OOD scores read "
                  "the image as it is either way; the temperature and conformal scores were fitted on single "
                  "views, so the ECE and coverage columns say whether they still hold with it.",
                  "Macro-F1 averages over the classes a side holds or is called: a call of a class the side lacks "
                  "(its column) enters with an F1 of 0, so one such call moves macro-F1 on a side with few classes.",
                  "Test sides as in bundled_models.md; each model as `leukodx evaluate` loads it by default "
                  "(backend and precision in the JSON). Time: the model alone on up to "
                  f"{TIMED} preprocessed images of its first test side, in one process on this machine's CPU."])


if __name__ == "__main__":
    main()
