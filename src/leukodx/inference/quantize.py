"""int8 for CPU inference: static quantization of a classifier's ONNX export with ONNX Runtime
(QDQ format, int8 per-channel weights, uint8 activations: the VNNI path on x86), calibrated on the
model's own training images, and measured against fp32 on its test images before it is used.

``quantize_bundle`` writes ``model.int8.onnx`` into the bundle and records in its card the file's
sha256, the calibration images and the test accuracy of both precisions (with the agreement of
their calls and of their out-of-distribution flags); the int8 file becomes the model's CPU default
only where the accuracy drop is at most ``MAX_DROP_POINTS``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from leukodx import _atomic
from leukodx._hashing import sha256_file
from leukodx._versions import provenance
from leukodx.errors import InvalidInputError
from leukodx.preprocessing.transforms import normalize_batch

INT8_FILE = "model.int8.onnx"
#: the int8 network's own out-of-distribution statistics: its features are not the fp32 network's
INT8_RELIABILITY_FILE = "reliability.int8.safetensors"
#: the int8 file is the CPU default only when its test accuracy is within this many points of fp32
MAX_DROP_POINTS = 0.5
#: calibration images drawn from the training side (seeded), enough for stable activation ranges
CALIBRATION_IMAGES = 512


def quantize_onnx(fp32_path: Path, out_path: Path, calibration: np.ndarray, preprocess) -> Path:
    """Static int8 quantization of ``fp32_path`` calibrated on ``calibration`` (preprocessed uint8)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": normalize_batch(calibration[s:s + 64], preprocess)}
                                 for s in range(0, len(calibration), 64)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="leukodx-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with _atomic.atomic_path(out_path) as part:
            quantize_static(str(prepared), str(part), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    return out_path


def quantize_bundle(model: str | os.PathLike, data_root: str | os.PathLike | None = None, seed: int = 0) -> dict:
    """Quantize a classifier bundle, measure both precisions on its test images, record it in the card."""
    from leukodx.inference.classifier import Classifier
    from leukodx.inference.onnx_backend import OnnxSession
    from leukodx.models.bundle import CARD, read_card, resolve_bundle
    from leukodx.training.recipe import card_images

    directory = resolve_bundle(model, task="image-classification")
    clf = Classifier.load(directory, backend="onnx", precision="fp32")
    data = card_images(clf.card, directory, ("train", "val", "test"), data_root)
    train_x = data["train"][0]
    pick = np.sort(np.random.default_rng(seed).choice(len(train_x), size=min(CALIBRATION_IMAGES, len(train_x)),
                                                      replace=False))
    out = quantize_onnx(clf.onnx_path(), directory / INT8_FILE, train_x[pick], clf.preprocess)
    test_x, test_y = data["test"][:2]
    fp32 = clf.score_arrays(test_x)
    int8 = Classifier.load(directory, backend="onnx", precision="fp32")
    int8._onnx, int8.precision = OnnxSession(out), "int8"
    reliability = None
    if clf.reliability is not None:  # the int8 features get their own statistics, from the same images
        from leukodx.models.reliability import save_reliability
        from leukodx.training.calibration import fit_outputs_reliability

        def outputs(arrays: np.ndarray):
            parts = [int8.forward(arrays[s:s + 256]) for s in range(0, len(arrays), 256)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

        (x_tr, y_tr, g_tr), (x_va, y_va, g_va) = data["train"], data["val"]
        int8.reliability = fit_outputs_reliability(
            outputs, clf.reliability.pen_dim, clf.temperature, x_tr, y_tr, x_va, y_va, seed,
            {"int8": INT8_FILE, "provenance": provenance()}, g_tr, g_va, style_source=clf.style_source)
        reliability = {**int8.reliability.card_entry(save_reliability(directory, int8.reliability,
                                                                      INT8_RELIABILITY_FILE)),
                       "file": INT8_RELIABILITY_FILE}
    q = int8.score_arrays(test_x)
    acc32 = float(np.mean(fp32.proba.argmax(1) == test_y))
    acc8 = float(np.mean(q.proba.argmax(1) == test_y))
    drop = 100 * (acc32 - acc8)
    record = {"file": INT8_FILE, "sha256": sha256_file(out), "method": "ONNX Runtime static QDQ, per-channel int8 "
              "weights, uint8 activations, MinMax calibration",
              "calibration": {"side": "train", "images": int(len(pick)), "seed": seed},
              "test": {"n": int(len(test_y)), "accuracy_fp32": round(acc32, 4), "accuracy_int8": round(acc8, 4),
                       "drop_points": round(drop, 2),
                       "same_call": round(float(np.mean(fp32.proba.argmax(1) == q.proba.argmax(1))), 4)},
              "default_on_cpu": bool(drop <= MAX_DROP_POINTS and (clf.reliability is None or reliability is not None)),
              "max_drop_points": MAX_DROP_POINTS,
              **({"site_networks": "fp32: each training site's network (its batch-norm statistics) is not quantized; "
                                   "int8 runs the bundle's own network: the OOD check, which site an image looks "
                                   "like, and the probabilities of OOD images"} if clf.site else {}),
              "provenance": provenance()}
    if reliability is not None:
        flag32 = fp32.ood_scores > clf.reliability.threshold
        flag8 = q.ood_scores > int8.reliability.threshold
        record["reliability"] = reliability
        record["test"].update({"ood_rate_fp32": round(float(flag32.mean()), 4),
                               "ood_rate_int8": round(float(flag8.mean()), 4),
                               "same_ood_flag": round(float(np.mean(flag32 == flag8)), 4)})
    card = read_card(directory)
    card["int8"] = record
    _atomic.write_json(directory / CARD, card)
    return record


def int8_session(clf):
    """The bundle's int8 ONNX session, after checking the file against the sha256 in the card."""
    from leukodx.errors import IntegrityError
    from leukodx.inference.onnx_backend import OnnxSession

    record = clf.card.get("int8")
    if not record or clf.bundle_dir is None:
        raise InvalidInputError(f"{clf.name}: has no int8 model (make one with `leukodx export onnx -m {clf.name} "
                                "--int8`)")
    path = Path(clf.bundle_dir) / record["file"]
    if not path.is_file():
        raise InvalidInputError(f"{path}: the int8 model its card names is missing")
    digest = sha256_file(path)
    if digest != record["sha256"]:
        raise IntegrityError(f"{path}: sha256 {digest[:12]}... does not match its card; the file is corrupt or "
                             "was replaced")
    return OnnxSession(path)
