"""Knowing when it does not know: OOD scores, batch shift checks, conformal sets and selective
prediction of the shipped cell classifiers, and of the shipped recipe under leave-one-site-out.

1. Shipped models on each site's held-out test cells (up to ``CAP`` per class): ``pbc-celltype``
   (trained on pbc only: the other three sites are out of distribution for it) and
   ``wbc-multisite`` (trained on all four: in-site everywhere).
2. Leave-one-site-out with the shipped recipe at its full budget (the LOSO variant ``wbc-multisite``'s
   card names, today ``stain-aug-large``):
   each fold's model fits its statistics on its own training / validation cells and is scored on
   the site it never saw, the setting of the issue's OOD target.
3. Not-a-cell inputs given to the cell models: all-aria and BCCD smear fields, blanks, saturated
   colours, noise, text, gradients and two photographs (scikit-learn's sample images).
4. Overhead: ``Classifier.predict`` of the shipped default (``wbc-multisite``) end to end on 1,000 pbc
   test images with the reliability checks, against the same model with a logits-only ONNX file and no
   statistics: the two take 11 turns, and the figure is the median of the turns' ratios (with their range,
   and the ratio of the two arms' median times beside it).

Run: ``python benchmarks/reliability.py`` (~20 min on 2 cores).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from _common import write_result
from leukodx.benchmarking.loso import VARIANTS, run_loso
from leukodx.data.cache import cached_arrays
from leukodx.data.folder import limit_per_class
from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
from leukodx.data.sites import CELL_SITES, site_sides
from leukodx.data.vocabulary import normalize_label
from leukodx.evaluation.reliability import reliability_figures
from leukodx.inference.classifier import load_model
from leukodx.models.reliability import MIN_EXCEED, SHIFT_P, SHRINKAGE, STYLE_SHRINKAGE

CAP = 100          # test cells per class per site
N_FIELDS = 100     # smear fields per set for the not-a-cell check
SEED = 0


def site_part(clf, site: str) -> dict:
    """A site's test cells through ``clf``: OOD scores, probabilities, labels as model positions (-1: absent)."""
    side = limit_per_class(site_sides(site, coarse=True)["test"], CAP, SEED)
    position = {normalize_label(c): i for i, c in enumerate(clf.classes)}
    labels = np.asarray([position.get(normalize_label(side.classes[y]), -1) for y in side.labels])
    scored = clf.score_arrays(cached_arrays(side, clf.preprocess))
    return {"ood": scored.ood_scores, "proba": scored.proba, "labels": labels}


def not_a_cell_images() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(SEED)
    groups = {}
    for name in ("all-aria", "bccd"):
        index = load_dataset(name)
        paths = index.abspaths() if hasattr(index, "abspaths") else [index.root / r["path"] for r in index.records]
        pick = rng.choice(len(paths), size=min(N_FIELDS, len(paths)), replace=False)
        groups[f"{name} smear fields"] = [read_image(paths[i]) for i in sorted(pick)]
    side = 96
    synthetic = [np.zeros((side, side, 3), np.uint8), np.full((side, side, 3), 255, np.uint8),
                 np.full((side, side, 3), 128, np.uint8)]
    synthetic += [np.tile(np.array(c, np.uint8), (side, side, 1)) for c in
                  ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 255), (0, 255, 255))]
    groups["blank and saturated"] = synthetic
    groups["noise"] = ([rng.integers(0, 256, (side, side, 3)).astype(np.uint8) for _ in range(10)]
                       + [np.clip(rng.normal(200, 30, (side, side, 3)), 0, 255).astype(np.uint8) for _ in range(10)])
    texts = []
    for k in range(10):
        im = Image.new("RGB", (side, side), (255, 255, 255))
        ImageDraw.Draw(im).text((5, 10 + 5 * k), f"sample {k}\nleukodx\n{rng.integers(1e6)}", fill=(0, 0, 0))
        texts.append(np.asarray(im))
    groups["text"] = texts
    grad = np.linspace(0, 255, side, dtype=np.float32)
    groups["gradients"] = [np.stack([np.add.outer(grad, grad * 0).astype(np.uint8)] * 3, axis=2),
                           np.stack([np.add.outer(grad * 0, grad).astype(np.uint8), np.full((side, side), 90, np.uint8),
                                     np.add.outer(grad, grad * 0).astype(np.uint8)], axis=2)]
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    groups["photographs (whole and 4 crops each)"] = [p for photo in photos for p in
                                                      [photo, photo[:200, :200], photo[-200:, -200:],
                                                       photo[100:300, 200:400], photo[200:400, 300:500]]]
    return groups


