import numpy as np
import pytest

from leukodx.errors import IntegrityError, InvalidInputError
from leukodx.smear.detector import DetectorConfig, load_detector, save_detector
from leukodx.smear.evaluate import evaluate_detector
from leukodx.smear.train_detector import (DetectorTraining, augmented_field, choose_count_thresholds, rescaled_field,
                                          train_detector)


def test_count_thresholds_minimise_the_count_error():
    targets = [{"labels": np.array([1])}, {"labels": np.array([1, 1])}]
    predictions = [{"labels": np.array([1, 1]), "scores": np.array([0.9, 0.3])},
                   {"labels": np.array([1, 1, 1]), "scores": np.array([0.8, 0.7, 0.2])}]
    chosen = choose_count_thresholds(targets, predictions, ["RBC", "WBC"])
    assert 0.3 < chosen["WBC"] <= 0.7


def _side(boxes: np.ndarray) -> float:
    return float(np.median(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))))


def test_rescaled_fields_keep_their_size_and_their_boxes_follow_the_cells(bccd):
    from leukodx.data.registry import load_fields

    images, targets = load_fields(bccd, bccd.splits["train"][:6])
    rng = np.random.default_rng(0)
    h, w = images[0].shape[:2]
    native = _side(targets[0]["boxes"][targets[0]["labels"] == 0])
    same, same_boxes, same_labels = rescaled_field(images, targets, 0, 1.0, rng)
    assert same.shape == images[0].shape and sorted(same_labels) == sorted(targets[0]["labels"])
    assert _side(same_boxes[same_labels == 0]) == pytest.approx(native)
    for factor in (0.55, 1.8):
        rgb, boxes, labels = rescaled_field(images, targets, 0, factor, rng)
        assert rgb.shape == images[0].shape and len(boxes) == len(labels) > 0
        assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= w and boxes[:, [1, 3]].max() <= h
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        # red cells (whole or mostly inside) are drawn at the new magnification
        assert _side(boxes[labels == 0]) == pytest.approx(native * factor, rel=0.3)
    shrunk, _, _ = rescaled_field(images, targets, 0, 0.55, rng)
    assert shrunk.reshape(-1, 3).max(axis=1).min() > 0, "a shrunken field is filled with smear, not black padding"


def test_detector_augmentation_changes_colour_but_not_the_targets_kind(bccd):
    import torch

    from leukodx.data.registry import load_fields

    images, targets = load_fields(bccd, bccd.splits["train"][:4])
    x, boxes, labels = augmented_field(images, targets, 1, "scale-stain", np.random.default_rng(3),
                                       torch.Generator().manual_seed(3))
    assert x.shape == (3, *images[1].shape[:2]) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert boxes.shape == (len(labels), 4) and set(labels.tolist()) <= {0, 1, 2}
    with pytest.raises(InvalidInputError, match="expected one of"):
        train_detector(bccd, DetectorConfig(), DetectorTraining(epochs=1, max_images=2, augment="mosaic"))


@pytest.mark.slow
def test_tiny_detector_trains_round_trips_and_tiles_large_fields(bccd, tmp_path):
    detector, card = train_detector(bccd, DetectorConfig(), DetectorTraining(epochs=1, max_images=4, eval_every=1))
    assert set(card["count_thresholds"]) == {"RBC", "WBC", "Platelets"}
    saved = save_detector(tmp_path / "det", detector.net, detector.config, card)
    loaded = load_detector(tmp_path / "det")
    assert loaded.card["sha256"] == saved["sha256"] and loaded.classes == ["RBC", "WBC", "Platelets"]
    result = evaluate_detector(loaded, bccd, "test", max_images=3)
    assert set(result["ap50"]) == {"RBC", "WBC", "Platelets"} and result["n_fields"] == 3
    assert card["training"]["best_epoch"] == 0 and len(card["training"]["history"]) == 1
    assert "val_map50" in card["training"]["history"][0]
    with pytest.raises(InvalidInputError, match="no split"):
        evaluate_detector(loaded, bccd, "holdout")
    weights = tmp_path / "det" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(IntegrityError):
        load_detector(tmp_path / "det")


