"""Sites: each single-cell set with its saved split, relabelled onto the shared vocabulary."""

from __future__ import annotations

import pytest

from leukodx._hashing import sha256_file
from leukodx.data.registry import dataset_info
from leukodx.data.sites import CELL_SITES, site_sides, site_split, split_record
from leukodx.errors import InvalidInputError


def test_every_cell_site_has_a_site_a_scanner_and_a_saved_split():
    for site in CELL_SITES:
        info = dataset_info(site)
        assert info.site and info.scanner
        split, path = site_split(site)
        assert path.exists() and split_record(site)["split_sha256"] == sha256_file(path)
        assert split["train"] and split["test"]


def test_deepapl_sides_are_patient_grouped_and_carry_leukemic_classes():
    sides = site_sides("deepapl")
    assert {"blast", "smudge", "immature_granulocyte", "neutrophil"} <= set(sides["train"].classes)
    patients = {name: set(side.groups) for name, side in sides.items()}
    assert not patients["train"] & patients["test"] and not patients["val"] & patients["test"]
    from leukodx.data.registry import load_dataset

    assert sides["test"].meta["dataset_fingerprint"] == load_dataset("deepapl").fingerprint()
    fine = site_sides("deepapl", coarse=False)
    assert "promyelocyte" in fine["train"].classes and "promyelocyte" not in sides["train"].classes


def test_segmentation_sets_read_their_side_of_the_shared_split_file():
    one, two = site_sides("wbc-seg-1"), site_sides("wbc-seg-2")
    assert len(one["train"]) + len(one["val"]) + len(one["test"]) == 300
    assert len(two["train"]) + len(two["val"]) + len(two["test"]) == 100
    with pytest.raises(InvalidInputError, match="no saved split"):
        site_split("ddpr")
