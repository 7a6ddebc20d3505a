"""Evaluate a classifier on a labelled folder or a dataset split, with CIs and provenance."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from leukodx._versions import provenance, versions
from leukodx.data.folder import ImageIndex, index_image_folder
from leukodx.data.labelmap import align_classes
from leukodx.errors import InvalidInputError
from leukodx.evaluation.metrics import classification_metrics, reliability_curve
from leukodx.preprocessing.transforms import TTA


def match_classes(folder_classes: list[str], model_classes: list[str]) -> dict[str, int]:
    """Folder class name -> model class index (case-insensitive, with the label map's synonyms);
    folders of classes the model does not know are left out."""
    mapping = align_classes(folder_classes, model_classes)
    return {folder_classes[i]: j for i, j in mapping.source_to_target.items()}


def _streamed(classifier, paths, adapt_bn: bool, rows_to: Path, resume: bool, zoom: float | str | None = None,
              tta: bool = False) -> tuple[list[str], object, list[dict], int | None, object]:
    """Names, ``Scored`` (probabilities, OOD scores), errors of ``paths``, a chunk at a time, with
    ``adapt_bn`` the number of images the batch-norm statistics were re-estimated on (a first pass
    over every image), and the row file: each chunk's probabilities are appended to
    ``rows_to.partial.jsonl`` as they are made (``leukodx._rowfile.RowFile``), so ``resume``
    continues an interrupted evaluation without redoing finished images. ``zoom``: the magnification the
    images are read with (``Classifier.set_zoom``; 'auto' chooses it on ``paths``). ``tta``: probabilities
    averaged over each image's 8 orientations (``Classifier.with_tta``; OOD scores from the image as it is)."""
    from types import SimpleNamespace

    from leukodx._rowfile import RowFile, inputs_digest

    items = [(str(p), str(p)) for p in paths]
    classifier.set_zoom(zoom, items)
    rowfile = RowFile(rows_to, {"model": classifier.name, "model_sha256": classifier.card.get("sha256"),
                                "inputs_sha256": inputs_digest(n for n, _ in items), "n_inputs": len(items),
                                "adapt_bn": adapt_bn, "site": classifier.site, "tta": tta,
                                "zoom": classifier.preprocess.zoom, "backend": classifier.backend,
                                "precision": classifier.precision}, resume=resume, scratch=True)
    done = rowfile.start()
    todo = [item for item in items if item[0] not in done]
    runner, adapted = classifier.runners(items, adapt_bn, tta)  # AdaBN: every image, finished ones too
    try:
        for part in runner.stream(todo, adapted=adapted):
            ood = part.ood_scores if part.ood_scores is not None else [None] * len(part.rows)
            rowfile.append([{"input": r["input"]} for r in part.rows], part.errors,
                           [{"proba": [r["probabilities"][c] for c in classifier.classes],
                             "ood_score": None if s is None else float(s)} for r, s in zip(part.rows, ood)])
    except KeyboardInterrupt:
        from leukodx.errors import Interrupted

        rowfile.close()
        n = sum(1 for _ in rowfile.entries("row"))
        raise Interrupted(n, len(items), "images", f"{rowfile.partial} (rerun with --resume to finish)") from None
    rowfile.close()
    order = {name: i for i, (name, _) in enumerate(items)}
    kept = sorted(((order[e["row"]["input"]], e) for e in rowfile.lines() if "row" in e), key=lambda pair: pair[0])
    names = [e["row"]["input"] for _, e in kept]
    proba = np.asarray([e["proba"] for _, e in kept], dtype=float).reshape(-1, len(classifier.classes))
    scores = (np.asarray([e["ood_score"] for _, e in kept], dtype=float)
              if classifier.reliability is not None else None)
    n_adapted = adapted.card["test_time_adaptation"]["images"] if adapt_bn else None
    return (names, SimpleNamespace(proba=proba, ood_scores=scores), list(rowfile.entries("error")), n_adapted,
            rowfile)


def evaluate_index(classifier, index: ImageIndex, n_boot: int = 1000, seed: int = 0, adapt_bn: bool = False,
                   rows_to: str | os.PathLike | None = None, resume: bool = False,
                   zoom: float | str | None = None, tta: bool = False) -> dict:
    """Metrics of ``classifier`` on ``index`` (labels in the index's own class list); with
    ``adapt_bn``, the classifier's batch-norm statistics are first re-estimated on the index's images.
    Streamed: with ``rows_to`` (the result's file), each chunk's probabilities are kept in
    ``rows_to.partial.jsonl`` until the metrics are made, and ``resume`` continues an interrupted run;
    without it, in a temporary folder. ``zoom``: a magnification to read the images with, or 'auto'
    (``Classifier.set_zoom``). ``tta``: test-time augmentation (``Classifier.with_tta``)."""
    if rows_to is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="leukodx-evaluate-") as work:
            return evaluate_index(classifier, index, n_boot, seed, adapt_bn, Path(work) / "result.json",
                                  zoom=zoom, tta=tta)
    mapping = match_classes(index.classes, classifier.classes)
    if not mapping:
        raise InvalidInputError(
            f"{index.root}: none of its classes ({', '.join(index.classes)}) is a class of model "
            f"{classifier.name} ({', '.join(classifier.classes)})"
        )
    excluded = [c for c in index.classes if c not in mapping]
    keep = [i for i, y in enumerate(index.labels) if index.classes[y] in mapping]
    sub = index.subset(keep)
    # streamed: memory holds the probabilities, not the images (AdaBN reads the images once more first)
    names, scored, errors, n_adapted, rowfile = _streamed(classifier, sub.abspaths(), adapt_bn, Path(rows_to), resume,
                                                          zoom, tta)
    readable = set(names)
    y_model = np.array([mapping[sub.classes[sub.labels[i]]] for i, p in enumerate(sub.abspaths()) if str(p) in readable])
    if len(y_model) == 0:
        raise InvalidInputError(f"{index.root}: no readable image to evaluate ({len(errors)} unreadable)")
    proba = scored.proba
    metrics = classification_metrics(y_model, proba, classifier.classes, n_boot=n_boot, seed=seed)
    selective = None
    if classifier.reliability is not None:
        from leukodx.evaluation.reliability import reliability_figures

        # OOD rate, the batch shift verdict, conformal coverage / set size, accuracy of the most confident shares
        selective = reliability_figures(classifier.reliability, {"ood": scored.ood_scores, "proba": proba,
                                                                 "labels": y_model}, {})["in_site"]
        selective["shift_verdict"] = classifier.reliability.shift(scored.ood_scores)
    pred = proba.argmax(1)
    rowfile.partial.unlink(missing_ok=True)  # the caller writes the result next
    return {
        "model": classifier.name,
        "model_sha256": classifier.card.get("sha256"),
        "test_time_adaptation": {"method": "AdaBN", "images": int(n_adapted)} if adapt_bn else None,
        "site_statistics": classifier.site,  # the training site whose batch-norm statistics it ran with (--site)
        "zoom": classifier.zoom,  # the magnification the images were read with, and how it was chosen (--zoom)
        "test_time_augmentation": dict(TTA) if tta else None,  # probabilities averaged over 8 views (--tta)
        "images": str(index.root),
        "dataset_fingerprint": index.fingerprint(),
        "accuracy": metrics["accuracy"]["value"],
        "balanced_accuracy": metrics["balanced_accuracy"]["value"],
        "macro_f1": metrics["macro_f1"]["value"],
        "n": int(len(y_model)),
        "metrics": metrics,
        "classes": classifier.classes,
        "classes_in_data": sorted({classifier.classes[v] for v in mapping.values()}),
        "excluded_classes": excluded,
        "reliability": reliability_curve(y_model, proba),
        "selective": selective,
        "roc_inputs": {"y_true": y_model.tolist(), "proba": np.round(proba, 5).tolist()},
        "errors": errors,
        "misclassified": [
            {"input": names[i], "true": classifier.classes[y_model[i]], "predicted": classifier.classes[pred[i]],
             "probability": round(float(proba[i, pred[i]]), 4)}
            for i in np.flatnonzero(pred != y_model)[:200]
        ],
        "seed": seed,
        "backend": classifier.backend,
        "versions": versions(),
        "provenance": provenance(),
    }


def evaluate_folder(classifier, images: str | os.PathLike, **kwargs) -> dict:
    return evaluate_index(classifier, index_image_folder(Path(images)), **kwargs)


def evaluate_dataset(classifier, dataset: str, split: str = "test", split_file: str | os.PathLike | None = None,
                     data_root: str | os.PathLike | None = None, **kwargs) -> dict:
    """Metrics on one side (``train``/``val``/``test``) of a registered dataset's saved split, or ``all``."""
    from leukodx.data.registry import load_dataset
    from leukodx.data.splits import apply_split, bundled_split_path, load_split

    index = load_dataset(dataset, data_root)
    if not isinstance(index, ImageIndex):
        raise InvalidInputError(f"{dataset}: not an image-classification dataset")
    if split != "all":
        path = Path(split_file) if split_file else bundled_split_path(dataset)
        if not path.exists():
            raise InvalidInputError(f"{dataset}: no saved split at {path}; pass --split-file FILE or --split all")
        sides = apply_split(index, load_split(path))
        if split not in sides:
            raise InvalidInputError(f"{path}: no side named {split!r} (has {', '.join(sides)})")
        index = sides[split]
    result = evaluate_index(classifier, index, **kwargs)
    result["dataset"], result["split"] = dataset, split
    return result
