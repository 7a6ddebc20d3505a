"""Site-level scale matching: ``Preprocess.zoom`` magnifies about the centre (cropping or padding with the
image's border colour), a zoomed image's nucleus fills the frame by that much more, ``site_zoom`` measures
the ratio between two sets of real cells, and models without a zoom keep their cards and cache keys."""

from __future__ import annotations

import numpy as np
import pytest

from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
from leukodx.errors import InvalidInputError
from leukodx.preprocessing.transforms import (Preprocess, nucleus_fractions, site_zoom, zoom_about_centre)


def _cells(name: str, n: int = 24) -> list[np.ndarray]:
    index = load_dataset(name)
    step = max(1, len(index.labels) // n)
    return [read_image(index.abspath(i), max_side=144) for i in range(0, len(index.labels), step)[:n]]


def test_zoom_crops_the_centre_or_pads_with_the_border_colour():
    rgb = np.full((60, 80, 3), 200, np.uint8)
    rgb[20:40, 30:50] = (90, 40, 140)
    inner = zoom_about_centre(rgb, 2.0)
    assert inner.shape == (30, 40, 3)
    assert np.array_equal(inner, rgb[15:45, 20:60])
    outer = zoom_about_centre(rgb, 0.5)
    assert outer.shape == (120, 160, 3)
    assert np.array_equal(outer[30:90, 40:120], rgb)
    assert (outer[:30] == 200).all() and (outer[:, :40] == 200).all()


def test_a_zoomed_cell_fills_the_frame_by_the_zoom():
    cells = _cells("pbc")
    pre = Preprocess(size=64)
    before = nucleus_fractions(pre.batch(cells))
    after = nucleus_fractions(Preprocess(size=64, zoom=1.5).batch(cells))
    assert np.isfinite(before).sum() >= 20
    ratio = np.nanmedian(after) / np.nanmedian(before)
    assert 1.35 <= ratio <= 1.65
    # site_zoom undoes it: the zoomed set measured against the plain one asks for about 1 / 1.5
    assert 0.55 <= site_zoom(before, after) <= 0.8
    assert site_zoom(before, before) == 1.0


def test_site_zoom_refuses_images_without_a_nucleus_and_clips():
    with pytest.raises(InvalidInputError, match="no nucleus"):
        site_zoom(np.array([0.4, 0.5]), np.array([np.nan, np.nan]))
    assert site_zoom(np.array([0.9]), np.array([0.05])) == 2.5
    with pytest.raises(InvalidInputError, match="zoom 3"):
        Preprocess(zoom=3.0)
    with pytest.raises(InvalidInputError, match="cell-crop"):
        Preprocess(zoom=1.5, resize="cell-crop")


def test_a_preprocess_without_zoom_keeps_its_dict_and_a_zoom_round_trips():
    plain = Preprocess(size=64)
    assert "zoom" not in plain.as_dict()
    zoomed = Preprocess(size=64, zoom=1.45)
    assert zoomed.as_dict()["zoom"] == 1.45
    assert Preprocess.from_dict(zoomed.as_dict()) == zoomed
    assert Preprocess.from_dict(plain.as_dict()) == plain
