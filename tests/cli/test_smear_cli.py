import json

import numpy as np
import pytest
import torch
from PIL import Image

from leukodx.cli.app import main


@pytest.fixture(scope="module")
def field_dir(tmp_path_factory):
    from leukodx.data.images import read_image
    from leukodx.data.registry import load_dataset

    bccd = load_dataset("bccd")
    d = tmp_path_factory.mktemp("fields")
    for i in bccd.splits["test"][:2]:
        rec = bccd.records[i]
        Image.fromarray(read_image(bccd.root / rec["path"])).save(d / f"{rec['id']}.png")
    return d


def test_detect_writes_results_and_reports_bad_files(field_dir, tmp_path, capsys):
    (field_dir / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    try:
        assert main(["detect", str(field_dir), "-o", str(tmp_path / "out")]) == 0
    finally:
        (field_dir / "zz-broken.jpg").unlink()
    captured = capsys.readouterr()
    assert "zz-broken.jpg" in captured.err and "2 field(s)" in captured.out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_fields"] == 2 and len(summary["errors"]) == 1


def test_detect_fails_when_nothing_is_readable(tmp_path, capsys):
    (tmp_path / "x.jpg").write_text("text")
    assert main(["detect", str(tmp_path / "x.jpg"), "-o", str(tmp_path / "out")]) == 2
    assert main(["detect", str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "out")]) == 2


def test_detect_refuses_a_model_that_does_not_type_white_cells(field_dir, tmp_path, capsys):
    """`detect --model all-stage` had typed white cells as "Benign": a smear-field model is refused."""
    assert main(["detect", str(field_dir), "--model", "all-stage", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "all-stage" in err and "not white cells" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_segment_on_an_empty_folder_says_nothing_was_written(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: no image segmented" in err and "nothing written" in err and "written to" not in err


@pytest.mark.slow
def test_evaluate_detection_writes_the_promised_keys(tmp_path):
    out = tmp_path / "r.json"
    assert main(["evaluate-detection", "--dataset", "bccd", "--split", "test", "--output", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["ap50"]) == set(r["ap50_95"]) == {"RBC", "WBC", "Platelets"}
    assert all(0 <= v <= 1 for v in r["ap50"].values())
    assert r["ap50"]["WBC"] >= r["ap50_95"]["WBC"] and 0 <= r["wbc_count_mae"]


def test_evaluate_detection_bad_arguments(tmp_path, capsys):
    assert main(["evaluate-detection", "-d", "bccd", "--split", "nope", "-o", str(tmp_path / "r.json")]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
    assert main(["evaluate-detection", "-d", "pbc", "-o", str(tmp_path / "r.json")]) == 2
    assert main(["evaluate-detection", "-d", "bccd", "--method", "magic", "-o", str(tmp_path / "r.json")]) == 2
    assert not (tmp_path / "r.json").exists()


def test_segment_and_evaluate_segmentation(tmp_path, capsys):
    from leukodx.data.registry import load_dataset

    wbc = load_dataset("wbc-seg-2")
    src = tmp_path / "cells"
    src.mkdir()
    for p in wbc.paths[:2]:
        (src / p.split("/")[-1]).write_bytes((wbc.root / p).read_bytes())
    assert main(["segment", str(src), "-o", str(tmp_path / "masks")]) == 0
    masks = sorted((tmp_path / "masks").glob("*.mask.png"))
    assert len(masks) == 2 and set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 128, 255}
    out = tmp_path / "seg.json"
    assert main(["evaluate-segmentation", "-d", "wbc-seg-1", "--split", "test", "-o", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["n_images"] == 45 and 0 <= r["nucleus"]["dice"] <= 1 and r["within_dataset"] is True
    assert main(["evaluate-segmentation", "-d", "bccd", "-o", str(out)]) == 2
    assert main(["segment", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "m2")]) == 2


@pytest.mark.slow
def test_train_detector_cli_writes_a_bundle_and_resumes(tmp_path):
    out = tmp_path / "det"
    args = ["train-detector", "-o", str(out), "--epochs", "2", "--max-images", "3", "-q"]
    assert main(args) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["task"] == "detection" and card["name"] == "det" and card["metrics"]["test"]["n_fields"] == 3
    assert card["provenance"]["argv"] == "leukodx " + " ".join(args)
    assert [h["epoch"] for h in card["training"]["history"]] == [0, 1]
    assert (out / "work" / "checkpoint" / "state.json").exists()
    # resuming a finished run trains nothing more and writes the same weights (tensor for tensor; the file's
    # bytes, and so its sha256, are not always identical across two writes of equal tensors)
    from safetensors.torch import load_file

    first = load_file(str(out / "model.safetensors"))
    assert main(args + ["--resume"]) == 0
    again = load_file(str(out / "model.safetensors"))
    assert sorted(first) == sorted(again) and all(torch.equal(first[k], again[k]) for k in first)
    assert json.loads((out / "card.json").read_text())["training"]["history"] == card["training"]["history"]


@pytest.mark.slow
def test_train_segmenter_cli_writes_a_bundle(tmp_path):
    out = tmp_path / "seg"
    assert main(["train-segmenter", "-o", str(out), "--steps", "4", "--max-images", "6", "--batch-size", "4", "-q"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["task"] == "segmentation" and card["data"]["datasets"] == ["wbc-seg-1"]
    assert set(card["metrics"]["test"]) == {"wbc-seg-1", "wbc-seg-2"}
    assert card["metrics"]["test"]["wbc-seg-1"]["n_images"] == 6
    import leukodx

    assert leukodx.load(out).config.size == 128
