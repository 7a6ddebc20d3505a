"""Few-shot site adaptation: fine-tune a bundled cell classifier on k labelled cells per class from a
lab's own scanner, and write a new bundle that records its parent.

The adaptation images are a folder of class sub-folders named by the model's classes (or the
shared vocabulary's names and aliases). The recipe (``training.adaptation.few_shot_fit``):
batch-norm statistics re-estimated on the adaptation images (AdaBN), then every weight fine-tuned
from the parent's on the one training engine with those statistics held fixed. The figures
reported for the new bundle are cross-validated on the adaptation images (each fold fine-tuned
without the images it is scored on), since a few cells per class leave nothing else to test on.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from leukodx._hashing import sha256_file
from leukodx.data.cache import cached_arrays
from leukodx.data.folder import index_image_folder
from leukodx.data.labelmap import canonical
from leukodx.data.vocabulary import normalize_label
from leukodx.errors import InvalidInputError, LeukodxError
from leukodx.evaluation.metrics import classification_metrics
from leukodx.inference.classifier import Classifier
from leukodx.models.bundle import save_bundle
from leukodx.models.card import build_card
from leukodx.models.features import last_linear
from leukodx.models.reliability import aps_scores, attach_reliability, fit_ood_crossfit
from leukodx.preprocessing.augment import augment_preset
from leukodx.training.adaptation import few_shot_fit, has_batchnorm
from leukodx.training.calibration import fit_temperature, network_outputs, softmax
from leukodx.training.trainer import TrainConfig, predict_logits

log = logging.getLogger("leukodx.adapt")
MIN_PER_CLASS = 2
#: the fine-tuning recipe's defaults (epochs over the k cells per class, one-cycle peak learning rate)
EPOCHS = 30
LR = 3e-4


def _key(name: str) -> str:
    return canonical(normalize_label(name))


def map_classes(folder_classes: list[str], model_classes: list[str], source: str) -> dict[str, int]:
    """Folder class -> model class index (names, synonyms and vocabulary aliases); unknown ones refused."""
    model_keys = {_key(c): i for i, c in enumerate(model_classes)}
    mapping, unknown = {}, []
    for c in folder_classes:
        k = _key(c)
        if k in model_keys:
            mapping[c] = model_keys[k]
        else:
            unknown.append(c)
    if unknown:
        raise InvalidInputError(f"{source}: class(es) the model does not have: {', '.join(unknown)} "
                                f"(model classes: {', '.join(model_classes)})")
    return mapping


def overlaps_training_data(clf: Classifier, images: Path, data_root=None) -> str | None:
    """A warning when the adaptation folder lies inside the model's own training dataset."""
    from leukodx.data.registry import dataset_info, list_datasets
    from leukodx.data.root import resolve_data_root

    dataset = clf.card.get("data", {}).get("dataset")
    if dataset not in list_datasets():
        return None
    try:
        root = (resolve_data_root(data_root) / dataset_info(dataset).subdir).resolve()
    except LeukodxError:  # no data root here: nothing to compare with
        return None
    here = images.resolve()
    if here == root or root in here.parents:
        return (f"{images}: these images belong to {dataset}, the data {clf.name} was trained on; "
                "adaptation figures on them say nothing about another site")
    return None


