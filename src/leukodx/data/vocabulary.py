"""The shared cell-type vocabulary (``vocabulary.json``, kept as data) and the mapping of every
dataset's labels onto it.

Common classes form a shallow tree: ``promyelocyte`` is a kind of ``immature_granulocyte``,
``segmented_neutrophil`` a kind of ``neutrophil``. :func:`to_common` relabels an image index onto
the vocabulary at the finest level its labels carry, or onto the top level (``coarse=True``),
which is how sets with different detail are compared.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from leukodx.errors import InvalidInputError

VOCABULARY_FILE = Path(__file__).with_name("vocabulary.json")



@functools.lru_cache(maxsize=1)
def vocabulary() -> dict:
    """The vocabulary file: ``classes`` (name -> parent, leukocyte) and ``datasets`` (label -> class)."""
    data = json.loads(VOCABULARY_FILE.read_text(encoding="utf-8"))
    classes = data["classes"]
    for name, entry in classes.items():
        parent = entry["parent"]
        if parent is not None and (parent not in classes or classes[parent]["parent"] is not None):
            raise InvalidInputError(f"{VOCABULARY_FILE}: {name}'s parent {parent!r} must be a top-level class")
    bad_alias = sorted(a for a, c in data["aliases"].items() if c not in classes)
    if bad_alias:
        raise InvalidInputError(f"{VOCABULARY_FILE}: aliases of unknown classes: {', '.join(bad_alias)}")
    for dataset, labels in data["datasets"].items():
        unknown = sorted(c for c in labels.values() if c is not None and c not in classes)
        if unknown:
            raise InvalidInputError(f"{VOCABULARY_FILE}: {dataset} maps to unknown classes {', '.join(unknown)}")
    return data


def common_classes(coarse: bool = False) -> list[str]:
    """Every class of the vocabulary (only the top level when ``coarse``)."""
    classes = vocabulary()["classes"]
    return [c for c, e in classes.items() if not coarse or e["parent"] is None]


def top_level(name: str) -> str:
    """A class's top-level class (itself when it has no parent)."""
    return vocabulary()["classes"][name]["parent"] or name


def normalize_label(name: str) -> str:
    """A class name as the vocabulary spells it: lower case, underscores, aliases resolved
    ("Immature granulocytes" and "ig" -> "immature_granulocyte")."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    return vocabulary()["aliases"].get(key, key)


def label_map(dataset: str, labels: list[str]) -> dict[str, str | None]:
    """``label -> common class`` for a dataset's labels: the vocabulary's entry for a registered set,
    else the labels themselves when they are vocabulary classes (any folder named by class)."""
    vocab = vocabulary()
    known = vocab["datasets"].get(dataset)
    if known is None:  # a folder of class sub-folders: names (or their aliases) must be vocabulary classes
        known = {}
        for label in labels:
            key = normalize_label(label)
            if key in vocab["classes"]:
                known[label] = key
    unknown = sorted(label for label in labels if label not in known)
    if unknown:
        raise InvalidInputError(f"{dataset}: class name(s) outside the cell-type vocabulary: {', '.join(unknown)} "
                                f"(vocabulary: {', '.join(vocab['classes'])})")
    return {label: known[label] for label in labels}


def to_common(index, coarse: bool = False):
    """``index`` relabelled onto the vocabulary (labels mapped to null are dropped); the relabelled
    index keeps paths, groups and meta, and records the mapping in ``meta["vocabulary"]``."""
    mapping = label_map(index.meta.get("dataset", index.name), list(index.classes))
    if coarse:
        mapping = {k: (top_level(v) if v else None) for k, v in mapping.items()}
    classes = [c for c in common_classes(coarse) if c in set(mapping.values())]
    position = {c: i for i, c in enumerate(classes)}
    keep = [i for i, y in enumerate(index.labels) if mapping[index.classes[y]] is not None]
    sub = index.subset(keep)
    sub.labels = np.asarray([position[mapping[sub.classes[y]]] for y in sub.labels], dtype=int)
    sub.classes = classes
    sub.meta = {**sub.meta, "vocabulary": {"coarse": coarse, "mapping": mapping}}
    return sub


def is_leukocyte(name: str) -> bool:
    """Whether a class (any spelling the vocabulary knows: "ig", "Immature granulocytes") enters a
    white-cell differential; erythroblasts, platelets, smudge cells and unknown names do not."""
    entry = vocabulary()["classes"].get(normalize_label(name))
    return bool(entry and entry["leukocyte"])


def leukocyte_classes(classes: list[str]) -> list[str]:
    """The classes of a model that are leukocytes, in the model's order and spelling."""
    return [c for c in classes if is_leukocyte(c)]
