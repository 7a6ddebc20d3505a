"""Stratified, seeded, group-aware splits, saved to a file so every later run reuses them.

A split file lists relative paths per side; it is checked against the dataset when applied,
so a changed dataset cannot silently reuse a stale split.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from leukodx import _atomic
from leukodx.data.folder import ImageIndex
from leukodx.errors import InvalidInputError

SPLIT_NAMES = ("train", "val", "test")
BUNDLED_SPLITS = Path(__file__).parent / "splits"


def _holdout(y: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held) with ~``fraction`` held out, stratified, never splitting a group."""
    idx = np.arange(len(y))
    if groups is None:
        keep, held = train_test_split(idx, test_size=fraction, stratify=y, random_state=seed)
        return np.sort(keep), np.sort(held)
    n_splits = max(2, int(round(1.0 / fraction)))
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    keep, held = next(sgkf.split(idx, y, groups))
    return np.sort(keep), np.sort(held)


def make_split(index: ImageIndex, val: float = 0.15, test: float = 0.15, seed: int = 0,
               groups: np.ndarray | None = None, group_method: str = "none") -> dict:
    """Stratified train/val/test split of ``index`` as a split-file dict."""
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise InvalidInputError(f"split fractions val={val}, test={test}: each in (0, 1), sum < 1")
    counts = np.bincount(index.labels, minlength=len(index.classes))
    if counts.min() < 3:
        small = index.classes[int(counts.argmin())]
        raise InvalidInputError(f"{index.name}: class {small!r} has {counts.min()} image(s); 3 needed to split")
    groups = groups if groups is not None else index.groups
    rest, test_idx = _holdout(index.labels, groups, test, seed)
    sub_groups = None if groups is None else groups[rest]
    tr, va = _holdout(index.labels[rest], sub_groups, val / (1 - test), seed + 1)
    sides = {"train": rest[tr], "val": rest[va], "test": test_idx}
    return _split_dict(index, {k: sorted(index.paths[i] for i in v) for k, v in sides.items()},
                       seed=seed, method="holdout", fractions={"val": val, "test": test},
                       group_method=group_method if groups is not None else "none")


def make_patient_split(index: ImageIndex, val: float = 0.15, test: float = 0.15, seed: int = 0) -> dict:
    """Patient-level train/val/test split: every patient's images on one side, patients stratified by
    their diagnosis (``index.meta["diagnosis"]``, patient -> label) when the index has one."""
    if index.groups is None:
        raise InvalidInputError(f"{index.name}: no patient ids to split by (use --group near-duplicates or none)")
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise InvalidInputError(f"split fractions val={val}, test={test}: each in (0, 1), sum < 1")
    patients = np.array(sorted(set(index.groups.tolist())))
    diagnosis = index.meta.get("diagnosis") or {}
    strata = np.array([diagnosis.get(p, "") for p in patients])
    stratify = strata if len(set(strata)) > 1 else None
    rest, test_p = train_test_split(patients, test_size=test, stratify=stratify, random_state=seed)
    rest_strata = None if stratify is None else np.array([diagnosis.get(p, "") for p in rest])
    train_p, val_p = train_test_split(rest, test_size=val / (1 - test), stratify=rest_strata, random_state=seed + 1)
    side_of = {**{p: "train" for p in train_p}, **{p: "val" for p in val_p}, **{p: "test" for p in test_p}}
    sides = {name: sorted(index.paths[i] for i in range(len(index)) if side_of[index.groups[i]] == name)
             for name in SPLIT_NAMES}
    return _split_dict(index, sides, seed=seed, method="patient holdout", fractions={"val": val, "test": test},
                       group_method="patient", stratified_by="diagnosis" if stratify is not None else "none",
                       patients={name: sorted(p for p, s in side_of.items() if s == name) for name in SPLIT_NAMES})


def make_kfold(index: ImageIndex, k: int = 5, seed: int = 0, groups: np.ndarray | None = None,
               group_method: str = "none") -> dict:
    """Stratified (group-aware when groups are given) k-fold: ``folds[i]`` is fold i's held-out paths."""
    groups = groups if groups is not None else index.groups
    idx = np.arange(len(index))
    splitter = (StratifiedKFold(k, shuffle=True, random_state=seed) if groups is None
                else StratifiedGroupKFold(k, shuffle=True, random_state=seed))
    folds = [sorted(index.paths[i] for i in held) for _, held in splitter.split(idx, index.labels, groups)]
    return _split_dict(index, {"folds": folds}, seed=seed, method=f"{k}-fold", fractions={},
                       group_method=group_method if groups is not None else "none")


def _split_dict(index: ImageIndex, sides: dict, **info) -> dict:
    return {
        "dataset": index.name,
        "dataset_fingerprint": index.fingerprint(),
        "classes": list(index.classes),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **info,
        **sides,
    }


def save_split(split: dict, path: str | os.PathLike) -> None:
    _atomic.write_json(path, split)


def load_split(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: split file not found")
    try:
        split = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not a valid split file ({exc.msg})") from None
    if not isinstance(split, dict) or not any(k in split for k in (*SPLIT_NAMES, "folds")):
        raise InvalidInputError(f"{path}: split file has no train/val/test lists or folds")
    sides = [(k, split[k]) for k in SPLIT_NAMES if k in split]
    folds = split.get("folds", [])
    if not isinstance(folds, list):
        raise InvalidInputError(f"{path}: 'folds' must be a list of file lists")
    sides += [(f"folds[{i}]", fold) for i, fold in enumerate(folds)]
    for name, files in sides:
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise InvalidInputError(f"{path}: '{name}' must be a list of file names")
    return split


def apply_split(index: ImageIndex, split: dict) -> dict[str, ImageIndex]:
    """Subsets of ``index`` for each side of ``split``; fails if a listed file is not in the index."""
    position = {p: i for i, p in enumerate(index.paths)}
    out = {}
    sides = {name: split[name] for name in SPLIT_NAMES if name in split}
    for i, fold in enumerate(split.get("folds", [])):
        sides[f"fold{i}"] = fold
    for name, paths in sides.items():
        missing = [p for p in paths if p not in position]
        if missing:
            raise InvalidInputError(
                f"split for {split.get('dataset')}: {len(missing)} file(s) of '{name}' are not in "
                f"{index.root} (e.g. {missing[0]}); the dataset changed since the split was made"
            )
        out[name] = index.subset([position[p] for p in paths])
    return out


def bundled_split_path(dataset: str) -> Path:
    return BUNDLED_SPLITS / f"{dataset}.json"
