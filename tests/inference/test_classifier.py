"""The Python API: load a bundle, predict files, folders and arrays, ONNX parity, bad inputs in a batch."""

from __future__ import annotations

import numpy as np
import pytest

import leukodx
from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
from leukodx.inference.classifier import Classifier
from leukodx.inference.onnx_backend import OnnxSession, export_onnx
from leukodx.preprocessing.transforms import normalize_batch


def test_predict_files_folders_and_arrays(tiny_aria_model, aria_folder):
    from leukodx.inference.classifier import DECODE_FACTOR

    clf = leukodx.load_model(tiny_aria_model)
    files = sorted((aria_folder / "early").iterdir())[:2]
    # a path is decoded reduced (JPEG draft mode) to about DECODE_FACTOR x the model's input side
    arr = read_image(files[0], max_side=clf.preprocess.size * DECODE_FACTOR)
    full = read_image(files[0])
    result = clf.predict([*files, aria_folder / "pro", arr, full])
    assert len(result.rows) == 2 + 6 + 2 and not result.errors
    row = result.rows[0]
    assert row["top_class"] in clf.classes
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert row["probability"] == max(row["probabilities"].values())
    # the same pixels as a path and as an array give the same probabilities; the full-size decode nearly so
    assert result.probabilities[0] == pytest.approx(result.probabilities[-2], abs=1e-6)
    assert result.probabilities[0] == pytest.approx(result.probabilities[-1], abs=0.02)


def test_bad_files_in_a_batch_are_reported_and_the_rest_predicted(tiny_aria_model, aria_folder, tmp_path):
    (tmp_path / "broken.jpg").write_text("not an image")
    (tmp_path / "dot.png").write_bytes(b"")
    clf = leukodx.load_model(tiny_aria_model)
    good = sorted((aria_folder / "pre").iterdir())[0]
    result = clf.predict([good, tmp_path / "broken.jpg", tmp_path / "dot.png", tmp_path / "missing.jpg"])
    assert len(result.rows) == 1
    assert [e["input"].split("/")[-1] for e in result.errors] == ["missing.jpg", "broken.jpg", "dot.png"]
    assert all(e["error"].count("\n") == 0 for e in result.errors)


def test_onnx_runtime_matches_pytorch_logits(tiny_pbc_model, pbc_folder, tmp_path):
    torch_clf = leukodx.load_model(tiny_pbc_model, backend="torch")
    onnx_clf = leukodx.load_model(tiny_pbc_model, backend="onnx")
    _, arrays, _ = torch_clf.load_inputs([pbc_folder])
    diff = np.abs(torch_clf.logits(arrays) - onnx_clf.logits(arrays)).max()
    assert diff < 1e-4
    path = export_onnx(torch_clf.net, torch_clf.preprocess.size, tmp_path / "m.onnx")
    direct = OnnxSession(path)(normalize_batch(arrays[:3], torch_clf.preprocess))
    assert np.abs(direct - torch_clf.logits(arrays[:3])).max() < 1e-4


def test_an_onnx_file_without_the_features_output_still_predicts(tiny_pbc_model, pbc_folder, tmp_path):
    """A logits-only ONNX file (exported without ``features``) and no statistics: probabilities, no
    OOD scores and no embedding, as before either existed."""
    clf = leukodx.load_model(tiny_pbc_model, backend="onnx")
    _, arrays, _ = clf.load_inputs([pbc_folder])
    session = OnnxSession(export_onnx(clf.net, clf.preprocess.size, tmp_path / "plain.onnx"))
    session.outputs = lambda x: (session(x), None)
    clf._onnx, clf.reliability = session, None
    scored = clf.score_arrays(arrays)
    assert scored.proba.shape == (len(arrays), len(clf.classes)) and scored.ood_scores is None
    assert scored.embedding is None
    assert len(clf.predict(arrays).rows) == len(arrays)


def test_auto_backend_is_onnx_on_cpu(tiny_pbc_model):
    assert leukodx.load_model(tiny_pbc_model).backend == "onnx"
    with pytest.raises(ValueError, match="backend"):
        Classifier.load(tiny_pbc_model, backend="tpu")


