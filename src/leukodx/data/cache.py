"""Decode a dataset once into a uint8 array at the model's input size, cached on disk.

Training for tens of epochs on 2 cores cannot afford to decode JPEGs every epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from leukodx.data.folder import ImageIndex
from leukodx.data.images import read_image
from leukodx.errors import InvalidInputError
from leukodx.preprocessing.transforms import Preprocess


def cache_dir() -> Path:
    return Path(os.environ.get("LEUKODX_CACHE", Path.home() / ".cache" / "leukodx"))


def _key(index: ImageIndex, pre: Preprocess) -> str:
    h = hashlib.sha256()
    h.update(str(index.root.resolve()).encode())
    h.update(index.fingerprint().encode())
    h.update(json.dumps(pre.as_dict(), sort_keys=True).encode())
    return h.hexdigest()[:20]


def decode_images(paths: list[Path], pre: Preprocess, progress: Callable[[int], None] | None = None,
                  workers: int = 2) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Read and preprocess ``paths``; returns the stack and the (position, error) of bad files."""
    out = np.zeros((len(paths), pre.size, pre.size, 3), dtype=np.uint8)
    errors: list[tuple[int, str]] = []

    def work(i: int) -> None:
        try:
            out[i] = pre(read_image(paths[i]))
        except InvalidInputError as exc:
            errors.append((i, str(exc)))
        if progress:
            progress(1)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(paths))))
    return out, sorted(errors)


def cached_arrays(index: ImageIndex, pre: Preprocess, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8 for every image of ``index``; a bad file is a fatal error here."""
    path = cache_dir() / f"{index.name}-{pre.size}-{_key(index, pre)}.npy"
    if path.exists():
        arr = np.load(path, mmap_mode=None, allow_pickle=False)
        if arr.shape[0] == len(index):
            return arr
    arr, errors = decode_images(index.abspaths(), pre, progress)
    if errors:
        first = errors[0][1]
        raise InvalidInputError(f"{len(errors)} unreadable image(s) in {index.name}, e.g. {first}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.npy")
    np.save(tmp, arr, allow_pickle=False)
    os.replace(tmp, path)
    return arr