@pytest.mark.slow
def test_a_field_over_the_one_pass_limit_is_tiled_and_boxes_stay_inside(bccd):
    import leukodx
    from leukodx.data.images import read_image

    field = read_image(bccd.root / bccd.records[0]["path"])
    one = leukodx.load("bccd-frcnn").detect(field)
    big = np.tile(field, (5, 4, 1))  # 2400 x 2560: over WHOLE_FIELD_PIXELS, so tiled
    out = leukodx.load("bccd-frcnn").detect(big)
    assert len(out["boxes"]) >= 10 * len(one["boxes"])  # 20 copies; seams may drop a few cells
    assert out["boxes"][:, [0, 2]].max() <= 2560 and out["boxes"][:, [1, 3]].max() <= 2400


def test_the_onnx_detector_finds_what_the_pytorch_network_finds(bccd):
    """ONNX Runtime (the CPU default) against PyTorch on real fields at their own size and rescaled to
    odd sizes (the graph computes each field's resize as PyTorch does): the same boxes, classes,
    scores and OOD features."""
    from PIL import Image

    from leukodx.data.registry import load_fields
    from leukodx.smear.detector import detections_agree

    onnx, torch_det = load_detector(backend="onnx"), load_detector(backend="torch")
    assert (onnx.backend, torch_det.backend) == ("onnx", "torch") and onnx.onnx_sha256
    images, _ = load_fields(bccd, bccd.splits["test"][:3])
    for rgb in images:
        for factor in (1.0, 0.73, 1.29):
            size = (round(rgb.shape[1] * factor) | 1, round(rgb.shape[0] * factor) | 1)  # odd sides
            field = rgb if factor == 1.0 else np.asarray(Image.fromarray(rgb).resize(size))
            a, b = onnx.detect(field), torch_det.detect(field)
            assert len(b["boxes"]) and detections_agree(a, b, min_score=0.05), field.shape


def test_a_changed_cached_detector_export_is_made_again_and_detect_starts_without_pytorch(bccd):
    """The stamp vouches for the bundle and the very file: a changed export is made again from the
    verified weights (and the digest of what runs is reported); a vouched one loads without PyTorch."""
    import subprocess
    import sys

    import onnx
    from onnx import numpy_helper

    from leukodx._hashing import sha256_file
    from leukodx.data.registry import load_fields
    from leukodx.smear.detector import export_path

    (field,), _ = load_fields(bccd, bccd.splits["test"][:1])
    clean = load_detector(backend="onnx")
    expected = clean.detect(field)
    path = export_path(clean.card)
    assert clean.onnx_sha256 == sha256_file(path)
    model = onnx.load(str(path))
    last = [t for t in model.graph.initializer if len(t.dims) == 1][-1]
    last.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(last) + 5.0, last.name))
    onnx.save(model, str(path))
    tampered = sha256_file(path)
    again = load_detector(backend="onnx")
    assert again.onnx_sha256 == sha256_file(path) != tampered
    got = again.detect(field)
    assert np.array_equal(got["boxes"], expected["boxes"]) and np.array_equal(got["scores"], expected["scores"])
    code = ("import sys; from leukodx.smear.detector import load_detector; import numpy as np; "
            "d = load_detector(backend='onnx'); d.detect(np.zeros((480, 640, 3), np.uint8)); "
            "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_detections_agree_across_the_score_threshold_but_not_on_another_box():
    from leukodx.smear.detector import detections_agree

    def run(score, x0=10.0, label=1):
        return {"boxes": np.array([[x0, 10, 50, 50], [100, 100, 140, 140]], np.float32), "labels": np.array([label, 0]),
                "scores": np.array([score, 0.9], np.float32), "features": np.ones(4)}

    assert detections_agree(run(0.3004), run(0.2998))  # one side just below the threshold: the same box
    assert not detections_agree(run(0.8), run(0.8, x0=12.0))  # moved by 2 px
    assert not detections_agree(run(0.8), run(0.8, label=2))
    assert not detections_agree(run(0.8), run(0.79))
    assert detections_agree(run(0.1), run(0.2))  # both below the threshold: not compared
