"""The smear pipeline with the bundled detector and cell-type model, on real BCCD fields."""

import json

import numpy as np
import pytest
from PIL import Image

from leukodx.errors import InvalidInputError
from leukodx.smear.pipeline import SmearAnalyzer, image_quality, render_overlay, square_crop, summarize_fields
from leukodx.smear.report import analyze_fields


@pytest.fixture(scope="module")
def analyzer():
    return SmearAnalyzer()


def _iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_finds_the_white_cell_of_a_real_field_and_scores_it(analyzer, bccd_field):
    rgb, rec = bccd_field
    result = analyzer.analyze(rgb, "field")
    white = [c for c in result["cells"] if c["kind"] == "WBC"]
    truth = rec["boxes"][rec["labels"] == 1][0]
    assert any(_iou(c["box"], truth) > 0.5 for c in white)
    assert result["counts"]["RBC"] > 3
    for c in white:
        assert c["cell_type"] in analyzer.classifier.classes
        assert 0 <= c["nucleus_fraction"] <= 1
        assert abs(sum(c["probabilities"].values()) - 1) < 1e-3
        assert 0 <= c["blast_probability"] <= 1 and c["blast_review"] == (c["blast_probability"] >= 0.3)
    assert sum(result["white_cell_types"].values()) == result["white_cells_typed"]


def test_a_large_field_is_tiled_and_counts_scale(analyzer, bccd_field):
    rgb, _ = bccd_field
    big = np.tile(rgb, (3, 4, 1))  # 1440 x 2560: over the one-pass limit? no: 3.7 Mpx, one pass
    bigger = np.tile(rgb, (5, 4, 1))  # 2400 x 2560 = 6.1 Mpx: tiled
    one = analyzer.analyze(rgb)["counts"]["WBC"]
    tiled = analyzer.analyze(bigger)["counts"]["WBC"]
    assert abs(tiled - 20 * one) <= 4  # each copy's white cell found once, seams or not
    assert analyzer.analyze(big)["counts"]["WBC"] >= 12 * one - 3


def test_empty_grey_dark_and_bright_fields_give_results_with_flags(analyzer, blank_field, bccd_field):
    # an empty slide has no red cell to measure: its scale is uncertain and nothing is counted
    unmeasured = analyzer.analyze(blank_field, "blank")
    assert unmeasured["counted"] is False and "counts" not in unmeasured
    assert unmeasured["scale"]["uncertain"] and any("not counted" in f for f in unmeasured["flags"])
    # at a given scale it is counted: nothing there
    empty = SmearAnalyzer(analyzer.detector, analyzer.classifier, pixel_scale=1.0).analyze(blank_field, "blank")
    assert empty["scale"]["source"] == "given: --pixel-scale" and empty["counts"]["WBC"] == 0
    assert sum(empty["counts"].values()) == 0 and any("no cells found" in f for f in empty["flags"])
    gray = np.repeat(bccd_field[0].mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    assert any("grayscale" in f for f in analyzer.analyze(gray)["flags"])
    assert any("dark" in f for f in image_quality((bccd_field[0] * 0.1).astype(np.uint8)))
    assert any("over-exposed" in f for f in image_quality(np.full((50, 50, 3), 250, np.uint8)))
    with pytest.raises(InvalidInputError, match="expected an"):
        analyzer.analyze(np.zeros((10, 10), np.uint8), "flat")
    with pytest.raises(InvalidInputError, match="pixel scale"):
        SmearAnalyzer(analyzer.detector, analyzer.classifier, pixel_scale=0)


def test_crop_is_padded_at_the_border_and_overlay_draws(bccd_field, analyzer):
    rgb, _ = bccd_field
    crop = square_crop(rgb, [0, 0, 50, 40], factor=2.0, fill=np.array([1, 2, 3], np.uint8))
    assert crop.shape == (100, 100, 3) and (crop[0, 0] == [1, 2, 3]).all()
    result = analyzer.analyze(rgb)
    im = render_overlay(rgb, result)
    assert im.size == (640, 480) and np.abs(np.asarray(im).astype(int) - rgb).sum() > 0
    case = summarize_fields([result, result])
    assert case["counts"]["WBC"] == 2 * result["counts"]["WBC"] and case["n_fields"] == 2


def test_batch_reports_bad_files_and_writes_every_output(tmp_path, bccd_field, analyzer):
    rgb, _ = bccd_field
    src = tmp_path / "case"
    src.mkdir()
    Image.fromarray(rgb).save(src / "a.jpg", quality=95)
    Image.fromarray(rgb).save(src / "b.png")
    (src / "broken.jpg").write_bytes((src / "a.jpg").read_bytes()[:2000])
    summary = analyze_fields([src], tmp_path / "out", detector=analyzer.detector, model=analyzer.classifier,
                             log=lambda m: None)
    assert summary["n_fields"] == 2 and len(summary["errors"]) == 1 and "broken.jpg" in summary["errors"][0]["input"]
    for name in ("a.json", "a.overlay.jpg", "b.json", "b.overlay.jpg", "cells.csv", "summary.json"):
        assert (tmp_path / "out" / name).exists(), name
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["detector"]["sha256"] == analyzer.detector.card["sha256"]
    rows = (tmp_path / "out" / "cells.csv").read_text().splitlines()
    assert len(rows) - 1 == sum(len(json.loads((tmp_path / "out" / f"{s}.json").read_text())["cells"]) for s in "ab")
    assert not list((tmp_path / "out").glob("*.part"))


def test_fields_like_the_detectors_pass_and_another_labs_are_flagged(analyzer, bccd_field):
    """Per-field OOD: a BCCD field passes; all-aria fields (another lab, stain and camera), at the scale
    the README once suggested, are flagged one by one and the case as a whole is flagged as shifted."""
    from leukodx.data.images import read_image
    from leukodx.data.registry import load_dataset

    rgb, _ = bccd_field
    own = analyzer.analyze(rgb, "bccd")
    assert own["ood"] is False and own["ood_score"] < analyzer.detector.reliability.threshold
    aria = load_dataset("all-aria")
    other = SmearAnalyzer(analyzer.detector, analyzer.classifier, pixel_scale=0.3)
    fields = [other.analyze(read_image(aria.abspath(i)), f"aria{i}") for i in range(0, 600, 100)]
    assert all(f["ood"] is True for f in fields)
    summary = summarize_fields(fields + [own])
    assert summary["shift"]["flagged"] is True and summary["flags"][0].startswith("shift:")
    assert summarize_fields([own])["shift"]["flagged"] is False


def test_case_shift_reads_the_field_scores_against_the_detectors_reference(analyzer, bccd_field):
    """Fields whose OOD scores all sit high within the detector's validation range, none past its
    threshold: the analyzer's totals (which hold the detector's reference) flag the case by the rank
    test; counts alone could not."""
    rel = analyzer.detector.reliability
    rgb, _ = bccd_field
    own = analyzer.analyze(rgb, "bccd")
    high = np.quantile(rel.reference, np.linspace(0.6, 0.9, 40))
    fields = [{**own, "field": f"f{i}", "ood_score": float(s), "ood": False} for i, s in enumerate(high)]
    totals = analyzer.totals()
    for f in fields:
        totals.add(f)
    shift = totals.summary()["shift"]
    assert shift["flagged"] is True and shift["n_ood"] == 0 and "run higher" in shift["reason"]
    assert summarize_fields(fields)["shift"]["flagged"] is False  # no reference: the count test only
