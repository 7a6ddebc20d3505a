"""``leukodx train``: dataset + saved split + config -> a calibrated, evaluated model bundle."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from leukodx.data.cache import cached_arrays
from leukodx.data.folder import ImageIndex, limit_per_class
from leukodx.data.registry import dataset_info, list_datasets, load_dataset
from leukodx.data.splits import apply_split, bundled_split_path, load_split, make_split, save_split
from leukodx._hashing import sha256_file
from leukodx.errors import InvalidInputError
from leukodx.evaluation.metrics import classification_metrics
from leukodx.models.bundle import save_bundle
from leukodx.models.card import build_card
from leukodx.training.calibration import softmax
from leukodx.training.trainer import TrainConfig, device, fit, predict_logits

DEFAULT_ABSTAIN = 0.6


def resolve_split(index: ImageIndex, split_path: str | os.PathLike | None, seed: int) -> tuple[dict, str, Path | None]:
    """The split to use (the file given, else the bundled one, else a new seeded split), how to
    name it in a card, and the file it came from."""
    if split_path:
        return load_split(split_path), str(split_path), Path(split_path)
    bundled = bundled_split_path(index.name)
    if bundled.exists():
        return load_split(bundled), f"leukodx/data/splits/{bundled.name}", bundled
    return make_split(index, seed=seed), "generated", None


def train_from_dataset(dataset: str, out_dir: str | os.PathLike, config: TrainConfig, *, name: str | None = None,
                       split_path: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
                       max_per_class: int | None = None, resume: bool = False, show_progress: bool = True,
                       intended_use: str | None = None) -> dict:
    """Train, calibrate on val, evaluate on test with bootstrap CIs, write the bundle; returns its card."""
    started = time.time()
    out_dir = Path(out_dir)
    index = load_dataset(dataset, data_root)
    if not isinstance(index, ImageIndex):
        raise InvalidInputError(f"{dataset}: not an image-classification dataset")
    split, split_origin, split_file = resolve_split(index, split_path, config.seed)
    sides = apply_split(index, split)
    for side in ("train", "val", "test"):
        if side not in sides:
            raise InvalidInputError(f"split for {dataset} has no '{side}' list")
    train = limit_per_class(sides["train"], max_per_class, config.seed)
    val = limit_per_class(sides["val"], max_per_class and max(2, max_per_class // 3), config.seed)
    test = limit_per_class(sides["test"], max_per_class and max(2, max_per_class // 3), config.seed)
    used = ImageIndex(name=index.name, root=index.root, paths=train.paths + val.paths + test.paths,
                      labels=np.concatenate([train.labels, val.labels, test.labels]), classes=index.classes)
    arrays = cached_arrays(used, config.preprocess)
    n_tr, n_va = len(train), len(val)
    x_tr, x_va, x_te = arrays[:n_tr], arrays[n_tr:n_tr + n_va], arrays[n_tr + n_va:]

    if split_file is None:
        split_file = out_dir / "split.json"
        save_split(split, split_file)
        split_origin = str(split_file)
    result = fit(x_tr, train.labels, x_va, val.labels, len(index.classes), config, out_dir / "work",
                 resume=resume, show_progress=show_progress)
    test_proba = softmax(predict_logits(result.net, x_te, config.preprocess), result.temperature)
    val_proba = softmax(result.val_logits, result.temperature)
    test_metrics = classification_metrics(test.labels, test_proba, index.classes)
    val_metrics = classification_metrics(val.labels, val_proba, index.classes, n_boot=200, auroc_boot=0)

    info = dataset_info(dataset) if dataset in list_datasets() else None
    card = build_card(
        name or out_dir.name, "image-classification", list(index.classes),
        input_kind=info.input_kind if info else "cells", arch=config.arch, input_size=config.preprocess.size,
        preprocess=config.preprocess.as_dict(), temperature=result.temperature, abstain_below=DEFAULT_ABSTAIN,
        data={
            "dataset": dataset,
            "dataset_fingerprint": index.fingerprint(),
            "split": split_origin,
            "split_sha256": sha256_file(split_file),
            "split_method": split.get("method"), "split_groups": split.get("group_method"),
            "counts": {"train": train.class_counts(), "val": val.class_counts(), "test": test.class_counts()},
            "max_per_class": max_per_class,
            "source": info.source if info else str(index.root),
            "license": info.license if info else None,
            "citation": info.citation if info else None,
        },
        training={
            "config": config.as_dict(), "epochs_run": len(result.history), "best_epoch": result.best_epoch,
            "seconds": round(result.seconds, 1), "wall_seconds_with_decoding": round(time.time() - started, 1),
            "device": str(device()), "threads": torch.get_num_threads(),
            "history": result.history,
        },
        metrics={"split": "test", "test": test_metrics, "val": {k: val_metrics[k] for k in
                                                                ("accuracy", "macro_f1", "ece", "n")}},
        intended_use=intended_use or f"Research use: classify images like those of {dataset} into "
                                     f"{', '.join(index.classes)}. Not a medical device.",
        limits=list(info.limits) if info else ["Trained on a user folder; see its provenance."],
    )
    return save_bundle(out_dir, result.net, card)
