"""The dataset registry: named datasets with their metadata and one loader each.

``list_datasets()`` names them, ``dataset_info(name)`` describes one, ``load_dataset(name)``
indexes it under the configured data root. Any folder of class sub-folders also loads, by path.
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from leukodx.data.folder import ImageIndex, index_image_folder
from leukodx.data.images import read_image
from leukodx.data.root import resolve_data_root
from leukodx.errors import DataNotFoundError, InvalidInputError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str  # classification | detection | segmentation
    modality: str
    classes: tuple[str, ...]
    image_size: str
    subdir: str  # relative to the data root; also the SHA256SUMS prefix
    source: str
    license: str
    citation: str
    limits: tuple[str, ...] = ()
    n_images: int | None = None
    input_kind: str = "cells"  # what one image shows: a single cell, or a smear field of many
    site: str = ""  # the lab (and city) that made the data: cross-site results are reported per site
    scanner: str = ""  # the acquisition device, where known

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DetectionIndex:
    """Smear fields with boxes: ``records[i] = {"path", "boxes" (N,4 xyxy), "labels" (N,)}``."""

    name: str
    root: Path
    records: list[dict]
    classes: list[str]
    splits: dict[str, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)


_REGISTRY: dict[str, tuple[DatasetInfo, Callable[[Path, DatasetInfo], object]]] = {}

_SHARED_LIMIT = (
    "No patient identifiers: image-level splits cannot be patient-disjoint, and near-duplicates "
    "across a split inflate accuracy.",
    "One site and one scanner: within-dataset accuracy overstates accuracy elsewhere.",
)


def register_dataset(info: DatasetInfo, loader: Callable[[Path, DatasetInfo], object]) -> None:
    _REGISTRY[info.name] = (info, loader)


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise DataNotFoundError(
            f"{name}: unknown dataset (known: {', '.join(list_datasets())}; or give a folder path)"
        ) from None


def load_dataset(name_or_path: str | os.PathLike, data_root: str | os.PathLike | None = None):
    """Index a registered dataset by name, or any folder of class sub-folders by path."""
    key = str(name_or_path)
    if key in _REGISTRY:
        info, loader = _REGISTRY[key]
        folder = resolve_data_root(data_root) / info.subdir
        if not folder.is_dir():
            raise DataNotFoundError(f"{key}: expected its files at {folder}, which does not exist")
        return loader(folder, info)
    path = Path(key)
    if path.is_dir():
        return index_image_folder(path)
    raise DataNotFoundError(
        f"{key}: neither a registered dataset ({', '.join(list_datasets())}) nor an existing folder"
    )


@dataclass
class FileSet:
    """A registered non-image dataset (expression tables, FCS files): its folder and files.

    Read it with its own reader: ``leukodx.omics.io`` (expression) or ``leukodx.cytometry`` (FCS).
    """

    name: str
    root: Path
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)


def _load_files(folder: Path, info: DatasetInfo) -> FileSet:
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    if not files:
        raise DataNotFoundError(f"{folder}: {info.name} has no files")
    return FileSet(name=info.name, root=folder, files=files)


def _load_deepapl(folder: Path, info: DatasetInfo) -> ImageIndex:
    """DeepAPL discovery cells: the source's cell-type labels (slugs), patient ids as split groups."""
    table = folder / "cells.csv"
    if not table.exists():
        raise DataNotFoundError(f"{table}: label file missing")
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = sorted({r["cell_type_slug"] for r in rows})
    position = {c: i for i, c in enumerate(classes)}
    missing = [r["file"] for r in rows if not (folder / r["file"]).exists()]
    if missing:
        raise DataNotFoundError(f"{folder / missing[0]}: listed in cells.csv but missing ({len(missing)} in all)")
    diagnosis = {}
    patients = folder / "patients.csv"
    if patients.exists():
        with patients.open(newline="") as fh:
            diagnosis = {r["Patient_ID"]: r["Diagnosis"] for r in csv.DictReader(fh)}
    return ImageIndex(
        name=info.name, root=folder, paths=[r["file"] for r in rows],
        labels=np.asarray([position[r["cell_type_slug"]] for r in rows], dtype=int), classes=classes,
        groups=np.asarray([r["patient_id"] for r in rows]),
        meta={"dataset": info.name, "patients": sorted(set(r["patient_id"] for r in rows)),
              "diagnosis": diagnosis, "source_labels": {r["cell_type_slug"]: r["cell_type"] for r in rows}},
    )


