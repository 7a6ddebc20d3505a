"""Test-split figures of each bundled model with 95% bootstrap CIs, and its training wall time.

A multi-site model is scored on each of its sites' test sides (in-site figures, one row per site).
"""

from __future__ import annotations

from _common import ci, held_out_sides, write_result
from leukodx.evaluation.evaluate import evaluate_index
from leukodx.inference.classifier import load_model
from leukodx.models.bundle import bundled_models


def main() -> None:
    out, rows = {}, []
    for name in bundled_models("image-classification"):
        clf = load_model(name)
        tests = held_out_sides(clf)
        train = clf.card["training"]
        for dataset, test in tests.items():
            result = evaluate_index(clf, test)
            m = result["metrics"]
            out[f"{name} on {dataset}"] = {
                "model": name, "dataset": dataset, "split": "test", "n": result["n"], "accuracy": m["accuracy"],
                "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"], "ece": m["ece"],
                "macro_auroc": m["macro_auroc"],
                "per_class_sensitivity": {c: v["sensitivity"] for c, v in m["per_class"].items() if v["support"]},
                "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items() if v["support"]},
                "training_seconds": train["seconds"], "epochs_run": train["epochs_run"],
                "arch": clf.card["arch"], "input_size": clf.card["input_size"],
                "size_bytes": clf.card["size_bytes"], "sha256": clf.card["sha256"], "backend": clf.backend,
                "precision": clf.precision, "site_statistics": clf.site}
            rows.append([name, dataset, result["n"], ci(m["accuracy"]), ci(m["macro_f1"]), ci(m["ece"]),
                         f"{clf.card['arch']} @ {clf.card['input_size']} px", f"{train['seconds'] / 60:.1f}",
                         f"{clf.card['size_bytes'] / 1e6:.1f}"])
    write_result("bundled_models", {"models": out},
                 ["model", "dataset", "test n", "accuracy [95% CI]", "macro-F1 [95% CI]", "ECE [95% CI]",
                  "network", "training min (2-core CPU)", "MB"], rows,
                 ["Test split = the bundled near-duplicate-grouped split (15%; deepapl: 13 held-out patients); "
                  "images of the other sets cannot be split by patient, so in-site figures are optimistic for a "
                  "new site (see leakage_audit.md and LOSO.md). wbc-multisite is scored on every class it knows, "
                  "each site's labels mapped through the shared vocabulary.",
                  "Trained from scratch (no ImageNet weights) by `leukodx train`; the exact commands are in "
                  "benchmarks/train_bundled.sh.",
                  "Scored as `leukodx evaluate` scores by default: "
                  + ", ".join(sorted({f"{v['model']} {v['backend']} {v['precision']}"
                                      + (f" (site statistics: {v['site_statistics']})" if v["site_statistics"] else "")
                                      for v in out.values()})) + "."])


if __name__ == "__main__":
    main()
