"""Decode a dataset once into a uint8 array at the model's input size, cached on disk.

Training for tens of epochs on 2 cores cannot afford to decode JPEGs every epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from leukodx import _atomic
from leukodx.data.folder import ImageIndex
from leukodx.data.images import read_image
from leukodx.errors import InvalidInputError
from leukodx.preprocessing.transforms import Preprocess

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("LEUKODX_CACHE", Path.home() / ".cache" / "leukodx"))


_warned: set[str] = set()


def writable_cache_dir(sub: str = "") -> Path | None:
    """``cache_dir()/sub``, created, if files can be written there; else ``None`` and one warning per
    process: a read-only or full cache makes work slower (nothing is kept), never fail."""
    import tempfile

    folder = cache_dir() / sub if sub else cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        return folder
    except OSError as exc:
        if str(folder) not in _warned:
            _warned.add(str(folder))
            log.warning("%s: cache folder cannot be written (%s); working without a cache (set LEUKODX_CACHE to "
                        "a writable folder)", folder, exc.strerror or type(exc).__name__)
        return None


def _key(index: ImageIndex, pre: Preprocess) -> str:
    h = hashlib.sha256()
    h.update(index.content_key().encode())
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
    name = f"{index.name}-{pre.size}-{_key(index, pre)}.npy"
    path = cache_dir() / name
    if path.exists():
        arr = np.load(path, mmap_mode=None, allow_pickle=False)
        if arr.shape[0] == len(index):
            return arr
    arr, errors = decode_images(index.abspaths(), pre, progress)
    if errors:
        first = errors[0][1]
        raise InvalidInputError(f"{len(errors)} unreadable image(s) in {index.name}, e.g. {first}")
    folder = writable_cache_dir()
    if folder is not None:
        _atomic.save_npy(folder / name, arr)
    return arr