def not_a_cell(clf, groups: dict[str, list[np.ndarray]]) -> dict:
    out = {}
    for name, images in groups.items():
        arrays = np.stack([clf.preprocess(im) for im in images])
        scored = clf.score_arrays(arrays)
        rows = clf.rows_for([""] * len(images), scored)
        out[name] = {"n": len(images), "ood": int(sum(r["ood"] for r in rows)),
                     "unsure": int(sum(r["unsure"] for r in rows)),
                     "confident_class": int(sum(not r["unsure"] for r in rows))}
    total = sum(v["n"] for v in out.values())
    out["all"] = {"n": total, "ood": sum(v["ood"] for v in out.values()),
                  "unsure": sum(v["unsure"] for v in out.values()),
                  "confident_class": sum(v["confident_class"] for v in out.values())}
    return out


def overhead(clf, n: int = 1000, repeats: int = 11) -> dict:
    """``predict`` end to end with the reliability checks against the plain path: the same model at the
    same precision with a logits-only ONNX file and no statistics (what predict ran before the checks
    existed). For int8 the logits-only file is quantized as the bundle's was, calibrated on 256 pbc
    training cells (calibration moves the scales, not the work)."""
    import tempfile
    from pathlib import Path

    from leukodx.inference.classifier import Classifier
    from leukodx.inference.onnx_backend import OnnxSession, export_onnx
    from leukodx.inference.quantize import quantize_onnx

    side = site_sides("pbc", coarse=True)["test"]
    paths = side.abspaths()[:n]
    with tempfile.TemporaryDirectory() as tmp:
        plain = Classifier(clf.net, clf.card, backend="torch")
        plain.reliability = None
        if clf.backend == "onnx":
            path = export_onnx(clf.net, clf.preprocess.size, Path(tmp) / "plain.onnx")
            if clf.precision == "int8":
                calibration = cached_arrays(limit_per_class(site_sides("pbc", coarse=True)["train"], 32, SEED),
                                            clf.preprocess)
                path = quantize_onnx(path, Path(tmp) / "plain.int8.onnx", calibration, clf.preprocess)
            plain._onnx = OnnxSession(path)
            plain._onnx.outputs = lambda x, session=plain._onnx: (session(x), None)
            plain.backend, plain.precision = "onnx", clf.precision
        arms = {"without": plain, "with": clf}
        runs = {label: [] for label in arms}
        for model in arms.values():
            model.predict(paths[:64])  # warm-up
        for _ in range(repeats):  # the arms take turns: a drift in the machine's speed falls on both
            for label, model in arms.items():
                t0 = time.perf_counter()
                model.predict(paths)
                runs[label].append(time.perf_counter() - t0)
        timings = {label: float(np.median(r)) for label, r in runs.items()}
        # each turn's ratio: a slow spell of the machine falls on both arms of a turn
        ratios = np.asarray(runs["with"]) / np.asarray(runs["without"])
    return {"images": len(paths), "seconds_without": timings["without"], "seconds_with": timings["with"],
            "overhead": float(np.median(ratios)) - 1.0,
            "overhead_range": [float(ratios.min()) - 1.0, float(ratios.max()) - 1.0], "repeats": repeats,
            "backend": clf.backend, "precision": clf.precision, "threads": torch.get_num_threads()}


def main() -> None:
    results = {"cap_per_class": CAP, "models": {}}
    groups = not_a_cell_images()
    for name in ("pbc-celltype", "wbc-multisite"):
        clf = load_model(name)
        trained_on = [s["dataset"] for s in clf.card["data"].get("sites", [])] or [clf.card["data"]["dataset"]]
        parts = {s: site_part(clf, s) for s in CELL_SITES}
        in_sites = [s for s in CELL_SITES if s in trained_on]
        pooled = {k: np.concatenate([parts[s][k] for s in in_sites]) for k in ("ood", "proba", "labels")}
        figures = reliability_figures(clf.reliability, pooled, {s: parts[s] for s in CELL_SITES if s not in trained_on})
        figures["per_site"] = {s: reliability_figures(clf.reliability, parts[s], {})["in_site"] for s in in_sites}
        results["models"][name] = {"sha256": clf.card["sha256"], "trained_on": trained_on, **figures,
                                   "not_a_cell": not_a_cell(clf, groups)}
        print(f"{name}: done", file=sys.stderr)
    shipped = load_model("wbc-multisite")
    results["overhead"] = overhead(shipped)
    recipe = VARIANTS[shipped.card["metrics"]["leave_one_site_out"]["variant"]]
    loso = run_loso(recipe, n_boot=200, reliability=True, log=lambda m: print(m, file=sys.stderr))
    results["loso"] = {"variant": loso["variant"], "folds": {s: {"reliability": f["reliability"],
                                                                 "left_out_accuracy": f["left_out"]["accuracy"]}
                                                             for s, f in loso["folds"].items()}}
    write_result("reliability", results, ["model / setting", "data", "OOD AUROC", "flagged OOD", "shift flagged (batches of 100)",
                                          "coverage @0.90 (set size)", "coverage @0.95 (set size)",
                                          "accuracy: all / top 80% / top 50%"], _rows(results), _notes(results))


