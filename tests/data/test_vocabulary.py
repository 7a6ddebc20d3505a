"""The shared cell-type vocabulary and the patient-level split of deepapl."""

from __future__ import annotations

import pytest

from leukodx.data.registry import load_dataset
from leukodx.data.splits import apply_split, bundled_split_path, load_split
from leukodx.data.vocabulary import common_classes, label_map, to_common, top_level, vocabulary
from leukodx.errors import InvalidInputError


@pytest.mark.parametrize("dataset", ["pbc", "deepapl", "wbc-seg-1", "wbc-seg-2"])
def test_every_cell_set_maps_onto_the_vocabulary(dataset):
    index = load_dataset(dataset)
    mapping = label_map(dataset, list(index.classes))
    assert set(mapping) == set(index.classes)
    assert {c for c in mapping.values() if c} <= set(common_classes())


def test_deepapl_relabelled_fine_and_coarse():
    index = load_dataset("deepapl")
    fine = to_common(index)
    assert len(fine) == len(index) - 18  # the 18 thrombocyte aggregations are not a cell type
    counts = fine.class_counts()
    assert counts["blast"] == 2711 and counts["promyelocyte"] == 511 and counts["segmented_neutrophil"] == 1560
    coarse = to_common(index, coarse=True).class_counts()
    assert coarse["neutrophil"] == 1560 + 105  # segmented + band
    assert coarse["immature_granulocyte"] == 511 + 111 + 63  # promyelocytes, myelocytes, metamyelocytes
    assert "promyelocyte" not in coarse and top_level("promyelocyte") == "immature_granulocyte"
    assert (fine.groups == index.groups[[i for i, y in enumerate(index.labels)
                                         if index.classes[y] != "thrombocyte_aggregation"]]).all()


def test_pbc_and_deepapl_share_the_coarse_classes_they_both_have():
    pbc = to_common(load_dataset("pbc"), coarse=True)
    apl = to_common(load_dataset("deepapl"), coarse=True)
    shared = set(pbc.classes) & set(apl.classes)
    assert {"neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "immature_granulocyte",
            "erythroblast", "platelet"} == shared


def test_names_outside_the_vocabulary_are_one_line_listing_them():
    with pytest.raises(InvalidInputError) as info:
        label_map("my-lab", ["neutrophils", "Blast", "Ghost cell", "weird"])
    message = str(info.value)
    assert message.startswith("my-lab: class name(s) outside the cell-type vocabulary: Ghost cell, weird")
    assert "vocabulary: neutrophil, band_neutrophil" in message and "\n" not in message
    assert label_map("my-lab", ["neutrophils", "Blast"]) == {"neutrophils": "neutrophil", "Blast": "blast"}
    with pytest.raises(InvalidInputError, match="all-aria: class name.*Benign"):
        to_common(load_dataset("all-aria"))


def test_vocabulary_file_is_consistent():
    vocab = vocabulary()
    for name, entry in vocab["classes"].items():
        assert entry["parent"] is None or vocab["classes"][entry["parent"]]["parent"] is None, name


def test_deepapl_bundled_split_is_patient_level_and_stratified():
    index = load_dataset("deepapl")
    split = load_split(bundled_split_path("deepapl"))
    sides = apply_split(index, split)
    patients = {name: set(side.groups.tolist()) for name, side in sides.items()}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])
    assert sum(len(s) for s in sides.values()) == len(index)
    diagnosis = index.meta["diagnosis"]
    for name in ("val", "test"):
        apl = sum(diagnosis[p] == "APL" for p in patients[name])
        assert 2 <= apl <= 5, name  # 22 of 82 patients are APL: about 3-4 of 13
    assert split["group_method"] == "patient" and split["dataset_fingerprint"] == index.fingerprint()


def test_patient_split_refuses_an_index_without_patients():
    from leukodx.data.splits import make_patient_split

    with pytest.raises(InvalidInputError, match="no patient ids to split by"):
        make_patient_split(load_dataset("wbc-seg-2"))
