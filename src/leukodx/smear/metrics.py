"""Detection and segmentation metrics.

AP comes from pycocotools' COCOeval (the reference implementation), per class: AP@0.5 and
AP@[0.5:0.95]. Counts are compared per field; Dice and IoU per structure over images.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from leukodx.errors import InvalidInputError

#: COCO's default of 100 detections per image would truncate crowded fields
MAX_DETS = (1, 10, 300)


def coco_average_precision(ground_truth: list[dict], predictions: list[dict], classes: list[str]) -> dict:
    """``{"ap50": {class: AP}, "ap50_95": {class: AP}}`` over images.

    ``ground_truth[i]`` has ``boxes`` (N, 4) xyxy and ``labels`` (N,); ``predictions[i]`` also
    ``scores``. A class with no ground-truth box gets ``None``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(ground_truth) != len(predictions):
        raise InvalidInputError(f"{len(ground_truth)} ground-truth images but {len(predictions)} predictions")
    images, annotations, results = [], [], []
    for i, (gt, pr) in enumerate(zip(ground_truth, predictions)):
        images.append({"id": i})
        for box, label in zip(np.asarray(gt["boxes"]).reshape(-1, 4), gt["labels"]):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        for box, label, score in zip(np.asarray(pr["boxes"]).reshape(-1, 4), pr["labels"], pr["scores"]):
            x0, y0, x1, y1 = (float(v) for v in box)
            results.append({"image_id": i, "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(score)})
    gt_api = COCO()
    gt_api.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": k, "name": c} for k, c in enumerate(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api.createIndex()
    ap50, ap50_95 = {}, {}
    present = {int(a["category_id"]) for a in annotations}
    if not results:
        return {"ap50": {c: (0.0 if k in present else None) for k, c in enumerate(classes)},
                "ap50_95": {c: (0.0 if k in present else None) for k, c in enumerate(classes)}}
    with contextlib.redirect_stdout(io.StringIO()):
        dt_api = gt_api.loadRes(results)
        ev = COCOeval(gt_api, dt_api, "bbox")
        ev.params.maxDets = list(MAX_DETS)
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # [IoU thresholds, recall points, class, area range, max dets]
    for k, c in enumerate(classes):
        if k not in present:
            ap50[c] = ap50_95[c] = None
            continue
        p = precision[:, :, k, 0, -1]
        at50 = p[0][p[0] > -1]
        ap50[c] = float(at50.mean()) if at50.size else 0.0
        every = p[p > -1]
        ap50_95[c] = float(every.mean()) if every.size else 0.0
    return {"ap50": ap50, "ap50_95": ap50_95}


def count_errors(true_counts, predicted_counts) -> dict:
    """Mean absolute error of a per-field count, and how often it is exactly right."""
    t = np.asarray(true_counts, dtype=float)
    p = np.asarray(predicted_counts, dtype=float)
    if t.size == 0:
        return {"mae": None, "exact": None, "n_fields": 0}
    return {"mae": float(np.abs(t - p).mean()), "exact": float((t == p).mean()), "n_fields": int(t.size)}


def dice_iou(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks; both empty counts as perfect agreement."""
    t, p = truth.astype(bool), predicted.astype(bool)
    inter = np.logical_and(t, p).sum()
    total = t.sum() + p.sum()
    union = np.logical_or(t, p).sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * inter / total), float(inter / union)
