"""Fixtures for smear analysis: real BCCD fields and wbc-seg cells."""

from __future__ import annotations

import numpy as np
import pytest

from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset


@pytest.fixture(scope="session")
def bccd():
    return load_dataset("bccd")


@pytest.fixture(scope="session")
def bccd_field(bccd):
    """The first test-split field with exactly one white cell, and its boxes."""
    for i in bccd.splits["test"]:
        rec = bccd.records[i]
        if (rec["labels"] == 1).sum() == 1:
            return read_image(bccd.root / rec["path"]), rec
    raise AssertionError("BCCD test split has no single-WBC field")


@pytest.fixture(scope="session")
def blank_field(bccd_field):
    """An empty slide: the field's background colour everywhere."""
    from leukodx.smear.tiling import background_colour

    rgb = np.empty_like(bccd_field[0])
    rgb[:] = background_colour(bccd_field[0])
    return rgb