def test_temperature_from_the_card_is_applied(tiny_pbc_model, pbc_folder):
    clf = leukodx.load_model(tiny_pbc_model, backend="torch")
    _, arrays, _ = clf.load_inputs([pbc_folder / "basophil"])
    logits = clf.logits(arrays)
    clf.temperature = 2.0
    p = clf.predict_arrays(arrays)
    z = logits / 2.0
    expected = np.exp(z - z.max(1, keepdims=True))
    assert p == pytest.approx(expected / expected.sum(1, keepdims=True), abs=1e-6)


def test_pil_images_hwc_batches_and_nchw_tensors_give_the_same_answer(pbc_folder):
    import torch
    from PIL import Image

    import leukodx
    from leukodx.data.images import read_image

    clf = leukodx.load("pbc-celltype", backend="torch")
    path = sorted((pbc_folder / "neutrophil").iterdir())[0]
    rgb = read_image(path)
    reference = clf.predict([path]).rows[0]["probabilities"]
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    inputs = [Image.open(path), rgb, np.stack([rgb, rgb]), tensor, tensor[None].repeat(2, 1, 1, 1)]
    result = clf.predict(inputs)
    assert not result.errors and len(result.rows) == 7
    for row in result.rows:
        assert row["probabilities"] == pytest.approx(reference, abs=1e-6)
    frame = result.to_pandas()
    assert list(frame.columns[:4]) == ["input", "top_class", "probability", "unsure"]
    assert len(frame) == 7 and frame[[f"p_{c}" for c in clf.classes]].sum(axis=1).round(6).eq(1).all()


def test_ambiguous_layouts_are_refused_not_guessed():
    import torch

    import leukodx

    clf = leukodx.load("pbc-celltype", backend="torch")
    result = clf.predict([torch.zeros(3, 64, 3), np.zeros((3, 64, 64), dtype=np.uint8)])
    assert not result.rows and len(result.errors) == 2
    assert "ambiguous" in result.errors[0]["error"] and "channels-first" in result.errors[1]["error"]


def test_test_time_batchnorm_adaptation_is_opt_in_and_needs_a_batch(tmp_path):
    import leukodx
    from leukodx.data.registry import load_dataset
    from leukodx.errors import InvalidInputError

    clf = leukodx.load("pbc-celltype", backend="torch")
    index = load_dataset("wbc-seg-1")  # another lab's cells
    paths = [index.abspath(i) for i in range(40)]
    plain = clf.predict(paths).probabilities
    adapted = clf.predict(paths, adapt_bn=True).probabilities
    assert plain.shape == adapted.shape and not np.allclose(plain, adapted)
    np.testing.assert_allclose(clf.predict(paths).probabilities, plain)  # the loaded model is left unchanged
    with pytest.raises(InvalidInputError, match="at least 32 images"):
        clf.predict(paths[:5], adapt_bn=True)
    # streamed (statistics from a first pass over the chunks) = adapted on every image at once
    _, arrays, _ = clf.load_inputs(paths)
    whole = clf.adapted_to(arrays).predict_arrays(arrays)
    np.testing.assert_allclose(adapted, whole, rtol=0, atol=1e-6)


def test_a_tampered_onnx_cache_file_is_not_trusted(pbc_folder, caplog):
    """Found by an attacker's review: a cached ONNX file with one bias raised had turned a neutrophil
    into a basophil while the output still named the bundle's sha256. The cached export must answer a
    random probe as the verified network does, else it is rebuilt; the digest of what ran is reported."""
    import onnx
    from onnx import numpy_helper

    from leukodx._hashing import sha256_file
    from leukodx.inference.classifier import load_model

    images = sorted((pbc_folder / "neutrophil").iterdir())
    clean = load_model("pbc-celltype", backend="onnx", precision="fp32")
    expected = clean.predict(images).probabilities
    path = clean.onnx_path()
    assert clean.onnx_sha256 == sha256_file(path)
    model = onnx.load(str(path))
    last = [t for t in model.graph.initializer if len(t.dims) == 1][-1]  # the output layer's bias
    bias = numpy_helper.to_array(last).copy()
    bias[clean.classes.index("basophil")] += 30.0
    last.CopyFrom(numpy_helper.from_array(bias, last.name))
    onnx.save(model, str(path))
    tampered_digest = sha256_file(path)
    with caplog.at_level("WARNING"):
        again = load_model("pbc-celltype", backend="onnx", precision="fp32")
    assert "does not reproduce" in caplog.text
    assert again.onnx_sha256 == sha256_file(path) != tampered_digest
    assert np.allclose(again.predict(images).probabilities, expected, atol=1e-5)


