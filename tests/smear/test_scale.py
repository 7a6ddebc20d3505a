"""Each field's scale measured from its own red cells, or given; uncertain scales are not counted."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from leukodx.errors import InvalidInputError
from leukodx.smear.detector import load_detector
from leukodx.smear.pipeline import summarize_fields
from leukodx.smear.scale import DETECTOR_UM_PER_PX, TRAINING_RBC_SIDE_PX, estimate_scale, given_scale


@pytest.fixture(scope="module")
def detector():
    return load_detector()


def _resized(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((int(w * factor), int(h * factor)), Image.Resampling.BILINEAR))


def test_training_red_cell_size_is_bccds(bccd):
    from leukodx.data.registry import load_fields

    _, records = load_fields(bccd, bccd.splits["train"][:40])
    boxes = np.concatenate([r["boxes"][r["labels"] == 0] for r in records])
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    assert abs(np.median(sides) - TRAINING_RBC_SIDE_PX) < 6


@pytest.mark.slow
def test_scale_is_measured_at_native_half_and_double_magnification(bccd_field, detector):
    rgb, _ = bccd_field
    native = estimate_scale(rgb, detector)
    assert native.source == "estimated" and native.pixel_scale == pytest.approx(1.0, abs=0.1)
    assert native.um_per_px == pytest.approx(DETECTOR_UM_PER_PX / native.pixel_scale)
    half = estimate_scale(_resized(rgb, 0.5), detector)    # a lower magnification: red cells ~52 px
    double = estimate_scale(_resized(rgb, 2.0), detector)  # a higher one: ~206 px
    assert 0.35 <= half.pixel_scale <= 0.6, half.detail
    assert 1.5 <= double.pixel_scale <= 2.4, double.detail
    assert half.fitting_rbc >= 3 and "red cells of training size" in half.detail


def test_a_field_without_red_cells_has_an_uncertain_scale(blank_field, detector):
    scale = estimate_scale(blank_field, detector)
    assert scale.uncertain and scale.source == "uncertain" and scale.pixel_scale is None
    assert "outside what it knows" in scale.detail


def test_given_scales_are_checked_and_converted():
    assert given_scale() is None
    by_um = given_scale(um_per_px=0.5)
    assert by_um.pixel_scale == pytest.approx(DETECTOR_UM_PER_PX / 0.5) and by_um.source == "given: --um-per-px"
    assert given_scale(pixel_scale=0.25).um_per_px == pytest.approx(DETECTOR_UM_PER_PX / 0.25)
    with pytest.raises(InvalidInputError, match="not both"):
        given_scale(pixel_scale=1.0, um_per_px=0.1)
    with pytest.raises(InvalidInputError, match="um-per-px"):
        given_scale(um_per_px=40)
    with pytest.raises(InvalidInputError, match="pixel scale"):
        given_scale(pixel_scale=0)


def test_uncounted_fields_are_named_not_summed():
    uncounted = {"field": "a", "counted": False, "cells": [], "quality": [], "not_counted_reason": "no red cells",
                 "scale": {"source": "uncertain", "detail": "no red cells", "pixel_scale": None}}
    summary = summarize_fields([uncounted])
    assert summary["counts"] is None and summary["fields_not_counted"] == 1 and summary["fields_counted"] == 0
    assert any("no field could be counted" in f for f in summary["flags"])
    assert any("not counted (e.g. no red cells)" in f for f in summary["flags"])


def test_a_field_with_more_white_than_red_cells_is_not_counted(detector):
    """all-aria's bluish red cells read as white cells by the BCCD detector, at the right scale."""
    from leukodx.data.registry import load_dataset
    from leukodx.data.images import read_image
    from leukodx.inference.classifier import load_model
    from leukodx.smear.pipeline import SmearAnalyzer

    index = load_dataset("all-aria")
    field = read_image(index.root / "Early" / "WBC-Malignant-Early-776.jpg")  # 7 white cells by eye
    result = SmearAnalyzer(detector, load_model("pbc-celltype"), pixel_scale=0.15).analyze(field, "f")
    assert result["counted"] is False and "not blood" in result["not_counted_reason"]
