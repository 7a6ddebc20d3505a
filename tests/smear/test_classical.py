import numpy as np

from leukodx.smear.classical import detect_white_cells, nucleus_mask
from leukodx.smear.metrics import coco_average_precision


def test_finds_the_white_cell_of_real_fields(bccd):
    from leukodx.data.images import read_image

    ids = bccd.splits["val"][:12]
    truth, predicted = [], []
    for i in ids:
        rec = bccd.records[i]
        rgb = read_image(bccd.root / rec["path"])
        white = rec["labels"] == 1
        truth.append({"boxes": rec["boxes"][white], "labels": np.zeros(int(white.sum()), int)})
        p = detect_white_cells(rgb)
        predicted.append({**p, "labels": np.zeros(len(p["labels"]), int)})
    ap = coco_average_precision(truth, predicted, ["WBC"])
    assert ap["ap50"]["WBC"] > 0.6


def test_blank_grey_and_dark_fields_give_no_white_cell(blank_field, bccd_field):
    assert len(detect_white_cells(blank_field)["boxes"]) == 0
    gray = np.repeat(bccd_field[0].mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert not nucleus_mask(gray).any()  # no blue-purple in a grey image
    assert len(detect_white_cells(np.zeros((480, 640, 3), np.uint8))["boxes"]) == 0
