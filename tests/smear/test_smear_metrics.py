import numpy as np
import pytest

from leukodx.smear.metrics import coco_average_precision, count_errors, dice_iou

CLASSES = ["RBC", "WBC", "Platelets"]


def _boxes(rec):
    return {"boxes": rec["boxes"], "labels": rec["labels"]}


def test_ground_truth_as_prediction_scores_one(bccd):
    records = [bccd.records[i] for i in bccd.splits["val"][:10]]
    truth = [_boxes(r) for r in records]
    predicted = [{**t, "scores": np.ones(len(t["labels"]))} for t in truth]
    ap = coco_average_precision(truth, predicted, CLASSES)
    for c in CLASSES:
        assert ap["ap50"][c] == pytest.approx(1.0)
        assert ap["ap50_95"][c] == pytest.approx(1.0)


def test_shifted_boxes_lose_strict_ap_before_ap50(bccd):
    records = [bccd.records[i] for i in bccd.splits["val"][:10]]
    truth = [_boxes(r) for r in records]
    # shift every box by 10% of its width: still a match at IoU 0.5, not at 0.9
    shifted = []
    for t in truth:
        b = t["boxes"].copy()
        dx = (b[:, 2] - b[:, 0]) * 0.1
        b[:, 0] += dx
        b[:, 2] += dx
        shifted.append({"boxes": b, "labels": t["labels"], "scores": np.ones(len(b))})
    ap = coco_average_precision(truth, shifted, CLASSES)
    assert ap["ap50"]["WBC"] == pytest.approx(1.0)
    assert ap["ap50_95"]["WBC"] < 0.9


def test_missing_predictions_and_absent_classes():
    truth = [{"boxes": np.array([[0, 0, 10, 10.0]]), "labels": np.array([1])}]
    empty = [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0)}]
    ap = coco_average_precision(truth, empty, CLASSES)
    assert ap["ap50"]["WBC"] == 0.0
    assert ap["ap50"]["RBC"] is None  # no ground truth of that class: undefined, not zero
    with pytest.raises(ValueError):
        coco_average_precision(truth, empty * 2, CLASSES)


def test_count_errors_and_dice():
    assert count_errors([1, 2, 0], [1, 1, 1]) == {"mae": pytest.approx(2 / 3), "exact": pytest.approx(1 / 3), "n_fields": 3}
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[:, :5] = True
    dice, iou = dice_iou(a, b)
    assert dice == pytest.approx(0.5)
    assert iou == pytest.approx(25 / 75)
    assert dice_iou(np.zeros((3, 3)), np.zeros((3, 3))) == (1.0, 1.0)
