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
from pathlib import Path

from leukodx import _atomic
from leukodx._hashing import sha256_file
from leukodx.errors import IntegrityError, InvalidInputError

SITE_STATS_FILE = "site_statistics.safetensors"
_SEP = "/"


def save_site_statistics(directory: str | os.PathLike, statistics: dict[str, dict], images: dict[str, int]) -> dict:
    """Write ``statistics`` (site -> ``training.adaptation.batchnorm_statistics``) into a bundle folder; returns
    the card's ``site_statistics`` entry (file, sha256, and per site the images they were measured on)."""
    from leukodx.models.bundle import _save_tensors

    bad = [s for s in statistics if not s or _SEP in s]
    if bad:
        raise InvalidInputError(f"site names may not be empty or contain {_SEP!r}: {', '.join(map(repr, bad))}")
    path = Path(directory) / SITE_STATS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{site}{_SEP}{key}": value.contiguous() for site, stats in statistics.items()
               for key, value in stats.items()}
    with _atomic.atomic_path(path) as tmp:
        _save_tensors(tensors, tmp, {"kind": "leukodx site statistics"})
    return {"file": SITE_STATS_FILE, "sha256": sha256_file(path), "method": "batch-norm statistics per site",
            "sites": {site: {"images": int(images[site])} for site in statistics}}


def load_site_statistics(directory: str | os.PathLike | None, card: dict) -> dict[str, dict] | None:
    """site -> batch-norm statistics (torch tensors), checked against the card's sha256; None for a bundle
    that keeps none."""
    from leukodx.models.bundle import listed_file, load_tensors

    entry = card.get("site_statistics")
    if not entry or directory is None:
        return None
    path = listed_file(directory, entry, SITE_STATS_FILE)
    out: dict[str, dict] = {}
    for key, value in load_tensors(path, "pt").items():
        site, _, name = key.partition(_SEP)
        out.setdefault(site, {})[name] = value
    if set(out) != set(entry.get("sites", {})):
        raise IntegrityError(f"{path}: its sites ({', '.join(sorted(out))}) are not the card's")
    return {site: out[site] for site in entry["sites"]}  # the card's order (the file's keys come sorted)
