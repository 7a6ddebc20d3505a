"""Colour normalization moves real smear images onto the reference appearance."""

from __future__ import annotations

import numpy as np
import pytest

from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
from leukodx.preprocessing.stain import (LEVELS_REFERENCE, REINHARD_REFERENCE, lab_to_rgb, levels, macenko,
                                         macenko_reference, reinhard, rgb_to_lab)
from leukodx.preprocessing.transforms import Preprocess


@pytest.fixture(scope="module")
def two_sites():
    """A pbc cell (CellaVision, Barcelona) and a wbc-seg Dataset-1 cell (yellowish, Jiangxi)."""
    return read_image(load_dataset("pbc").abspath(10)), read_image(load_dataset("wbc-seg-1").abspath(0))


def test_lab_round_trip_is_lossless_within_one_level(two_sites):
    rgb = two_sites[0]
    assert np.abs(lab_to_rgb(rgb_to_lab(rgb)).astype(int) - rgb).max() <= 1


def test_reinhard_matches_reference_lab_statistics(two_sites):
    for rgb in two_sites:
        lab = rgb_to_lab(reinhard(rgb)).reshape(-1, 3)
        assert np.allclose(lab.mean(0), REINHARD_REFERENCE["mean"], atol=2.0)


def test_reinhard_brings_two_sites_closer(two_sites):
    a, b = two_sites
    before = np.abs(rgb_to_lab(a).reshape(-1, 3).mean(0) - rgb_to_lab(b).reshape(-1, 3).mean(0)).sum()
    after = np.abs(rgb_to_lab(reinhard(a)).reshape(-1, 3).mean(0) - rgb_to_lab(reinhard(b)).reshape(-1, 3).mean(0)).sum()
    assert after < before / 4


def test_macenko_maps_onto_the_reference_stains(two_sites):
    a, b = two_sites
    ref = macenko_reference(a)
    out = macenko(b, ref)
    assert out.shape == b.shape and out.dtype == np.uint8
    fitted = macenko_reference(out)
    cos = np.abs(np.sum(np.asarray(fitted["stains"]) * np.asarray(ref["stains"]), axis=1))
    assert cos.min() > 0.95


def test_macenko_leaves_blank_glass_unchanged():
    blank = np.full((64, 64, 3), 250, dtype=np.uint8)
    assert np.array_equal(macenko(blank), blank)


def _anchors(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = rgb.reshape(-1, 3).astype(np.float64)
    lum = x.sum(axis=1)
    lo, hi = np.percentile(lum, (2.0, 90.0))
    return x[lum <= lo].mean(axis=0), x[lum >= hi].mean(axis=0)


def test_levels_maps_both_sites_onto_the_reference_black_and_white_points(two_sites):
    a, b = two_sites
    gap_before = np.abs(_anchors(a)[1] - _anchors(b)[1]).max()
    assert gap_before > 25  # the Jiangxi glass is yellow: its blue channel is far below pbc's
    for rgb in two_sites:
        out = levels(rgb)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        dark, bright = _anchors(out)
        # channels saturated in the source stay saturated, hence the looser white point
        assert np.abs(dark - LEVELS_REFERENCE["dark"]).max() < 12
        assert np.abs(bright - LEVELS_REFERENCE["bright"]).max() < 12
    assert np.abs(_anchors(levels(a))[1] - _anchors(levels(b))[1]).max() < gap_before / 3


def test_levels_leaves_a_flat_image_unchanged():
    blank = np.full((32, 32, 3), 250, dtype=np.uint8)
    assert np.array_equal(levels(blank), blank)


def test_preprocess_resize_modes_and_bad_settings(two_sites):
    rgb = two_sites[0][:, :150]  # non-square
    for mode in ("resize", "center-crop", "pad"):
        assert Preprocess(size=48, resize=mode)(rgb).shape == (48, 48, 3)
    padded = Preprocess(size=48, resize="pad")(rgb)
    assert (padded[:, 0] > 240).all()  # white margin
    with pytest.raises(ValueError, match="stain method"):
        Preprocess(stain="magic")
    assert Preprocess.from_dict(Preprocess(size=48, stain="reinhard").as_dict()) == Preprocess(size=48, stain="reinhard")
