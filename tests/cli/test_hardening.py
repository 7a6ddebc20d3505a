"""Issue 13, items 4-6 and 8-10, each from its reproduction: outputs never collide or go stale, caches
follow content, expression inputs are checked, interrupts keep what was finished, memory stays bounded."""

import json
import logging
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukodx.cli.app import main
from leukodx.data.images import list_images, read_image


def _leukodx(*args, env=None):
    return subprocess.run([sys.executable, "-m", "leukodx", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def wbc_cell(data_root):
    from leukodx.smear.segmentation import wbc_seg_items

    return wbc_seg_items("wbc-seg-1", data_root)[0]["image"]


# --- item 5: name collisions and stale batch files ---------------------------------------------------

def test_segment_keeps_one_mask_per_input_when_stems_collide(wbc_cell, tmp_path, capsys):
    rgb = read_image(wbc_cell)
    src = tmp_path / "in"
    src.mkdir()
    for ext in ("jpg", "bmp", "webp", "png"):
        Image.fromarray(rgb).save(src / f"good.{ext}")
    assert main(["segment", str(src), "-o", str(tmp_path / "out")]) == 0
    areas = pd.read_csv(tmp_path / "out" / "areas.csv")
    masks = sorted(p.name for p in (tmp_path / "out").glob("*.mask.png"))
    assert len(areas) == 4 and len(masks) == 4 and sorted(areas["mask"]) == masks
    assert len(set(areas["mask"])) == 4


def test_detect_field_named_summary_does_not_overwrite_the_batch_summary(tmp_path, capsys):
    from leukodx.data.registry import load_dataset

    bccd = load_dataset("bccd")
    rec = bccd.records[bccd.splits["test"][0]]
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(bccd.root / rec["path"], src / "summary.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "cells.csv").write_text("stale,from,an,old,run\n")
    (out / "summary.json").write_text('{"stale": true}')
    assert main(["detect", str(src), "-o", str(out), "--no-overlay"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_fields"] == 1 and summary["complete"] is True and "stale" not in summary
    field = json.loads((out / "summary-2.json").read_text())
    assert field["outputs"]["json"] == "summary-2.json" and field["field"] == str(src / "summary.jpg")
    assert summary["summary"]["counts"] is not None  # the field was counted, so cells.csv is this run's
    assert (out / "cells.csv").read_text().startswith("field,kind,")


def test_interrupted_detect_writes_the_summary_of_what_it_finished(tmp_path, capsys, monkeypatch):
    from leukodx.data.registry import load_dataset
    from leukodx.smear.pipeline import SmearAnalyzer

    bccd = load_dataset("bccd")
    src = tmp_path / "in"
    src.mkdir()
    for i in bccd.splits["test"][:3]:
        shutil.copy(bccd.root / bccd.records[i]["path"], src / Path(bccd.records[i]["path"]).name)
    real, calls = SmearAnalyzer.analyze, []

    def stop_on_second(self, rgb, name=""):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, rgb, name)

    monkeypatch.setattr(SmearAnalyzer, "analyze", stop_on_second)
    out = tmp_path / "out"
    assert main(["detect", str(src), "-o", str(out), "--no-overlay"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"error: interrupted; 1 of 3 fields written to {out} "
                                            "(rerun with --resume to finish)")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["n_fields"] == 1
    assert not (out / "cells.csv").exists()  # never an output that looks complete

    # other options than the interrupted run's: refused, and the folder left as it was
    assert main(["detect", str(src), "-o", str(out), "--no-overlay", "--resume", "--pixel-scale", "1.5"]) == 2
    assert "pixel_scale" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["n_fields"] == 1

    monkeypatch.setattr(SmearAnalyzer, "analyze", lambda self, rgb, name="": calls.append(name) or real(self, rgb, name))
    finished = calls[0]  # the field done before the interrupt
    calls.clear()
    assert main(["detect", str(src), "-o", str(out), "--no-overlay", "--resume"]) == 0
    assert len(calls) == 2 and finished not in calls  # the finished field is not redone
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["complete"] is True and resumed["n_fields"] == 3
    whole = tmp_path / "whole"
    assert main(["detect", str(src), "-o", str(whole), "--no-overlay"]) == 0
    uninterrupted = json.loads((whole / "summary.json").read_text())
    assert resumed["summary"] == uninterrupted["summary"]
    assert (out / "cells.csv").read_text() == (whole / "cells.csv").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in whole.iterdir())


# --- item 9: folders with unreadable sub-folders or other files --------------------------------------

def test_unreadable_subfolder_is_reported_and_other_files_mentioned(real_jpeg, tmp_path, monkeypatch, caplog):
    (tmp_path / "a").mkdir()
    (tmp_path / "locked").mkdir()
    shutil.copy(real_jpeg, tmp_path / "a" / "x.jpg")
    shutil.copy(real_jpeg, tmp_path / "locked" / "y.jpg")
    (tmp_path / "notes.txt").write_text("x")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    errors = []
    with caplog.at_level(logging.WARNING, logger="leukodx"):
        found = list_images([tmp_path], errors)
    assert found == [tmp_path / "a" / "x.jpg"]
    assert errors == [{"input": str(tmp_path / "locked"),
                       "error": f"{tmp_path / 'locked'}: folder cannot be read (permission denied); its images "
                                "are left out"}]
    assert "1 file(s) that are not images skipped (.txt x1)" in caplog.text


def test_symlink_loop_in_a_folder_is_walked_once(real_jpeg, tmp_path):
    (tmp_path / "sub").mkdir()
    shutil.copy(real_jpeg, tmp_path / "sub" / "x.jpg")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    assert list_images([tmp_path]) == [tmp_path / "sub" / "x.jpg"]


# --- item 6: caches keyed by content -----------------------------------------------------------------

def test_array_cache_and_audit_follow_an_image_replaced_under_the_same_name(pbc_folder, tmp_path):
    from leukodx.data.cache import cached_arrays
    from leukodx.data.folder import index_image_folder
    from leukodx.data.leakage import audit
    from leukodx.preprocessing.transforms import Preprocess

    root = tmp_path / "ds"
    shutil.copytree(pbc_folder, root)
    index = index_image_folder(root)
    pre = Preprocess(size=32)
    first = cached_arrays(index, pre).copy()
    pairs_before = audit(index).n_pairs
    # replace image 0 by a copy of image 1 (same name, same mtime kept): the cache must not answer
    target, donor = index.abspath(0), index.abspath(1)
    stamp = target.stat()
    shutil.copy(donor, target)
    os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    again = cached_arrays(index_image_folder(root), pre)
    assert np.array_equal(again[0], again[1]) and not np.array_equal(again[0], first[0])
    assert audit(index_image_folder(root)).n_pairs == pairs_before + 1


def test_unreadable_images_are_never_paired_in_the_audit(pbc_folder, tmp_path):
    from leukodx.data.folder import index_image_folder
    from leukodx.data.leakage import audit

    root = tmp_path / "ds"
    shutil.copytree(pbc_folder, root)
    index = index_image_folder(root)
    pairs_before = audit(index).n_pairs
    for i in (0, 5, 9):  # three unreadable files used to hash to 0 and pair with each other
        index.abspath(i).write_bytes(b"not an image")
    report = audit(index_image_folder(root))
    assert report.n_pairs <= pairs_before and sorted(report.unreadable) == sorted(index.paths[i] for i in (0, 5, 9))


# --- item 4: a cache folder that cannot be written ---------------------------------------------------

def test_unwritable_cache_folder_is_a_warning_not_a_failure(real_jpeg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    out = tmp_path / "p.csv"
    proc = _leukodx("predict", real_jpeg, "-o", out, "--backend", "onnx", "--precision", "fp32",
                    env={"LEUKODX_CACHE": str(blocker / "c")})
    assert proc.returncode == 0, proc.stderr
    assert "cache folder cannot be written" in proc.stderr and "Traceback" not in proc.stderr
    assert len(pd.read_csv(out)) == 1


# --- item 8: expression inputs -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def golub_matrix(data_root, tmp_path_factory):
    """Golub's independent set as a plain genes x samples CSV."""
    raw = pd.read_csv(data_root / "golub" / "data_set_ALL_AML_independent.csv")
    cols = [c for c in raw.columns if not c.startswith("call") and c != "Gene Description"]
    return raw[cols].set_index("Gene Accession Number").astype(float)


@pytest.mark.parametrize("case, expected", [
    ("log2", "values are on another scale than training"),
    ("x1000", "values are on another scale than training"),
    ("inf", "infinite value at gene"),
    ("no samples", "no sample columns"),
    ("30 of 50 genes", "shares 30 of the model's 50 genes; at least 40 are needed"),
])
def test_expression_matrix_problems_are_refused(golub_matrix, tmp_path, case, expected):
    from leukodx.omics.bundle import ExpressionModel

    m = golub_matrix.copy()
    if case == "log2":
        m = np.log2(m.clip(lower=1))
    elif case == "x1000":
        m = m * 1000
    elif case == "inf":
        m.iloc[3, 2] = np.inf
    elif case == "no samples":
        m = m.iloc[:, :0]
    else:
        m = m.drop(index=ExpressionModel.load().genes[:20])
    m.to_csv(tmp_path / "m.csv")
    proc = _leukodx("expression", "predict", tmp_path / "m.csv", "-o", tmp_path / "p.csv")
    assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


def test_golubs_own_independent_csv_is_read(data_root, tmp_path):
    proc = _leukodx("expression", "predict", data_root / "golub" / "data_set_ALL_AML_independent.csv",
                    "-o", tmp_path / "p.csv")
    assert proc.returncode == 0, proc.stderr
    pred = pd.read_csv(tmp_path / "p.csv", dtype={"sample": str})
    labels = pd.read_csv(data_root / "golub" / "actual.csv", dtype={"patient": str}).set_index("patient")["cancer"]
    assert len(pred) == 34 and (pred["prediction"] == labels.loc[pred["sample"]].to_numpy()).mean() > 0.85


# --- item 10: memory of diagnose --kind fields and of segment on very large images -------------------

def test_diagnose_fields_holds_one_decoded_field_at_a_time(aria_folder, tmp_path):
    from leukodx.diagnosis.case import diagnose

    src = next(Path(aria_folder).rglob("*.jpg"))
    big = read_image(src)
    big = np.asarray(Image.fromarray(big).resize((3200, 3200)))  # 30 MB decoded
    for i in range(8):
        Image.fromarray(big).save(tmp_path / f"f{i}.png")
    one_field = big.nbytes
    tracemalloc.start()
    try:
        result = diagnose([tmp_path], kind="fields", smear=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["n_images"] == 8
    assert peak < 4 * one_field  # the eight decoded fields together would be 8x; one plus transients < 4x


def test_segment_reads_a_huge_image_reduced_and_writes_a_full_size_mask(wbc_cell, tmp_path):
    from leukodx.smear.segmentation import load_segmenter, segment_files

    rgb = read_image(wbc_cell)
    side = 6000
    Image.fromarray(rgb).resize((side, side)).save(tmp_path / "huge.jpg", quality=90)
    tracemalloc.start()
    try:
        done, errors, _ = segment_files([tmp_path / "huge.jpg"], tmp_path / "out", load_segmenter("wbc-seg-unet"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert done == 1 and not errors
    assert peak < side * side * 3  # less than one full-size RGB copy (the old path held several)
    with Image.open(tmp_path / "out" / "huge.mask.png") as mask:
        assert mask.size == (side, side)
    areas = pd.read_csv(tmp_path / "out" / "areas.csv")
    assert 0 < areas["nucleus_px"][0] < side * side


def test_interrupted_segment_keeps_the_areas_of_finished_images(wbc_cell, tmp_path, capsys, monkeypatch):
    from leukodx.smear.segmentation import Segmenter

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        shutil.copy(wbc_cell, src / f"c{i}{wbc_cell.suffix}")
    real, calls = Segmenter.predict_with_features, []

    def stop_on_third(self, images, batch=16):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, images, batch)

    monkeypatch.setattr(Segmenter, "predict_with_features", stop_on_third)
    out = tmp_path / "out"
    assert main(["segment", str(src), "-o", str(out)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: interrupted; 2 of 3 images written to {out}"
    assert len(pd.read_csv(out / "areas.csv")) == 2 and len(list(out.glob("*.mask.png"))) == 2


def test_interrupted_flow_readout_writes_the_files_read(data_root, tmp_path, capsys, monkeypatch):
    import leukodx.cytometry.readout as ro

    upn = data_root / "flow" / "tidytof" / "ddpr" / "UPN1_Basal.fcs"
    real, calls = ro.readout, []

    def stop_on_second(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(ro, "readout", stop_on_second)
    out = tmp_path / "r.json"
    assert main(["flow", "readout", str(upn), str(upn), str(upn), "-o", str(out), "--no-refit-missing"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: interrupted; 1 of 3 files written to {out}"
    result = json.loads(out.read_text())
    assert result["interrupted"] is True and len(result["results"]) == 1


@pytest.mark.parametrize("value", ["0", "-5", "200000"])
def test_bootstrap_count_outside_its_range_is_refused_before_any_work(value, tmp_path):
    proc = _leukodx("evaluate", "--dataset", "all-aria", "--n-boot", value, "-o", tmp_path / "e.json")
    assert proc.returncode == 2 and "--n-boot" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "e.json").exists()


# --- diagnose streams its case in chunks and resumes ----------------------------------------------

def _without_dates(summary: dict) -> dict:
    """A case's summary less what tells one run from another (dates, the command line, output paths)."""
    return {k: v for k, v in summary.items() if k not in ("created", "outputs", "provenance")}


def test_interrupted_diagnose_resumes_without_redoing_finished_images(pbc_folder, tmp_path, capsys, monkeypatch):
    from leukodx.diagnosis import case
    from leukodx.inference.classifier import Classifier

    monkeypatch.setattr(case, "CASE_CHUNK", 8)  # 32 cells: four chunks
    real, calls = Classifier.score_arrays, []

    def stop_on_third(self, arrays, batch_size=64):
        calls.append(len(arrays))
        if calls.count(8) == 3:  # the third chunk (loading checks the model on one image)
            raise KeyboardInterrupt
        return real(self, arrays, batch_size)

    monkeypatch.setattr(Classifier, "score_arrays", stop_on_third)
    out = tmp_path / "out"
    assert main(["diagnose", str(pbc_folder), "--kind", "cells", "-o", str(out)]) == 130
    partial = out / "predictions.csv.partial.jsonl"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: interrupted; 16 of 32 images written to {partial} (rerun with --resume to finish)")
    assert sorted(p.name for p in out.iterdir()) == [partial.name]  # never an output that looks complete

    monkeypatch.setattr(Classifier, "score_arrays", lambda self, a, batch_size=64: calls.append(len(a)) or real(self, a, batch_size))
    # other options than the interrupted run's: refused, and the folder left as it was
    assert main(["diagnose", str(pbc_folder), "--kind", "cells", "-o", str(out), "--resume", "--coverage", "0.95"]) == 2
    assert "coverage" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == [partial.name]

    calls.clear()
    assert main(["diagnose", str(pbc_folder), "--kind", "cells", "-o", str(out), "--resume"]) == 0
    assert calls.count(8) == 2 and sum(calls) - calls.count(1) == 16  # only the two chunks not finished before
    whole = tmp_path / "whole"
    assert main(["diagnose", str(pbc_folder), "--kind", "cells", "-o", str(whole)]) == 0
    resumed, uninterrupted = (json.loads((d / "summary.json").read_text()) for d in (out, whole))
    assert resumed["n_images"] == 32 and _without_dates(resumed) == _without_dates(uninterrupted)
    assert (out / "predictions.csv").read_text() == (whole / "predictions.csv").read_text()
    date = uninterrupted["created"]
    assert (out / "report.html").read_text().replace(resumed["created"], date) == (whole / "report.html").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "report.html", "summary.json"]


def test_diagnose_holds_one_chunk_of_images_and_gives_what_the_whole_case_gives(pbc_folder, tmp_path, monkeypatch):
    """Chunk by chunk: no more than one chunk's images are decoded before its rows are written, and the
    rows, summary and report equal those of the case in one chunk (AdaBN's statistics and the patient
    model take every image)."""
    from leukodx._rowfile import RowFile
    from leukodx.diagnosis.case import analyse_case
    from leukodx.inference.classifier import load_model
    from leukodx.preprocessing.transforms import Preprocess

    clf = load_model("wbc-multisite", backend="torch")
    decoded, held = [0], []
    real_call, real_append = Preprocess.__call__, RowFile.append

    def counting(self, rgb):
        decoded[0] += 1
        return real_call(self, rgb)

    def append(self, rows, errors=(), extras=None):
        held.append(decoded[0] - sum(1 for _ in self.entries("row")))  # decoded but not yet written
        return real_append(self, rows, errors, extras)

    monkeypatch.setattr(Preprocess, "__call__", counting)
    monkeypatch.setattr(RowFile, "append", append)
    analyse_case([pbc_folder], tmp_path / "plain", kind="cells", model=clf, chunk=5).discard()
    assert held == [5] * 6 + [2]  # 32 cells, 5 at a time, each chunk written before the next is decoded
    monkeypatch.setattr(RowFile, "append", real_append)
    small = analyse_case([pbc_folder], tmp_path / "small", kind="cells", model=clf, adapt_bn=True, chunk=5)
    whole = analyse_case([pbc_folder], tmp_path / "whole", kind="cells", model=clf, adapt_bn=True, chunk=64)
    assert [e["row"] for e in small.entries()] == [e["row"] for e in whole.entries()]
    assert _without_dates(small.result) == _without_dates(whole.result)
    assert small.result["model"]["test_time_adaptation"] == {"method": "AdaBN", "images": 32}
    small.write_outputs(), whole.write_outputs()
    assert ((tmp_path / "small" / "predictions.csv").read_text() == (tmp_path / "whole" / "predictions.csv").read_text())


def test_batchnorm_adaptation_from_chunks_equals_adaptation_from_the_array():
    import torch

    from leukodx.inference.classifier import load_model
    from leukodx.training.adaptation import adapt_batchnorm

    clf = load_model("wbc-multisite", backend="torch")
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (300, clf.preprocess.size, clf.preprocess.size, 3), dtype=np.uint8)
    whole = adapt_batchnorm(clf.net, arrays, clf.preprocess).state_dict()
    chunks = (arrays[a:b] for a, b in [(0, 7), (7, 7), (7, 200), (200, 201), (201, 300)])
    parts = adapt_batchnorm(clf.net, chunks, clf.preprocess).state_dict()
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    assert not torch.equal(whole[next(k for k in whole if k.endswith("running_mean"))],
                           clf.net.state_dict()[next(k for k in whole if k.endswith("running_mean"))])


def test_interrupted_evaluate_resumes_without_redoing_finished_images(pbc_folder, tmp_path, capsys, monkeypatch):
    from leukodx.inference import classifier as classifier_module
    from leukodx.inference.classifier import Classifier

    monkeypatch.setattr(classifier_module, "CHUNK", 8)  # 32 cells: four chunks
    real, calls = Classifier.score_arrays, []

    def stop_on_third(self, arrays, batch_size=64):
        calls.append(len(arrays))
        if calls.count(8) == 3:
            raise KeyboardInterrupt
        return real(self, arrays, batch_size)

    monkeypatch.setattr(Classifier, "score_arrays", stop_on_third)
    out = tmp_path / "r.json"
    args = ["evaluate", "--images", str(pbc_folder), "-o", str(out), "--no-report", "--n-boot", "50"]
    assert main(args) == 130
    partial = tmp_path / "r.json.partial.jsonl"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: interrupted; 16 of 32 images written to {partial} (rerun with --resume to finish)")
    assert not out.exists() and partial.exists()
    monkeypatch.setattr(Classifier, "score_arrays", lambda self, a, batch_size=64: calls.append(len(a)) or real(self, a, batch_size))
    assert main([*args, "--resume", "--backend", "torch"]) == 2  # another backend than the interrupted run's
    assert "backend" in capsys.readouterr().err and partial.exists()
    calls.clear()
    assert main([*args, "--resume"]) == 0
    assert calls.count(8) == 2 and not partial.exists()  # only the two chunks not finished before
    whole = tmp_path / "whole.json"
    assert main(["evaluate", "--images", str(pbc_folder), "-o", str(whole), "--no-report", "--n-boot", "50"]) == 0
    resumed, uninterrupted = (json.loads(p.read_text()) for p in (out, whole))
    assert resumed["n"] == 32 and resumed["metrics"] == uninterrupted["metrics"]
    assert resumed["roc_inputs"] == uninterrupted["roc_inputs"] and resumed["misclassified"] == uninterrupted["misclassified"]
    assert main([*args, "--resume"]) == 2 and "already complete" in capsys.readouterr().err
