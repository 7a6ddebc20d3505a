"""Cell-type vocabulary shared by every layer: the white-cell (leukocyte) classes leukodx counts."""

from __future__ import annotations

#: classes that enter a white-cell differential (pbc's names; erythroblasts and platelets are not leukocytes)
LEUKOCYTES = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")