def load_fields(index: DetectionIndex, ids: list[int]) -> tuple[list[np.ndarray], list[dict]]:
    """Images and their valid boxes (degenerate boxes, e.g. zero width, are dropped)."""
    images, targets = [], []
    for i in ids:
        rec = index.records[i]
        rgb = read_image(index.root / rec["path"])
        boxes = np.asarray(rec["boxes"], dtype=np.float32).reshape(-1, 4)
        valid = (boxes[:, 2] > boxes[:, 0] + 1) & (boxes[:, 3] > boxes[:, 1] + 1)
        images.append(rgb)
        targets.append({"boxes": boxes[valid], "labels": np.asarray(rec["labels"])[valid].astype(int),
                        "id": rec.get("id", str(i))})
    return images, targets


def _load_class_folders(folder: Path, info: DatasetInfo) -> ImageIndex:
    index = index_image_folder(folder, name=info.name)
    index.meta["dataset"] = info.name
    return index


def _load_wbc_seg(folder: Path, info: DatasetInfo) -> ImageIndex:
    """Both (or one) WBC-seg sets as a classification index; masks are listed in ``meta``."""
    base = folder if (folder / "Class-Labels-of-Dataset-1.csv").exists() else folder.parent
    which = [1, 2] if info.name == "wbc-seg" else [int(info.name[-1])]
    classes = list(info.classes)
    paths, labels, masks, sources = [], [], [], []
    for n in which:
        table = base / f"Class-Labels-of-Dataset-{n}.csv"
        if not table.exists():
            raise DataNotFoundError(f"{table}: label file missing")
        with table.open(newline="") as fh:
            rows = list(csv.reader(fh))[1:]
        for image_id, label in (r for r in rows if r):
            rel = f"Dataset-{n}/images/{int(image_id):03d}.png"
            if not (base / rel).exists():
                raise DataNotFoundError(f"{base / rel}: listed in {table.name} but missing")
            paths.append(rel)
            labels.append(int(label) - 1)
            masks.append(f"Dataset-{n}/masks/{int(image_id):03d}.png")
            sources.append(f"Dataset-{n}")
    return ImageIndex(
        name=info.name, root=base, paths=paths, labels=np.asarray(labels, dtype=int), classes=classes,
        # the source set is not a patient group: splits stay image-level, as for every set here
        meta={"dataset": info.name, "masks": masks, "sources": sources},
    )


