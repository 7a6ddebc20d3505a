"""Whole-smear figures: detection on BCCD test (detector and classical baseline), nucleus /
cytoplasm segmentation within and across the two wbc-seg sets, end-to-end speed on a 640x480
field, peak memory on a 10,000 x 10,000 px image, the bad-input matrix, and all-aria fields
through the same pipeline (per-field white-cell counts; per-cell features vs Benign / B-ALL).

    python benchmarks/smear.py [--parts detection segmentation speed bad big aria]

Each part updates its entry in results/smear.json (the others are kept), so a part can be
re-measured alone, e.g. the speed on an otherwise idle machine.

The segmenter trained on Dataset-2 (for the Dataset-2 -> Dataset-1 direction) is trained here
into a temporary folder; the shipped one (Dataset-1) is the bundled ``wbc-seg-unet``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import ci, write_result
from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
from leukodx.errors import LeukodxError
from leukodx.stats import auroc, bootstrap_estimate
from leukodx.smear.detector import load_detector
from leukodx.smear.evaluate import evaluate_classical, evaluate_detector
from leukodx.smear.pipeline import SmearAnalyzer
from leukodx.smear.segmentation import (SegmenterTraining, evaluate_segmenter, load_segmenter, split_items,
                                        train_segmenter)

ARIA_PIXEL_SCALE = 0.15  # all-aria red cells are ~15 px across, BCCD's ~100 px
BOOTSTRAP = 200


def detection() -> dict:
    bccd = load_dataset("bccd")
    detector = load_detector()
    return {"detector": evaluate_detector(detector, bccd, "test", bootstrap=BOOTSTRAP),
            "classical": evaluate_classical(bccd, "test", bootstrap=BOOTSTRAP)}


def segmentation(work: Path) -> dict:
    d1 = load_segmenter()
    parts = split_items("wbc-seg-2")
    d2, card = train_segmenter(parts["train"], parts["val"], d1.config,
                               SegmenterTraining(steps=d1.card["training"]["steps"], batch_size=16,
                                                 lr=d1.card["training"]["lr"]))
    d2.card = {**card, "name": "wbc-seg-2-unet (benchmark only)", "data": {**card["data"], "datasets": ["wbc-seg-2"]}}
    runs = {}
    for label, seg in (("trained on wbc-seg-1", d1), ("trained on wbc-seg-2", d2)):
        runs[label] = {f"{ds} {split}": evaluate_segmenter(seg, ds, split, bootstrap=BOOTSTRAP)
                       for ds in ("wbc-seg-1", "wbc-seg-2") for split in ("test", "all")
                       if not (split == "all" and ds in seg.card["data"]["datasets"])}
    return runs


def speed(analyzer: SmearAnalyzer, n: int = 20) -> dict:
    bccd = load_dataset("bccd")
    paths = [bccd.root / bccd.records[i]["path"] for i in bccd.splits["test"][:n]]
    analyzer.analyze(read_image(paths[0]))  # warm-up: first call builds kernels
    times = []
    for p in paths:
        t = time.perf_counter()
        analyzer.analyze(read_image(p), name=str(p))
        times.append(time.perf_counter() - t)
    return {"fields": len(times), "median_s": statistics.median(times), "max_s": max(times),
            "includes": "JPEG decode, detection, white-cell typing, nucleus fractions, counts"}


def _mosaic(side: int, work: Path) -> Path:
    """A side x side px smear made of real BCCD fields (JPEG), for the memory test."""
    bccd = load_dataset("bccd")
    fields = [read_image(bccd.root / bccd.records[i]["path"]) for i in bccd.splits["test"][:12]]
    canvas = np.empty((side, side, 3), np.uint8)
    k = 0
    for y in range(0, side, 480):
        for x in range(0, side, 640):
            f = fields[k % len(fields)]
            k += 1
            canvas[y:y + 480, x:x + 640] = f[:min(480, side - y), :min(640, side - x)]
    path = work / f"mosaic-{side}.jpg"
    Image.fromarray(canvas).save(path, quality=90)
    return path


def big_image(work: Path, side: int = 10_000) -> dict:
    """Peak resident memory of `leukodx detect` on one side x side image, in a fresh process."""
    path = _mosaic(side, work)
    code = ("import resource, sys, time; from leukodx.cli.app import main; t = time.perf_counter(); "
            f"rc = main(['detect', {str(path)!r}, '-o', {str(work / 'big-out')!r}]); "
            "print('RESULT', rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    if not line:
        return {"side": side, "error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    _, rc, seconds, rss_kb = line[0].split()
    import json

    summary = json.loads((work / "big-out" / "summary.json").read_text())
    return {"side": side, "exit_code": int(rc), "seconds": round(float(seconds), 1),
            "peak_rss_gb": round(int(rss_kb) / 1024 ** 2, 3), "counts": summary["summary"]["counts"]}


def bad_inputs(analyzer: SmearAnalyzer, work: Path) -> list[dict]:
    bccd = load_dataset("bccd")
    field = read_image(bccd.root / bccd.records[bccd.splits["test"][0]]["path"])
    from leukodx.smear.tiling import background_colour

    blank = np.empty_like(field)
    blank[:] = background_colour(field)
    gray = np.repeat(field.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    dark = (field * 0.12).astype(np.uint8)
    bright = np.clip(field.astype(int) + 170, 0, 255).astype(np.uint8)
    # a crowded field: 4 x 4 real fields shrunk into one 1280 x 960 image (pixel scale 0.5)
    mosaic = np.vstack([np.hstack([read_image(bccd.root / bccd.records[i]["path"])
                                   for i in bccd.splits["test"][r * 4:(r + 1) * 4]]) for r in range(4)])
    crowded = np.asarray(Image.fromarray(mosaic).resize((1280, 960), Image.Resampling.BILINEAR))
    cases = [("empty field (background only)", blank, 1.0), ("grayscale", gray, 1.0), ("very dark (x0.12)", dark, 1.0),
             ("over-exposed (+170)", bright, 1.0), ("crowded: 16 fields at half size", crowded, 0.5)]
    rows = []
    for name, rgb, scale in cases:
        analyzer.pixel_scale = scale
        t = time.perf_counter()
        try:
            r = analyzer.analyze(rgb, name)
            rows.append({"input": name, "outcome": "result", "counts": r["counts"], "flags": r["flags"],
                         "seconds": round(time.perf_counter() - t, 2)})
        except LeukodxError as exc:
            rows.append({"input": name, "outcome": "error", "message": str(exc)})
    analyzer.pixel_scale = 1.0
    corrupt = work / "corrupt.jpg"
    corrupt.write_bytes(open(bccd.root / bccd.records[0]["path"], "rb").read()[:3000])
    for name, path in (("truncated JPEG", corrupt), ("text file named .jpg", work / "text.jpg")):
        if name.startswith("text"):
            path.write_text("not an image")
        try:
            read_image(path)
            rows.append({"input": name, "outcome": "read (unexpected)"})
        except LeukodxError as exc:
            rows.append({"input": name, "outcome": "error", "message": str(exc)})
    return rows


def aria_features(field: dict, classes: list[str]) -> list[float]:
    """Per-field summary of its white cells: count, size, nucleus fraction, type probabilities, unsure share."""
    white = [c for c in field["cells"] if c["kind"] == "WBC" and "probabilities" in c]
    if not white:
        return [0.0] * (5 + len(classes))
    side = [np.sqrt((c["box"][2] - c["box"][0]) * (c["box"][3] - c["box"][1])) for c in white]
    probs = np.array([[c["probabilities"][k] for k in classes] for c in white])
    return [len(white), float(np.mean(side)), float(np.mean([c["nucleus_fraction"] for c in white])),
            float(np.max([c["nucleus_fraction"] for c in white])), float(np.mean([c["unsure"] for c in white])),
            *probs.mean(axis=0).tolist()]


def aria(analyzer: SmearAnalyzer, train_per_class: int = 30) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from leukodx.benchmarking.protocol import dataset_sides
    from leukodx.inference.classifier import load_model

    index, sides, origin = dataset_sides("all-aria")
    analyzer.pixel_scale = ARIA_PIXEL_SCALE
    cell_classes = analyzer.classifier.classes
    rng = np.random.default_rng(0)
    train = sides["train"]
    pick = np.concatenate([rng.permutation(np.flatnonzero(train.labels == c))[:train_per_class]
                           for c in range(len(train.classes))])
    sets = {"train": [(train.root / train.paths[i], int(train.labels[i])) for i in sorted(pick)],
            "test": [(sides["test"].root / p, int(y)) for p, y in zip(sides["test"].paths, sides["test"].labels)]}
    benign = index.classes.index("Benign")
    feats, labels, wbc_counts, seconds = {}, {}, {}, []
    for name, items in sets.items():
        feats[name], labels[name], wbc_counts[name] = [], [], []
        for path, y in items:
            t = time.perf_counter()
            field = analyzer.analyze(read_image(path), str(path))
            seconds.append(time.perf_counter() - t)
            feats[name].append(aria_features(field, cell_classes))
            labels[name].append(int(y != benign))
            wbc_counts[name].append(field["counts"]["WBC"])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(np.array(feats["train"]), labels["train"])
    y_test = np.array(labels["test"])
    p_cells = clf.predict_proba(np.array(feats["test"]))[:, 1]
    stage = load_model("all-stage")
    names, arrays, _ = stage.load_inputs([p for p, _ in sets["test"]])
    p_stage = 1.0 - stage.predict_arrays(arrays)[:, stage.classes.index("Benign")]

    def auroc_ci(p):
        return bootstrap_estimate(lambda i: auroc(y_test[i] == 1, p[i]), len(y_test), BOOTSTRAP, seed=0)

    counts = np.array(wbc_counts["test"])
    by_class = {c: np.array(wbc_counts["test"])[sides["test"].labels == k].tolist() for k, c in enumerate(index.classes)}
    return {"split": origin, "pixel_scale": ARIA_PIXEL_SCALE, "n_train_fields": len(sets["train"]),
            "n_test_fields": len(sets["test"]), "median_seconds_per_field": statistics.median(seconds),
            "wbc_per_field_test": {"mean": float(counts.mean()), "histogram": np.bincount(counts).tolist(),
                                   "mean_by_class": {c: float(np.mean(v)) if v else None for c, v in by_class.items()}},
            "auroc_benign_vs_all_cell_features": auroc_ci(p_cells),
            "auroc_benign_vs_all_whole_image_all_stage": auroc_ci(p_stage),
            "features": ["n_wbc", "mean_box_side", "mean_nucleus_fraction", "max_nucleus_fraction", "unsure_share",
                         *[f"mean_p_{c}" for c in cell_classes]],
            "note": "each field is its own case: all-aria has no patient identifiers"}


def table_rows(result: dict) -> list[list]:
    rows = []
    for part in ("detection", "segmentation", "speed_640x480", "bad_inputs"):
        result.setdefault(part, None)
    det, cla = (result["detection"] or {}).get("detector"), (result["detection"] or {}).get("classical")

    def ap_row(label, r, c, target):
        ci = (r.get("ap50_estimate", {}).get(c) or {}).get("ci95")
        value = r["ap50"].get(c)
        return [label, f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""), target,
                "met" if value is not None and value >= float(target[2:]) else "NOT met"]

    if det is None:
        raise SystemExit("no detection figures yet: run with --parts detection")
    rows.append(ap_row("WBC AP@0.5, bccd test (detector)", det, "WBC", ">=0.95"))
    rows.append(ap_row("RBC AP@0.5, bccd test (detector)", det, "RBC", ">=0.85"))
    rows.append(ap_row("Platelet AP@0.5, bccd test (detector)", det, "Platelets", ">=0.85"))
    rows.append(["WBC AP@0.5, bccd test (classical baseline)", ci(cla["ap50_estimate"]["WBC"], 3), "(baseline)", ""])
    for label, r in (("detector", det), ("classical", cla)):
        rows.append([f"WBC count MAE per field ({label})", ci(r["wbc_count_mae_estimate"], 3),
                     "<=0.1", "met" if r["wbc_count_mae"] <= 0.1 else "NOT met"])
    for model, runs in (result["segmentation"] or {}).items():
        for where, r in runs.items():
            within = r["within_dataset"]
            target = ">=0.92" if within else ">=0.85"
            d = r["nucleus"]
            rows.append([f"nucleus Dice, {model}, {where} ({'within' if within else 'across'})",
                         f"{ci(d['dice_estimate'], 3)}; cytoplasm {r['cytoplasm']['dice']:.3f}",
                         target, "met" if d["dice"] >= float(target[2:]) else "NOT met"])
    sp = result["speed_640x480"]
    if sp:
        rows.append(["end-to-end 640x480 field, median of 20", f"{sp['median_s']:.3f} s (max {sp['max_s']:.3f})", "<=1 s",
                     "met" if sp["median_s"] <= 1 else "NOT met"])
    if result.get("big_image"):
        b = result["big_image"]
        rows.append(["peak memory, 10,000 x 10,000 px (leukodx detect)",
                     f"{b.get('peak_rss_gb', 'n/a')} GB in {b.get('seconds', 'n/a')} s" if "error" not in b else b["error"],
                     "<=2 GB", "met" if b.get("peak_rss_gb", 99) <= 2 else "NOT met"])
    if result.get("all_aria"):
        a = result["all_aria"]
        c, s = a["auroc_benign_vs_all_cell_features"], a["auroc_benign_vs_all_whole_image_all_stage"]
        rows.append(["all-aria test: AUROC Benign vs B-ALL, per-field classifier on per-cell features",
                     f"{c['value']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]", "(report)", ""])
        rows.append(["all-aria test: same, whole-image all-stage model", f"{s['value']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]",
                     "(report)", ""])
        rows.append(["all-aria test: white cells found per field (mean)", f"{a['wbc_per_field_test']['mean']:.2f}",
                     "(report)", ""])
    for b in result["bad_inputs"] or []:
        rows.append([f"bad input: {b['input']}", b["outcome"] + (f": {b['message']}" if "message" in b else
                     f", counts {b.get('counts')}, flags {len(b.get('flags', []))}"), "result or clear error", "met"
                     if b["outcome"] in ("result", "error") else "NOT met"])
    return rows


PARTS = ("detection", "segmentation", "speed", "bad", "big", "aria")


def main() -> None:
    import json

    from _common import RESULTS

    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS),
                    help="parts to (re)measure; none: only rewrite the tables from smear.json")
    args = ap.parse_args()
    previous = RESULTS / "smear.json"
    keep = ("detection", "segmentation", "speed_640x480", "bad_inputs", "big_image", "all_aria", "measured_by")
    result = {k: v for k, v in json.loads(previous.read_text()).items() if k in keep} if previous.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        analyzer = SmearAnalyzer()
        if "detection" in args.parts:
            result["detection"] = detection()
        if "segmentation" in args.parts:
            result["segmentation"] = segmentation(work)
        if "speed" in args.parts:
            result["speed_640x480"] = speed(analyzer)
        if "bad" in args.parts:
            result["bad_inputs"] = bad_inputs(analyzer, work)
        if "big" in args.parts:
            result["big_image"] = big_image(work)
        if "aria" in args.parts:
            result["all_aria"] = aria(analyzer)
    stamp = f"python smear.py --parts {' '.join(args.parts)} ({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC)"
    for part in args.parts:
        result.setdefault("measured_by", {})[part] = stamp
    rows = table_rows(result)
    notes = ["Detector: torchvision Faster R-CNN, timm ResNet-18 + FPN, trained from scratch on bccd train (205 fields), "
             "epoch chosen on val; count thresholds per class chosen on val.",
             "Classical baseline: blue-minus-green threshold (Otsu, floored), lobes joined by dilation, watershed; "
             "parameters chosen on bccd val.",
             "BCCD's own labels miss some red cells, which caps RBC AP for any detector.",
             "Segmentation: segmentation_models_pytorch U-Net (timm ResNet-10t encoder), from scratch, 128 px; "
             "'all' = every image of a set the model never trained on."]
    notes += [f"{part}: measured by {cmd}" for part, cmd in sorted(result.get("measured_by", {}).items())]
    write_result("smear", result, ["figure", "measured", "target", ""], rows, notes)


if __name__ == "__main__":
    main()
