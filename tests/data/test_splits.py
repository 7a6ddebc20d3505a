"""Splits are stratified, seeded, saved, group-aware, and refuse a changed dataset."""

from __future__ import annotations

import numpy as np
import pytest

from leukodx.data.labelmap import align_classes
from leukodx.data.registry import dataset_info, load_dataset
from leukodx.data.splits import apply_split, bundled_split_path, load_split, make_kfold, make_split, save_split
from leukodx.errors import InvalidInputError


@pytest.fixture(scope="module")
def aria():
    return load_dataset("all-aria")


def test_holdout_is_stratified_disjoint_and_complete(aria):
    split = make_split(aria, val=0.15, test=0.15, seed=3)
    sides = [set(split[k]) for k in ("train", "val", "test")]
    assert sum(map(len, sides)) == len(aria)
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    parts = apply_split(aria, split)
    overall = np.bincount(aria.labels) / len(aria)
    for name in ("val", "test"):
        frac = np.bincount(parts[name].labels, minlength=4) / len(parts[name])
        assert np.abs(frac - overall).max() < 0.03
        assert abs(len(parts[name]) / len(aria) - 0.15) < 0.02


def test_same_seed_same_split_other_seed_other_split(aria):
    a, b, c = make_split(aria, seed=1), make_split(aria, seed=1), make_split(aria, seed=2)
    assert a["test"] == b["test"] and a["test"] != c["test"]


def test_groups_never_straddle_sides(aria):
    groups = np.arange(len(aria)) // 5  # blocks of 5 consecutive fields
    split = make_split(aria, seed=0, groups=groups, group_method="blocks")
    side_of = {}
    for side in ("train", "val", "test"):
        for p in split[side]:
            side_of[p] = side
    for g in np.unique(groups):
        members = {side_of[aria.paths[i]] for i in np.flatnonzero(groups == g)}
        assert len(members) == 1
    assert split["group_method"] == "blocks"


def test_kfold_folds_partition_the_data(aria):
    split = make_kfold(aria, k=5, seed=0)
    folds = [set(f) for f in split["folds"]]
    assert sum(map(len, folds)) == len(aria) and len(set().union(*folds)) == len(aria)
    parts = apply_split(aria, split)
    assert set(parts) == {f"fold{i}" for i in range(5)}


def test_split_file_round_trip_and_stale_split_refused(aria, tmp_path):
    split = make_split(aria, seed=0)
    save_split(split, tmp_path / "s.json")
    again = load_split(tmp_path / "s.json")
    assert again["test"] == split["test"] and again["dataset_fingerprint"] == aria.fingerprint()
    again["test"] = again["test"] + ["Benign/not-there.jpg"]
    with pytest.raises(InvalidInputError, match="not in .*the dataset changed"):
        apply_split(aria, again)


def test_bundled_splits_match_the_shared_data():
    for name in ("pbc", "all-aria"):
        split = load_split(bundled_split_path(name))
        parts = apply_split(load_dataset(name), split)
        assert len(parts["train"]) + len(parts["val"]) + len(parts["test"]) == dataset_info(name).n_images
        assert split["group_method"] == "near-duplicates"


def test_too_small_class_is_refused(aria):
    keep = list(np.flatnonzero(aria.labels == 0)[:2])
    for c in (1, 2, 3):
        keep += list(np.flatnonzero(aria.labels == c)[:10])
    tiny = aria.subset(keep)
    with pytest.raises(InvalidInputError, match="has 2 image"):
        make_split(tiny)


def test_label_map_aligns_pbc_and_wbc_seg_on_five_shared_types():
    pbc, wbc = dataset_info("pbc").classes, dataset_info("wbc-seg").classes
    mapping = align_classes(pbc, wbc)
    assert sorted(mapping.shared) == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert mapping.source_to_target[pbc.index("neutrophil")] == wbc.index("neutrophil")
    assert pbc.index("platelet") not in mapping.source_to_target


@pytest.mark.parametrize("content", ['{"train": 5}', '{"train": ["a.jpg", 3]}', '{"folds": {"a": 1}}', '[1, 2]',
                                     '{"folds": [["a.jpg"], "b.jpg"]}'])
def test_a_malformed_split_file_is_one_clear_error(tmp_path, content):
    """`datasets audit --split` with a malformed JSON raised a TypeError."""
    from leukodx.data.splits import load_split

    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match="split.json"):
        load_split(path)
