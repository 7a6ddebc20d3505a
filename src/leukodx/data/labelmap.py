"""Align the class lists of two datasets (case-insensitively, with synonyms) for cross-dataset tests."""

from __future__ import annotations

from dataclasses import dataclass

#: names different sources use for one cell type
SYNONYMS = {
    "neutrophils": "neutrophil", "segmented neutrophil": "neutrophil", "band neutrophil": "neutrophil",
    "lymphocytes": "lymphocyte", "monocytes": "monocyte", "eosinophils": "eosinophil", "basophils": "basophil",
    "immature granulocyte": "ig", "immature granulocytes": "ig", "platelets": "platelet",
    "erythroblasts": "erythroblast", "nrbc": "erythroblast",
}


def canonical(name: str) -> str:
    key = name.strip().lower().replace("_", " ")
    return SYNONYMS.get(key, key)


@dataclass
class LabelMap:
    shared: list[str]  # canonical names present in both
    source_to_target: dict[int, int]

    def __len__(self) -> int:
        return len(self.shared)


def align_classes(source: list[str] | tuple[str, ...], target: list[str] | tuple[str, ...]) -> LabelMap:
    """Classes two datasets share, and source index -> target index for each of them."""
    target_pos = {canonical(c): i for i, c in enumerate(target)}
    mapping = {i: target_pos[canonical(c)] for i, c in enumerate(source) if canonical(c) in target_pos}
    return LabelMap(shared=[canonical(source[i]) for i in mapping], source_to_target=mapping)
