"""Per-site batch-norm statistics of a multi-site image classifier, kept in its bundle.

A network trained with one site per batch (``leukodx train --site-batches``) learns weights that work
under each site's own feature normalization (domain-specific batch norm): at a site it was trained on,
it is right to normalize with that site's statistics, and with statistics pooled over every site where
none is known (the bundle's own weights). The bundle keeps each training site's statistics in
``site_statistics.safetensors``, checked against the sha256 in the card's ``site_statistics`` entry;
``Classifier.load(..., site=NAME)`` (``--site`` on the command line) normalizes with them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukodx import _atomic
from leukodx._hashing import sha256_file
from leukodx.errors import IntegrityError, InvalidInputError

SITE_STATS_FILE = "site_statistics.safetensors"
_SEP = "/"
#: the key prefix of the site recognizer's arrays (no site name may start with "_")
_RECOGNIZER = "_recognizer"


@dataclass
class SiteRecognizer:
    """Which training site a cell looks like: a multinomial logistic regression on the standardized style part
    of its reliability features (``models.features.WithFeatures``, read from the bundle's own network), fitted on
    the training cells; its classes are the sites in the card's order."""

    center: np.ndarray     # (E,)
    scale: np.ndarray      # (E,)
    coef: np.ndarray       # (S, E)
    intercept: np.ndarray  # (S,)

    def sites(self, style: np.ndarray) -> np.ndarray:
        """Per row of style features (N, E), the index of the training site it looks like."""
        return (((np.asarray(style) - self.center) / self.scale) @ self.coef.T + self.intercept).argmax(axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"center": self.center, "scale": self.scale, "coef": self.coef, "intercept": self.intercept}


def save_site_statistics(directory: str | os.PathLike, statistics: dict[str, dict], images: dict[str, int],
                         recognizer: SiteRecognizer | None = None, recognition: dict | None = None) -> dict:
    """Write ``statistics`` (site -> ``training.adaptation.batchnorm_statistics``), and the ``recognizer`` that
    tells the sites apart, into a bundle folder; returns the card's ``site_statistics`` entry (file, sha256, per
    site the images the statistics were measured on, and ``recognition``: how often the recognizer names each
    site's validation cells right)."""
    import torch

    from leukodx.models.bundle import _save_tensors

    bad = [s for s in statistics if not s or _SEP in s or s.startswith("_")]
    if bad:
        raise InvalidInputError(f"site names may not be empty, start with '_' or contain {_SEP!r}: "
                                f"{', '.join(map(repr, bad))}")
    path = Path(directory) / SITE_STATS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{site}{_SEP}{key}": value.contiguous() for site, stats in statistics.items()
               for key, value in stats.items()}
    if recognizer is not None:
        tensors.update({f"{_RECOGNIZER}{_SEP}{k}": torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
                        for k, v in recognizer.arrays().items()})
    with _atomic.atomic_path(path) as tmp:
        _save_tensors(tensors, tmp, {"kind": "leukodx site statistics"})
    return {"file": SITE_STATS_FILE, "sha256": sha256_file(path), "method": "batch-norm statistics per site",
            "sites": {site: {"images": int(images[site])} for site in statistics},
            **({"recognizer": {"method": "multinomial logistic regression on the standardized style features",
                               **(recognition or {})}} if recognizer is not None else {})}


def load_site_statistics(directory: str | os.PathLike | None, card: dict
                         ) -> tuple[dict[str, dict], SiteRecognizer | None] | None:
    """(site -> batch-norm statistics (torch tensors), the site recognizer or None), checked against the card's
    sha256; None for a bundle that keeps none."""
    from leukodx.models.bundle import listed_file, load_tensors

    entry = card.get("site_statistics")
    if not entry or directory is None:
        return None
    path = listed_file(directory, entry, SITE_STATS_FILE)
    out: dict[str, dict] = {}
    for key, value in load_tensors(path, "pt").items():
        site, _, name = key.partition(_SEP)
        out.setdefault(site, {})[name] = value
    found = out.pop(_RECOGNIZER, None)
    if set(out) != set(entry.get("sites", {})) or (found is None) != ("recognizer" not in entry):
        raise IntegrityError(f"{path}: its sites ({', '.join(sorted(out))}) are not the card's")
    recognizer = None if found is None else SiteRecognizer(**{k: v.numpy() for k, v in found.items()})
    return {site: out[site] for site in entry["sites"]}, recognizer  # the card's order (the file's come sorted)
