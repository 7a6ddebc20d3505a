"""The model card: one typed schema for every kind of leukodx model.

A card says what a model is (``task``, ``classes``, the input it expects), what it learnt from
(``data``: dataset, fingerprint, split sha256, licence), how well it does (``metrics``, every
figure with its 95% CI where one was computed), how it was made (``training``, ``provenance``:
git commit, exact argv, library versions) and which weights it belongs to (``sha256``).
Task-specific fields (``arch`` and ``preprocess`` of an image classifier, ``detector`` of a
detector, ...) sit beside the common ones; :data:`TASKS` names the ones each task requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from leukodx._versions import provenance as _provenance
from leukodx.errors import InvalidInputError

SCHEMA_VERSION = 1

#: task -> fields its card must carry beyond the common ones
TASKS: dict[str, tuple[str, ...]] = {
    "image-classification": ("arch", "preprocess"),
    "detection": ("detector",),
    "segmentation": ("segmenter",),
    "flow-cell-classification": ("markers", "transform", "layers", "threshold"),
    "expression-classification": ("genes", "method", "pipeline"),
    "patient-classification": ("cell_model", "cell_model_sha256", "cell_classes", "features", "method"),
}

#: task names written by leukodx 0.1 bundles, read as their current names
LEGACY_TASKS = {
    "image classification": "image-classification",
    "leukemic (1) vs healthy (0) single cell": "flow-cell-classification",
}


#: JSON types of the common card fields (a task's own fields are checked by the code that reads them)
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str, "task": str, "classes": list, "data": dict, "metrics": dict, "training": dict, "provenance": dict,
    "intended_use": str, "limits": (list, str), "weights": str, "sha256": str, "size_bytes": int, "schema": int,
    "kind": str, "structures": list, "int8": dict, "site_statistics": dict,
}


_JSON_NAMES = {list: "a list", str: "a string", dict: "an object", int: "an integer", float: "a number",
               bool: "true or false", type(None): "null"}


@dataclass
class ModelCard:
    """The common fields of every card; ``spec`` holds the task-specific ones (stored flat in JSON)."""

    name: str
    task: str
    classes: list[str]
    data: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    intended_use: str = "Research use. Not a medical device."
    limits: list[str] = field(default_factory=list)
    weights: str = "model.safetensors"
    sha256: str | None = None
    size_bytes: int | None = None
    schema: int = SCHEMA_VERSION
    spec: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, card: Any, source: str | Path = "card") -> "ModelCard":
        """Validate a card read from JSON; one ``InvalidInputError`` line naming ``source`` if it is unusable."""
        if not isinstance(card, dict):
            raise InvalidInputError(f"{source}: model card is not a JSON object")
        for key, types in FIELD_TYPES.items():
            if card.get(key) is not None and not isinstance(card[key], types):
                wanted = " or ".join(_JSON_NAMES[t] for t in (types if isinstance(types, tuple) else (types,)))
                raise InvalidInputError(f"{source}: card field {key!r} must be {wanted}, "
                                        f"not {_JSON_NAMES.get(type(card[key]), type(card[key]).__name__)}")
        card = normalize(card)
        task = card.get("task")
        if task not in TASKS:
            raise InvalidInputError(f"{source}: unknown task {task!r} (known: {', '.join(TASKS)})")
        required = ("name", "classes", "sha256") + TASKS[task]
        missing = [k for k in required if card.get(k) in (None, "", [])]
        if missing:
            raise InvalidInputError(f"{source}: card of a {task} model lacks {', '.join(missing)}")
        if not isinstance(card["classes"], list) or not all(isinstance(c, str) for c in card["classes"]):
            raise InvalidInputError(f"{source}: card 'classes' must be a list of names")
        names = {f.name for f in fields(cls)} - {"spec"}
        common = {k: card[k] for k in names if k in card}
        if isinstance(common.get("limits"), str):
            common["limits"] = [common["limits"]]
        return cls(**common, spec={k: v for k, v in card.items() if k not in names})

    def to_dict(self) -> dict:
        out = {"schema": self.schema, "name": self.name, "task": self.task, "classes": list(self.classes)}
        out.update(self.spec)
        for key in ("data", "metrics", "training", "provenance", "intended_use", "limits", "weights", "sha256",
                    "size_bytes"):
            out[key] = getattr(self, key)
        return out


def normalize(card: dict) -> dict:
    """Read an older card as the current schema (task names, flow's ``kind``, segmenters' ``structures``)."""
    card = dict(card)
    task = card.get("task")
    if task in LEGACY_TASKS:
        card["task"] = LEGACY_TASKS[task]
    if card.get("kind") == "flow-cell-classifier":
        card["task"] = "flow-cell-classification"
        card.pop("kind")
    if card.get("task") == "segmentation" and not card.get("classes") and card.get("structures"):
        card["classes"] = list(card["structures"])
    if "provenance" not in card and ("versions" in card or "command" in card or "created" in card):
        card["provenance"] = {"created": card.get("created"), "argv": card.get("command"),
                              "git_commit": None, "versions": card.get("versions", {})}
    return card


def build_card(name: str, task: str, classes: list[str], *, data: dict, metrics: dict | None = None,
               training: dict | None = None, intended_use: str | None = None, limits: list[str] | None = None,
               argv: list[str] | None = None, **spec: Any) -> dict:
    """The one place a card is assembled: common fields, task-specific ``spec``, and provenance."""
    if task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    card = ModelCard(name=name, task=task, classes=list(classes), data=data, metrics=metrics or {},
                     training=training or {}, provenance=_provenance(argv),
                     intended_use=intended_use or "Research use. Not a medical device.",
                     limits=list(limits or []), spec=spec)
    return card.to_dict()