def _fmt_block(b: dict, auroc=None) -> list[str]:
    conf = b.get("conformal", {})
    shift = b["shift"]
    rc = b.get("risk_coverage", {}).get("accuracy_at", {})

    def cov(c: str) -> str:
        return f"{conf[c]['coverage']:.3f} ({conf[c]['mean_set_size']:.2f})" if c in conf else "-"

    return ["-" if auroc is None else f"{auroc:.3f}", f"{b['ood_rate']:.1%}" if b["ood_rate"] is not None else "-",
            f"{shift['flagged']}/{shift['batches']}" if shift["batches"] else "-", cov("0.90"), cov("0.95"),
            " / ".join(f"{rc[k]:.3f}" for k in ("1.00", "0.80", "0.50")) if rc else "-"]


def _rows(results: dict) -> list[list]:
    rows = []
    for name, m in results["models"].items():
        rows.append([name, f"in-site test ({', '.join(m['trained_on'])})", *_fmt_block(m["in_site"])])
        for site, b in m["per_site"].items():
            if len(m["per_site"]) > 1:
                rows.append([name, f"in-site: {site}", *_fmt_block(b)])
        for site, b in m["others"].items():
            rows.append([name, f"other site: {site}", *_fmt_block(b, b["ood_auroc"])])
    label = f"LOSO {results['loso']['variant']['name']}"
    for site, f in results["loso"]["folds"].items():
        r = f["reliability"]
        rows.append([label, f"fold without {site}: in-site test", *_fmt_block(r["in_site"])])
        rows.append([label, f"fold without {site}: {site} (never seen)",
                     *_fmt_block(r["others"][site], r["others"][site]["ood_auroc"])])
        for ablation, a in r.get("ablations", {}).items():
            rows.append([f"{label}, {ablation}", f"fold without {site}: {site} (never seen)",
                         f"{a['ood_auroc'][site]:.3f}", "-", "-", "-", "-", "-"])
    for name, m in results["models"].items():
        for group, g in m["not_a_cell"].items():
            rows.append([name, f"not a cell: {group}", "-", f"{g['ood']}/{g['n']}", "-", "-", "-",
                         f"{g['confident_class']} given a confident class"])
    return rows


def _notes(results: dict) -> list[str]:
    o = results["overhead"]
    return ["OOD score: the larger of the Mahalanobis distance of the penultimate features to the nearest class "
            "mean (shared covariance, training cells) and the distance of the early stage's style (per-channel "
            "mean and spread of each activation of the stage at a quarter of the input's side, whitened by its "
            f"within-site covariance shrunk by {STYLE_SHRINKAGE:g}) to its nearest training image of each site, "
            "each scaled by its 95th percentile on the site's validation cells; flagged above the 95th "
            "percentile of the validation cells' scores. "
            f"Shift: a batch is flagged when its number of flagged cells would occur with p < {SHIFT_P / 2:g} at the "
            f"5% rate, or when its OOD scores run higher than the validation cells' (one-sided Mann-Whitney U, "
            f"p < {SHIFT_P / 2:g}, above them in at least {MIN_EXCEED:.0%} of pairs).",
            "Conformal: APS sets from the validation cells' scores; coverage = share of test cells whose true class "
            "is in the set (cells of a class the model lacks are left out of coverage and accuracy).",
            "Accuracy 'top 80% / top 50%': keeping only the most confident share of the cells (risk-coverage).",
            f"Overhead of OOD + conformal on `predict` ({o['images']} pbc images, {o['backend']} backend, "
            f"{o['precision']}, end to end, {o['threads']} thread(s)): {o['seconds_without']:.2f} s without "
            f"(logits-only ONNX file at the same precision, no statistics), {o['seconds_with']:.2f} s with "
            f"(median of {o['repeats']} turns' ratios {o['overhead']:+.1%}, range {o['overhead_range'][0]:+.1%} to "
            f"{o['overhead_range'][1]:+.1%}; ratio of the medians "
            f"{o['seconds_with'] / o['seconds_without'] - 1:+.1%}).",
            f"LOSO at the shipped recipe's budget ({results['loso']['variant']['epochs']} epochs, "
            f"{results['loso']['variant']['per_class']} cells/class/site, five shared classes). The rows named "
            "after a setting change only that setting of the OOD score, on the same fold's network: the style "
            "read from the single last layer at a quarter of the input's side (the previous rule), or whitened "
            f"by the within-site covariance with only a {SHRINKAGE:g} ridge."]


if __name__ == "__main__":
    main()
