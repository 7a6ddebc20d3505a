"""Scoring a detector on a split of a detection dataset: AP per class and per-field count errors,
with bootstrap confidence intervals over fields when asked."""

from __future__ import annotations

import numpy as np

from leukodx.errors import InvalidInputError
from leukodx.smear.metrics import coco_average_precision, count_errors
from leukodx import stats

WBC = "WBC"


def counted(prediction: dict, classes: list[str], thresholds: dict[str, float]) -> np.ndarray:
    """Which detections count as cells: each at or above its class's counting threshold (0.5 if none)."""
    cut = np.array([thresholds.get(c, 0.5) for c in classes], dtype=np.float32)
    labels = np.asarray(prediction["labels"], dtype=int)
    return np.asarray(prediction["scores"]) >= cut[labels] if len(labels) else np.zeros(0, dtype=bool)


def field_counts(prediction: dict, classes: list[str], thresholds: dict[str, float]) -> dict[str, int]:
    """Cells per class in one field: the detections that count, by class."""
    labels = np.asarray(prediction["labels"], dtype=int)[counted(prediction, classes, thresholds)]
    return {c: int((labels == k).sum()) for k, c in enumerate(classes)}


def score_detections(targets: list[dict], predictions: list[dict], classes: list[str],
                     thresholds: dict[str, float], bootstrap: int = 0, seed: int = 0) -> dict:
    """AP@0.5, AP@[0.5:0.95] per class, count MAE per class (WBC's also at top level), optional CIs."""
    ap = coco_average_precision(targets, predictions, classes)
    counts = [field_counts(p, classes, thresholds) for p in predictions]
    count_mae, count_exact = {}, {}
    for k, c in enumerate(classes):
        errors = count_errors([int((t["labels"] == k).sum()) for t in targets], [n[c] for n in counts])
        count_mae[c], count_exact[c] = errors["mae"], errors["exact"]
    result = {
        "n_fields": len(targets), "ap50": ap["ap50"], "ap50_95": ap["ap50_95"],
        "map50": _mean(ap["ap50"].values()), "map50_95": _mean(ap["ap50_95"].values()),
        "wbc_count_mae": count_mae.get(WBC), "count_mae": count_mae, "count_exact": count_exact,
        "count_thresholds": thresholds,
    }
    if bootstrap:
        k_wbc = classes.index(WBC) if WBC in classes else None

        def resample(pick: np.ndarray) -> np.ndarray:
            res = coco_average_precision([targets[i] for i in pick], [predictions[i] for i in pick], classes)
            aps = [np.nan if res["ap50"][c] is None else res["ap50"][c] for c in classes]
            mae = (np.mean([abs(int((targets[i]["labels"] == k_wbc).sum()) - counts[i][WBC]) for i in pick])
                   if k_wbc is not None else np.nan)
            return np.array(aps + [mae])

        samples = stats.bootstrap(resample, len(targets), bootstrap, seed)
        result["ap50_estimate"] = {c: stats.estimate(ap["ap50"][c], samples[:, k]) for k, c in enumerate(classes)}
        if k_wbc is not None:
            result["wbc_count_mae_estimate"] = stats.estimate(count_mae.get(WBC), samples[:, -1])
        result["bootstrap"] = bootstrap
    return result


def _mean(values) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def evaluate_detector(detector, index, split: str = "test", max_images: int | None = None, bootstrap: int = 0) -> dict:
    """Run ``detector`` over one split of a detection dataset and score it."""
    from leukodx.data.registry import load_fields
    from leukodx.smear.train_detector import predict_fields

    if split not in index.splits or not index.splits[split]:
        raise InvalidInputError(f"{index.name}: no split {split!r} (known: {', '.join(index.splits) or 'none'})")
    ids = index.splits[split][:max_images]
    images, targets = load_fields(index, ids)
    predictions = predict_fields(detector, images)
    thresholds = detector.card.get("count_thresholds") or {c: 0.5 for c in detector.classes}
    result = score_detections(targets, predictions, detector.classes, thresholds, bootstrap)
    result.update({"dataset": index.name, "split": split, "model": detector.name,
                   "model_sha256": detector.card.get("sha256")})
    return result


def evaluate_classical(index, split: str = "test", params=None, bootstrap: int = 0) -> dict:
    """The colour-threshold + watershed baseline on one split, scored on white cells only."""
    from leukodx.smear.classical import NucleusThreshold, detect_white_cells
    from leukodx.data.registry import load_fields

    if split not in index.splits or not index.splits[split]:
        raise InvalidInputError(f"{index.name}: no split {split!r} (known: {', '.join(index.splits) or 'none'})")
    if WBC not in index.classes:
        raise InvalidInputError(f"{index.name}: has no {WBC} class for the white-cell baseline")
    params = params or NucleusThreshold()
    k = index.classes.index(WBC)
    images, targets = load_fields(index, index.splits[split])
    white = [{"boxes": t["boxes"][t["labels"] == k], "labels": np.zeros(int((t["labels"] == k).sum()), int)}
             for t in targets]
    predictions = [{**p, "labels": np.zeros(len(p["labels"]), int)} for p in (detect_white_cells(im, params) for im in images)]
    result = score_detections(white, predictions, [WBC], {WBC: 0.0}, bootstrap)
    result.update({"dataset": index.name, "split": split, "model": "classical colour threshold + watershed",
                   "parameters": params.__dict__})
    return result
