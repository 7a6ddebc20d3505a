"""The one model door: ``load(name_or_path)`` for every kind of leukodx model, ``list_models(task)``.

A bundle's card says its task; each task has one loader, named here as data (timm's registry
idea), so the door is written once for classifiers, detectors, segmenters, flow, expression and
patient-level models alike.
"""

from __future__ import annotations

import importlib
import os

from leukodx.models.bundle import bundled_models, read_card, resolve_bundle
from leukodx.models.card import TASKS

#: task -> "module:attribute" of the callable that loads a bundle folder of that task
LOADERS: dict[str, str] = {
    "image-classification": "leukodx.inference.classifier:Classifier.load",
    "detection": "leukodx.smear.detector:load_detector",
    "segmentation": "leukodx.smear.segmentation:load_segmenter",
    "flow-cell-classification": "leukodx.cytometry.classifier:CellClassifier.load",
    "expression-classification": "leukodx.omics.bundle:ExpressionModel.load",
    "patient-classification": "leukodx.inference.patient:PatientModel.load",
}
assert set(LOADERS) == set(TASKS)


def _loader(task: str):
    module, attribute = LOADERS[task].split(":")
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def load(name_or_path: str | os.PathLike, task: str | None = None, **kwargs):
    """Any bundled model by name, or a bundle folder: the card decides which loader runs.

    ``task`` (optional) refuses a bundle of another task; ``kwargs`` go to the loader (e.g.
    ``backend="torch"`` for an image classifier).
    """
    directory = resolve_bundle(name_or_path, task=task)
    # with a task, that task's loader runs and its bundle check refuses a card of any other task
    return _loader(task or read_card(directory)["task"])(directory, **kwargs)


def list_models(task: str | None = None) -> list[str]:
    """Names of the bundled models, optionally of one task (see ``leukodx.models.card.TASKS``)."""
    return bundled_models(task)


def describe(name_or_path: str | os.PathLike) -> dict:
    """One line's worth of facts about a bundle: name, task, classes, headline test figure."""
    directory = resolve_bundle(name_or_path)
    card = read_card(directory)
    return {"name": card["name"], "folder": str(directory), "task": card["task"], "classes": card["classes"],
            "headline": headline(card), "sha256": card["sha256"], "size_bytes": card.get("size_bytes")}


def headline(card: dict) -> str:
    """The card's main held-out figure, as text."""
    m = card.get("metrics", {})
    task = card["task"]
    if task == "image-classification":
        acc = m.get("test", {}).get("accuracy", {})
        return f"test accuracy {acc['value']:.4f}" if acc.get("value") is not None else "no test figure"
    if task == "detection":
        ap = m.get("test", {}).get("ap50", {})
        return "test AP@0.5 " + ", ".join(f"{c} {_value(v):.3f}" for c, v in ap.items() if _value(v) is not None)
    if task == "segmentation":
        return "test nucleus Dice " + ", ".join(f"{ds} {r['nucleus']['dice']:.3f}" for ds, r in m.get("test", {}).items())
    if task == "flow-cell-classification":
        test = card.get("test") or {}
        return f"held-out cell AUROC {test['auroc']:.4f}" if "auroc" in test else "no held-out figure"
    if task == "patient-classification":
        a = m.get("auroc_unseen_patients") or {}
        return (f"patient-CV AUROC {a['value']:.3f} ({a['n_patients']} patients unseen by its cell model)"
                if a.get("value") is not None else "no cross-validated figure")
    held = m.get("independent")
    loocv = m.get("loocv", {})
    text = f"leave-one-out errors {loocv.get('errors')}/{loocv.get('n')}"
    return text + (f", independent {held['correct']}/{held['n']}" if held else "")


def _value(v):
    return v.get("value") if isinstance(v, dict) else v