def test_int8_is_the_cpu_default_where_the_card_allows_it_and_is_checked(tmp_path):
    """The shipped int8 file runs by default (its card measured <= 0.5 point lost), answers like fp32 on
    real cells, has its own OOD statistics, and a replaced int8 file is refused."""
    import shutil

    from leukodx.errors import IntegrityError
    from leukodx.inference.classifier import load_model
    from leukodx.models.bundle import resolve_bundle

    int8 = load_model("pbc-celltype")
    fp32 = load_model("pbc-celltype", precision="fp32")
    record = int8.card["int8"]
    assert int8.precision == "int8" and fp32.precision == "fp32" and record["default_on_cpu"]
    assert record["test"]["drop_points"] <= 0.5 and record["test"]["n"] > 1000
    assert int8.onnx_sha256 == record["sha256"] and int8.reliability is not fp32.reliability
    pbc = load_dataset("pbc")
    images = [pbc.abspath(i) for i in range(0, 2000, 50)]
    a, b = int8.predict(images), fp32.predict(images)
    assert np.mean([x["top_class"] == y["top_class"] for x, y in zip(a.rows, b.rows)]) >= 0.9
    assert np.abs(a.probabilities - b.probabilities).max() < 0.2
    with pytest.raises(ValueError, match="int8 runs on ONNX Runtime"):
        load_model("pbc-celltype", backend="torch", precision="int8")
    copy = tmp_path / "bundle"
    shutil.copytree(resolve_bundle("pbc-celltype"), copy)
    with open(copy / record["file"], "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(IntegrityError, match="does not match its card"):
        load_model(copy)
    assert load_model(copy, precision="fp32").precision == "fp32"


def test_device_choice(monkeypatch):
    import leukodx.models.device as device
    from leukodx.inference.classifier import load_model

    monkeypatch.setattr(device, "cuda_present", lambda: False)
    assert load_model("pbc-celltype").device == "cpu"
    torch_cpu = load_model("pbc-celltype", backend="torch", device="cpu")
    assert torch_cpu.device == "cpu" and next(torch_cpu.net.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device here"):
        load_model("pbc-celltype", device="cuda")
    with pytest.raises(ValueError, match="--device 'tpu'"):
        load_model("pbc-celltype", device="tpu")


def test_detector_and_segmenter_take_the_same_device_rule(monkeypatch, real_jpeg, tmp_path):
    """auto is the CPU where no GPU is present, cuda without one is one line (CLI exit 2), and the CPU
    run answers as before."""
    import leukodx.models.device as device
    from leukodx.cli.app import main
    from leukodx.smear.detector import load_detector
    from leukodx.smear.segmentation import load_segmenter

    monkeypatch.setattr(device, "cuda_present", lambda: False)
    det, seg = load_detector(backend="torch"), load_segmenter()
    assert det.device == seg.device == "cpu" and next(det.net.parameters()).device.type == "cpu"
    assert load_detector().backend == "onnx"  # auto on the CPU: ONNX Runtime
    with pytest.raises(ValueError, match="expected one of auto, onnx, torch"):
        load_detector(backend="tensorrt")
    with pytest.raises(ValueError, match="no CUDA device here"):
        load_segmenter(device="cuda")
    assert main(["detect", str(real_jpeg), "-o", str(tmp_path / "d"), "--device", "cuda"]) == 2
    assert main(["segment", str(real_jpeg), "-o", str(tmp_path / "s"), "--device", "tpu"]) == 2
    assert not (tmp_path / "d" / "summary.json").exists()
    assert main(["segment", str(real_jpeg), "-o", str(tmp_path / "s"), "--device", "cpu"]) == 0