def fine_tune_config(arch: str, preprocess, n_images: int, epochs: int = EPOCHS, lr: float = LR,
                     seed: int = 0) -> TrainConfig:
    """The fine-tuning recipe (``few_shot_fit`` adds the parent's weights and frozen batch norm): light
    augmentation, every epoch run (no early stop), batches of a third of the images up to 16, so even
    k = 5 per class gives a few steps per epoch."""
    return TrainConfig(arch=arch, epochs=epochs, batch_size=max(2, min(16, n_images // 3)), lr=lr, patience=epochs,
                       seed=seed, preprocess=preprocess, augment=augment_preset("light"))


def adapt(model: str | os.PathLike, images: str | os.PathLike, output: str | os.PathLike, epochs: int | None = None,
          lr: float | None = None, seed: int = 0, name: str | None = None, data_root=None,
          show_progress: bool = False, zoom: float | str | None = None) -> dict:
    """Fine-tune ``model`` on the labelled cells under ``images``; write and return the new bundle's card.
    ``zoom`` (``Classifier.set_zoom``: a number, or 'auto' to choose it on these images without their labels):
    the magnification the lab's cells are read with, in the fine-tuning and in every later use of the new
    bundle (its card's preprocessing keeps it)."""
    images, output = Path(images), Path(output)
    clf = Classifier.load(model, backend="torch")
    index = index_image_folder(images)
    mapping = map_classes(index.classes, clf.classes, str(images))
    counts = index.class_counts()
    few = {c: n for c, n in counts.items() if n < MIN_PER_CLASS}
    if few:
        raise InvalidInputError(f"{images}: adaptation needs at least {MIN_PER_CLASS} images per class "
                                f"({', '.join(f'{c} has {n}' for c, n in few.items())})")
    epochs, lr = EPOCHS if epochs is None else epochs, LR if lr is None else lr
    if epochs < 1 or not (0 < lr < 1):
        raise InvalidInputError(f"epochs {epochs}, lr {lr}: epochs >= 1 and 0 < lr < 1")
    warning = overlaps_training_data(clf, images, data_root)
    if warning:
        log.warning(warning)
    clf.set_zoom(zoom, [(str(p), str(p)) for p in index.abspaths()])
    x = cached_arrays(index, clf.preprocess)
    y = np.asarray([mapping[index.classes[v]] for v in index.labels], dtype=int)
    parent_weights = Path(clf.bundle_dir) / str(clf.card.get("weights", "model.safetensors"))
    config = fine_tune_config(clf.card["arch"], clf.preprocess, len(y), epochs, lr, seed)
    k = len(clf.classes)

    # cross-validated figures: each fold fine-tuned without the images it is scored on
    folds = min(3, min(counts.values()))
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=int)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold_of[members] = np.arange(len(members)) % folds
    oof_logits = np.zeros((len(y), k), dtype=np.float64)
    fold_features = []  # every image as each fold's network sees it: the OOD threshold's held-out scores
    parent_logits = predict_logits(clf.net, x, clf.preprocess)
    with tempfile.TemporaryDirectory() as work:
        for f in range(folds):
            tr, te = fold_of != f, fold_of == f
            result = few_shot_fit(clf.net, x[tr], y[tr], k, config, Path(work) / f"fold{f}")
            logits, features = network_outputs(result.net, x, clf.preprocess)
            oof_logits[te] = logits[te]
            fold_features.append(features)
        final = few_shot_fit(clf.net, x, y, k, config, Path(work) / "final", show_progress=show_progress)
    temperature = fit_temperature(oof_logits, y)
    present = sorted(set(y.tolist()))
    cv = classification_metrics(y, softmax(oof_logits, temperature), clf.classes, n_boot=500)
    before = classification_metrics(y, softmax(parent_logits, clf.temperature), clf.classes, n_boot=500)
    card = build_card(
        name or output.name, "image-classification", clf.classes,
        input_kind=clf.card.get("input_kind", "cells"), arch=clf.card["arch"], input_size=clf.preprocess.size,
        preprocess=clf.preprocess.as_dict(), temperature=temperature, abstain_below=clf.abstain_below,
        parent={"name": clf.name, "sha256": clf.card["sha256"], "data": clf.card.get("data", {}).get("dataset")},
        data={"dataset": clf.card.get("data", {}).get("dataset"), "adaptation_images": str(images),
              "adaptation_fingerprint": index.fingerprint(), "adaptation_counts": counts,
              "adaptation_classes": [clf.classes[i] for i in present], "zoom": clf.zoom,
              "split_sha256": None, "parent_split_sha256": clf.card.get("data", {}).get("split_sha256")},
        metrics={"split": f"adaptation images, {folds}-fold cross-validated",
                 "adaptation_cv": {key: cv[key] for key in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "n")},
                 "parent_on_adaptation_images": {key: before[key] for key in ("accuracy", "macro_f1", "n")},
                 "parent_test": clf.card.get("metrics", {}).get("test", {}).get("accuracy")},
        training={"config": config.as_dict() | {"pretrained": f"parent {clf.name} ({clf.card['sha256'][:12]})",
                                                "freeze_batchnorm": has_batchnorm(clf.net),
                                                "recipe": "AdaBN on the adaptation images, then fine-tuning "
                                                          "with batch-norm statistics frozen"},
                  "folds": folds, "epochs": epochs, "seconds": round(final.seconds, 1),
                  "parent_weights_sha256": sha256_file(parent_weights)},
        intended_use=f"Research use: {clf.name} adapted to the site of {images}. Not a medical device.",
        limits=[f"Adapted on {len(y)} labelled images ({', '.join(f'{c} {n}' for c, n in counts.items())}); "
                "its figures are cross-validated on those few images.",
                "Its OOD threshold and conformal scores come from those few images too (cross-validated), so the "
                "false-alarm rate on new cells of this site is only roughly the nominal one.",
                *(clf.card.get("limits") or [])] + ([warning] if warning else []),
    )
    card = save_bundle(output, final.net, card)
    _, features = network_outputs(final.net, x, clf.preprocess)
    rel = fit_ood_crossfit(features, y, fold=fold_of, fold_features=fold_features,
                           pen_dim=last_linear(final.net).in_features,
                           fitted_on={"adaptation_images": int(len(y)),
                                      "method": "statistics of the adapted network's features (penultimate and style) "
                                                "of the adaptation images; threshold from each image scored by its "
                                                "cross-validation fold's network and statistics fitted without it; "
                                                "conformal scores from the cross-validated probabilities"})
    rel.conformal = np.sort(aps_scores(softmax(oof_logits, temperature), y))
    return attach_reliability(output, card, rel)