def _load_voc(folder: Path, info: DatasetInfo) -> DetectionIndex:
    voc = folder / "BCCD"
    classes = list(info.classes)
    records: list[dict] = []
    position: dict[str, int] = {}
    for xml_path in sorted((voc / "Annotations").glob("*.xml")):
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            raise InvalidInputError(f"{xml_path}: malformed annotation ({exc})") from None
        boxes, labels = [], []
        for obj in tree.iter("object"):
            cls = (obj.findtext("name") or "").strip()
            if cls not in classes:
                continue
            bb = obj.find("bndbox")
            boxes.append([float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
            labels.append(classes.index(cls))
        stem = xml_path.stem
        image = voc / "JPEGImages" / f"{stem}.jpg"
        if not image.exists():
            continue
        position[stem] = len(records)
        records.append({
            "path": str(image.relative_to(folder)), "id": stem,
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=int),
        })
    splits = {}
    for split in ("train", "val", "test", "trainval"):
        listing = voc / "ImageSets" / "Main" / f"{split}.txt"
        if listing.exists():
            ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
            splits[split] = [position[i] for i in ids if i in position]
    return DetectionIndex(name=info.name, root=folder, records=records, classes=classes, splits=splits)


PBC = DatasetInfo(
    name="pbc", task="classification", modality="single-cell peripheral blood smear image (CellaVision DM96)",
    classes=("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"),
    image_size="224x224 (resized from 360x363), JPEG q85", subdir="pbc",
    source="Hospital Clinic Barcelona, healthy donors; Mendeley Data doi:10.17632/snkd93bnjr.1",
    license="CC BY 4.0",
    citation="Acevedo A. et al. A dataset of microscopic peripheral blood cell images for development of "
    "automatic recognition systems. Data in Brief 30 (2020) 105474.",
    limits=("Healthy donors only: it teaches cell types, not leukemia.",) + _SHARED_LIMIT
    + ("A further 15% per class is held back from this copy for independent checks.",),
    n_images=14528, site="Hospital Clinic, Barcelona", scanner="CellaVision DM96",
)
ALL_ARIA = DatasetInfo(
    name="all-aria", task="classification", modality="acute lymphoblastic leukemia smear field (several cells)",
    classes=("Benign", "Early", "Pre", "Pro"), image_size="224x224, JPEG q90", subdir="all-aria",
    source="Taleqani Hospital, Tehran; 89 patients", license="CC BY 4.0",
    citation="Ghaderzadeh M., Aria M. et al. A fast and efficient CNN model for B-ALL diagnosis and its "
    "subtypes classification using peripheral blood smear images. Int J Intell Syst (2022).",
    limits=("Benign are hematogones; Early/Pre/Pro are B-ALL stages.",) + _SHARED_LIMIT
    + ("A further 15% per class is held back from this copy for independent checks.",),
    n_images=2767, input_kind="fields", site="Taleqani Hospital, Tehran",
)
_WBC_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
_WBC_COMMON = dict(
    task="classification", modality="single white-cell image with nucleus/cytoplasm masks",
    classes=_WBC_CLASSES, source="Zheng X. et al.; Jiangxi Tecom (Dataset-1) and CellaVision blog (Dataset-2)",
    license="GPL-3.0",
    citation="Zheng X., Wang Y., Wang G., Liu J. Fast and robust segmentation of white blood cell images by "
    "self-supervised learning. Micron 107 (2018) 55-71.",
    limits=("Class labels were not checked by experts (says the source).",) + _SHARED_LIMIT,
)
WBC_SEG = DatasetInfo(name="wbc-seg", image_size="120x120 (Dataset-1) and 300x300 (Dataset-2), PNG",
                      subdir="wbc-seg", n_images=400, site="Jiangxi (Dataset-1) + CellaVision images (Dataset-2)",
                      **_WBC_COMMON)
WBC_SEG_1 = DatasetInfo(name="wbc-seg-1", image_size="120x120, PNG, yellowish background",
                        subdir="wbc-seg/Dataset-1", n_images=300, site="Jiangxi Tecom, China",
                        scanner="Tecom", **_WBC_COMMON)
WBC_SEG_2 = DatasetInfo(name="wbc-seg-2", image_size="300x300, PNG", subdir="wbc-seg/Dataset-2",
                        n_images=100, site="CellaVision blog images", scanner="CellaVision", **_WBC_COMMON)
BCCD = DatasetInfo(
    name="bccd", task="detection", modality="smear field with Pascal VOC boxes", classes=("RBC", "WBC", "Platelets"),
    image_size="640x480, JPEG", subdir="bccd", source="BCCD dataset (Shenggan)", license="MIT",
    citation="BCCD Dataset: a small-scale dataset for blood cells detection, github.com/Shenggan/BCCD_Dataset",
    limits=("364 fields; boxes are incomplete in places (unlabelled RBCs).",) + _SHARED_LIMIT[1:],
    n_images=364, input_kind="fields", site="BCCD (source lab not stated)",
)
DEEPAPL = DatasetInfo(
    name="deepapl", task="classification",
    modality="single white-cell image of AML / APL patients (CellaVision, Wright-Giemsa), patient ids",
    classes=("blast_no_lineage_spec", "lymphocyte", "smudge_cells", "segmented_neutrophils", "monocyte",
             "promyelocyte", "erythroblast", "lymphocyte_variant", "myelocyte", "band_neutrophils", "eosinophils",
             "promonocyte", "metamyelocyte", "plasma_cells", "giant_thrombocyte", "basophil",
             "thrombocyte_aggregation", "prolymphocyte"),
    image_size="144x144 (resized from 360x363: pbc's field of view), JPEG q80", subdir="deepapl",
    source="Johns Hopkins Hospital, DeepAPL discovery cohort: 82 patients (60 AML, 22 APL)",
    license="No open licence: copyright The Johns Hopkins University 2020; research use only. State it in every "
            "model card trained on it.",
    citation="Sidhom J.-W. et al. Deep learning for diagnosis of acute promyelocytic leukemia via recognition of "
             "genomically imprinted morphologic features. npj Precision Oncology 5, 38 (2021).",
    limits=("Split by patient (patient ids are the split groups); the 24-patient validation cohort is held back.",
            "Labels are the source's cell types; classes are very unbalanced (1 prolymphocyte, 18 aggregations).",
            "One site and one scanner: within-dataset accuracy overstates accuracy elsewhere."),
    n_images=12153, site="Johns Hopkins Hospital, Baltimore", scanner="CellaVision",
)
GOLUB = DatasetInfo(
    name="golub", task="expression", modality="Affymetrix Hu6800 microarray, 7,129 probes", classes=("ALL", "AML"),
    image_size="-", subdir="golub", source="Broad Institute public release (Golub et al. 1999)",
    license="public release of the Broad Institute",
    citation="Golub T.R. et al. Molecular classification of cancer: class discovery and class prediction by gene "
             "expression monitoring. Science 286 (1999) 531-537.",
    limits=("38 training and 34 independent samples: every accuracy has a wide interval.",
            "Read with leukodx.omics.io.read_golub or `leukodx expression`."),
    n_images=None, input_kind="expression", site="Dana-Farber / Whitehead (1999)",
)
BALL_RNASEQ = DatasetInfo(
    name="ball-rnaseq", task="expression", modality="RNA-seq raw counts, 19,514 genes",
    classes=("DUX4", "ETV6-RUNX1", "Ph", "TCF3-PBX1"), image_size="-", subdir="ball-rnaseq",
    source="ALLSorts test set", license="MIT",
    citation="Schmidt B. et al. ALLSorts: an RNA-Seq subtype classifier for B-cell acute lymphoblastic leukemia. "
             "Blood Advances 6 (2022) 4093-4097.",
    limits=("20 samples, 5 per subtype: leave-one-out says whether subtypes separate, not how a model generalizes.",),
    n_images=None, input_kind="expression", site="ALLSorts test cohort",
)
DDPR = DatasetInfo(
    name="ddpr", task="flow", modality="mass cytometry (CyTOF): FCS files and a 5,000-cell x 20-marker table",
    classes=("healthy", "leukemic"), image_size="-", subdir="flow/tidytof", source="tidytof (DDPR, AML examples)",
    license="MIT",
    citation="Good Z. et al. Single-cell developmental classification of B cell precursor acute lymphoblastic "
             "leukemia at diagnosis reveals predictors of relapse. Nat Med 24 (2018) 474-483.",
    limits=("Two leukemic and two healthy samples: cell-level detection, not patient-level accuracy.",
            "ddpr_cells.csv holds raw intensities (not arcsinh-transformed as its README says)."),
    n_images=None, input_kind="events", site="Stanford (DDPR cohort)",
)
FLOW_FORMATS = DatasetInfo(
    name="flow-formats", task="flow", modality="FCS 2.0 / 3.0 / 3.1 files from many cytometers (reader coverage)",
    classes=(), image_size="-", subdir="flow/formats", source="fcsparser test files", license="MIT",
    citation="fcsparser, github.com/eyurtsev/fcsparser",
    limits=("Not leukemia data; several files are deliberately broken.",),
    n_images=None, input_kind="events", site="various cytometers",
)

for _info in (PBC, ALL_ARIA):
    register_dataset(_info, _load_class_folders)
for _info in (WBC_SEG, WBC_SEG_1, WBC_SEG_2):
    register_dataset(_info, _load_wbc_seg)
register_dataset(BCCD, _load_voc)
register_dataset(DEEPAPL, _load_deepapl)
for _info in (GOLUB, BALL_RNASEQ, DDPR, FLOW_FORMATS):
    register_dataset(_info, _load_files)
