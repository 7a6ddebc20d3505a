"""Image sets as sites: each registered single-cell set is one lab and scanner, with its saved split.

:func:`site_sides` gives a site's train / val / test on the shared vocabulary (top level), the
unit both the leave-one-site-out protocol and multi-site training work with. The split of every
site is a committed file, so its sha256 goes into every card and result that uses it.
"""

from __future__ import annotations

import json
from pathlib import Path

from leukodx._hashing import sha256_file
from leukodx.data.folder import ImageIndex
from leukodx.data.registry import load_dataset
from leukodx.data.splits import BUNDLED_SPLITS, apply_split, bundled_split_path, load_split
from leukodx.data.vocabulary import to_common
from leukodx.errors import InvalidInputError

#: the single-cell sets from different labs and scanners (see ``leukodx datasets list`` for each one's site)
CELL_SITES = ("pbc", "deepapl", "wbc-seg-1", "wbc-seg-2")
_SEGMENTATION_SPLIT = BUNDLED_SPLITS / "wbc-seg-segmentation.json"


def site_split(site: str) -> tuple[dict, Path]:
    """A site's saved split and the file it is kept in (the segmentation sets share one file)."""
    if site.startswith("wbc-seg-"):
        saved = json.loads(_SEGMENTATION_SPLIT.read_text())
        key = f"Dataset-{site.removeprefix('wbc-seg-')}"
        if key not in saved:
            raise InvalidInputError(f"{site}: no saved split in {_SEGMENTATION_SPLIT}")
        return {"dataset": site, **saved[key]}, _SEGMENTATION_SPLIT
    path = bundled_split_path(site)
    if not path.exists():
        raise InvalidInputError(f"{site}: no saved split at {path} (make one with `leukodx datasets split {site}`)")
    return load_split(path), path


def site_sides(site: str, data_root=None, coarse: bool = True) -> dict[str, ImageIndex]:
    """train / val / test of one site relabelled onto the vocabulary (its top level when ``coarse``);
    each side's ``meta["dataset_fingerprint"]`` is the whole set's."""
    index = load_dataset(site, data_root)
    if not isinstance(index, ImageIndex):
        raise InvalidInputError(f"{site}: not a single-cell image set")
    split, _ = site_split(site)
    sides = {name: to_common(side, coarse=coarse) for name, side in apply_split(index, split).items()}
    fingerprint = index.fingerprint()  # of the whole set as listed on disk, for cards and results
    for side in sides.values():
        side.meta = {**side.meta, "dataset_fingerprint": fingerprint}
    return sides


def split_record(site: str) -> dict:
    """How a card names a site's split: the file and its sha256."""
    _, path = site_split(site)
    return {"split": f"leukodx/data/splits/{path.name}", "split_sha256": sha256_file(path)}
