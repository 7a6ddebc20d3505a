"""The dataset registry reads the real shared data with its labels, masks and boxes."""

from __future__ import annotations

import shutil

import pytest

from leukodx.data.folder import index_image_folder
from leukodx.data.registry import dataset_info, list_datasets, load_dataset
from leukodx.data.root import resolve_data_root
from leukodx.data.verify import verify_dataset
from leukodx.errors import DataNotFoundError, InvalidInputError


def test_required_datasets_are_registered_with_metadata():
    names = list_datasets()
    for name in ("pbc", "all-aria", "wbc-seg", "bccd"):
        assert name in names
        info = dataset_info(name)
        assert info.license and info.citation and info.limits and info.classes


def test_pbc_has_eight_classes_with_the_documented_counts():
    index = load_dataset("pbc")
    counts = index.class_counts()
    assert list(counts) == list(dataset_info("pbc").classes)
    assert counts["neutrophil"] == 2830 and counts["lymphocyte"] == 1032
    assert len(index) == 14528


def test_all_aria_stages():
    index = load_dataset("all-aria")
    assert index.class_counts() == {"Benign": 428, "Early": 837, "Pre": 819, "Pro": 683}


def test_wbc_seg_reads_csv_labels_and_mask_paths():
    index = load_dataset("wbc-seg")
    assert len(index) == 400
    assert index.classes[:2] == ["neutrophil", "lymphocyte"]
    # Class-Labels-of-Dataset-1.csv: image 1 is class 2 (lymphocyte), image 2 is class 1
    assert index.paths[0] == "Dataset-1/images/001.png" and index.classes[index.labels[0]] == "lymphocyte"
    assert index.classes[index.labels[1]] == "neutrophil"
    assert all((index.root / m).exists() for m in index.meta["masks"][:5])
    assert set(index.meta["sources"]) == {"Dataset-1", "Dataset-2"}
    # the source set is not a patient group: the pooled set splits image-level, both sets on every side
    from leukodx.data.splits import make_split

    assert index.groups is None
    split = make_split(index, seed=0)
    assert all({p.split("/")[0] for p in split[side]} == {"Dataset-1", "Dataset-2"} for side in ("train", "test"))
    assert len(load_dataset("wbc-seg-2")) == 100


def test_bccd_reads_voc_boxes_and_image_sets():
    index = load_dataset("bccd")
    assert index.classes == ["RBC", "WBC", "Platelets"]
    first = index.records[0]
    assert first["id"] == "BloodImage_00000"
    wbc = first["boxes"][first["labels"] == 1]
    assert wbc.tolist()[0] == [260, 177, 491, 376]
    assert len(index.splits["test"]) == 72 and len(index.splits["train"]) == 205


def test_data_root_from_environment(monkeypatch, data_root):
    monkeypatch.setenv("LEUKODX_DATA", str(data_root))
    assert resolve_data_root() == data_root


def test_missing_data_root_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("LEUKODX_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match=r"nope: data root from \$LEUKODX_DATA does not exist"):
        load_dataset("pbc")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("pbc", data_root=tmp_path / "nope")


def test_unknown_name_is_neither_dataset_nor_folder():
    with pytest.raises(DataNotFoundError, match="neither a registered dataset"):
        load_dataset("no-such-set")


def test_any_class_folder_is_a_dataset(pbc_folder):
    index = index_image_folder(pbc_folder)
    assert index.classes == sorted(dataset_info("pbc").classes)
    assert len(index) == 32


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="no class sub-folders"):
        index_image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(InvalidInputError, match="hold no image files"):
        index_image_folder(tmp_path)


def test_verify_passes_on_real_data_and_catches_a_changed_file(data_root, tmp_path):
    report = verify_dataset("wbc-seg-2")
    assert report.ok and report.checked == 200
    # a copy of the data root with one image altered
    copy = tmp_path / "root"
    shutil.copytree(data_root / "wbc-seg" / "Dataset-2", copy / "wbc-seg" / "Dataset-2")
    sums = [l for l in (data_root / "SHA256SUMS").read_text().splitlines() if "./wbc-seg/Dataset-2/" in l]
    (copy / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    target = copy / "wbc-seg" / "Dataset-2" / "images" / "001.png"
    target.write_bytes(target.read_bytes() + b"x")
    (copy / "wbc-seg" / "Dataset-2" / "masks" / "002.png").unlink()
    report = verify_dataset("wbc-seg-2", data_root=copy)
    assert not report.ok
    assert report.mismatched == ["wbc-seg/Dataset-2/images/001.png"]
    assert report.missing == ["wbc-seg/Dataset-2/masks/002.png"]
    assert report.unlisted == [] and report.unreadable == []
    # a folder where a file is listed, and a file nobody listed: reported, not a traceback
    (copy / "wbc-seg" / "Dataset-2" / "masks" / "002.png").mkdir()
    (copy / "wbc-seg" / "Dataset-2" / "images" / "extra.png").write_bytes(b"new")
    report = verify_dataset("wbc-seg-2", data_root=copy)
    assert report.unreadable == ["wbc-seg/Dataset-2/masks/002.png: a folder where a file is listed"]
    assert report.unlisted == ["wbc-seg/Dataset-2/images/extra.png"] and not report.ok


def test_registry_covers_every_set_in_the_shared_data_folder():
    from leukodx.data.registry import dataset_info, list_datasets
    from leukodx.data.root import resolve_data_root

    root = resolve_data_root(None)
    subdirs = {dataset_info(n).subdir.split("/")[0] for n in list_datasets()}
    flow = {dataset_info(n).subdir for n in list_datasets() if dataset_info(n).subdir.startswith("flow/")}
    on_disk = {p.name for p in root.iterdir() if p.is_dir()}
    assert on_disk <= subdirs
    assert {f"flow/{p.name}" for p in (root / "flow").iterdir() if p.is_dir()} <= flow
    for name in list_datasets():
        info = dataset_info(name)
        assert info.source and info.license and info.citation and info.limits and info.site, name


def test_deepapl_is_indexed_with_patients_as_split_groups():
    from leukodx.data.registry import load_dataset

    index = load_dataset("deepapl")
    assert len(index) == 12153 and len(set(index.groups)) == 82
    assert index.class_counts()["blast_no_lineage_spec"] == 2711 and index.class_counts()["promyelocyte"] == 511
    assert sum(v == "APL" for v in index.meta["diagnosis"].values()) == 22
    assert all(p.split("/")[1] == g for p, g in zip(index.paths[::500], index.groups[::500]))
    assert "research use only" in __import__("leukodx").data.registry.dataset_info("deepapl").license
