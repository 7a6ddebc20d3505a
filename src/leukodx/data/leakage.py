"""Leakage audit: near-duplicate images that land on both sides of a split.

Candidates come from a 64-bit perceptual hash (DCT pHash, via ``imagehash``) within a Hamming
radius; each candidate is confirmed on 32x32 grayscale thumbnails (mean absolute difference),
because centred single-cell images share much of their low-frequency structure.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import imagehash
import numpy as np
from PIL import Image

from leukodx import _atomic
from leukodx.data.cache import cache_dir, writable_cache_dir
from leukodx.data.folder import ImageIndex
from leukodx.data.images import read_image
from leukodx.errors import LeukodxError


@dataclass
class Fingerprints:
    hashes: np.ndarray  # (N,) uint64 pHash
    thumbs: np.ndarray  # (N, 32, 32) uint8 grayscale
    readable: np.ndarray | None = None  # (N,) bool: False where the file could not be read (never paired)


def fingerprints(index: ImageIndex, workers: int = 2) -> Fingerprints:
    """pHash and thumbnail of every image (cached beside the array cache)."""
    name = f"fingerprints-{index.name}-{index.content_key()}.npz"
    path = cache_dir() / name
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            if "readable" in z:
                return Fingerprints(z["hashes"], z["thumbs"], z["readable"])
    hashes = np.zeros(len(index), dtype=np.uint64)
    thumbs = np.zeros((len(index), 32, 32), dtype=np.uint8)
    readable = np.zeros(len(index), dtype=bool)

    def work(i: int) -> None:
        try:
            im = Image.fromarray(read_image(index.abspath(i)))
        except LeukodxError:
            return  # unreadable files cannot leak; the audit lists them
        bits = imagehash.phash(im, hash_size=8).hash.flatten()
        hashes[i] = np.uint64(int("".join("1" if b else "0" for b in bits), 2))
        thumbs[i] = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BILINEAR))
        readable[i] = True

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(index))))
    folder = writable_cache_dir()
    if folder is not None:
        _atomic.save_npz(folder / name, hashes=hashes, thumbs=thumbs, readable=readable)
    return Fingerprints(hashes, thumbs, readable)


def near_duplicate_pairs(fp: Fingerprints, max_hamming: int = 6, max_thumb_diff: float = 6.0,
                         chunk: int = 1024) -> np.ndarray:
    """All pairs (i, j), i < j, of near-duplicates: (P, 2) int array."""
    h = fp.hashes
    readable = np.ones(len(h), dtype=bool) if fp.readable is None else fp.readable
    thumbs = fp.thumbs.reshape(len(h), -1).astype(np.int16)
    found = []
    for start in range(0, len(h), chunk):
        block = h[start:start + chunk]
        dist = np.bitwise_count(block[:, None] ^ h[None, :])
        ii, jj = np.nonzero(dist <= max_hamming)
        ii = ii + start
        keep = (jj > ii) & readable[ii] & readable[jj]
        ii, jj = ii[keep], jj[keep]
        if len(ii):
            diff = np.abs(thumbs[ii] - thumbs[jj]).mean(axis=1)
            ok = diff <= max_thumb_diff
            found.append(np.stack([ii[ok], jj[ok]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=int)


def duplicate_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over ``pairs``: a group id per image, so near-duplicates share one."""
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


@dataclass
class LeakageReport:
    dataset: str
    n_images: int
    n_pairs: int
    n_pairs_cross_class: int
    cross_split: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def audit(index: ImageIndex, split: dict | None = None, max_hamming: int = 6, max_thumb_diff: float = 6.0,
          n_examples: int = 20) -> LeakageReport:
    """Count near-duplicate pairs overall and across each pair of split sides."""
    fp = fingerprints(index)
    pairs = near_duplicate_pairs(fp, max_hamming, max_thumb_diff)
    side = np.full(len(index), "", dtype=object)
    if split is not None:
        pos = {p: i for i, p in enumerate(index.paths)}
        for name in ("train", "val", "test"):
            for p in split.get(name, []):
                if p in pos:
                    side[pos[p]] = name
    cross: dict[str, int] = {}
    examples = []
    for a, b in pairs:
        sa, sb = side[a], side[b]
        if split is not None and sa and sb and sa != sb:
            key = "-".join(sorted((sa, sb)))
            cross[key] = cross.get(key, 0) + 1
        if len(examples) < n_examples and (split is None or sa != sb):
            examples.append({
                "a": index.paths[a], "b": index.paths[b], "side_a": sa, "side_b": sb,
                "hamming": int(np.bitwise_count(fp.hashes[a] ^ fp.hashes[b])),
                "thumb_mad": round(float(np.abs(fp.thumbs[a].astype(int) - fp.thumbs[b]).mean()), 2),
                "same_class": bool(index.labels[a] == index.labels[b]),
            })
    return LeakageReport(
        dataset=index.name, n_images=len(index), n_pairs=int(len(pairs)),
        n_pairs_cross_class=int(sum(index.labels[a] != index.labels[b] for a, b in pairs)),
        cross_split=cross, examples=examples,
        settings={"hash": "pHash 64-bit", "max_hamming": max_hamming, "max_thumb_mad": max_thumb_diff},
        unreadable=[index.paths[i] for i in np.flatnonzero(~fp.readable)] if fp.readable is not None else [],
    )


def near_duplicate_groups(index: ImageIndex, max_hamming: int = 6, max_thumb_diff: float = 6.0) -> np.ndarray:
    """Group ids for a split that keeps near-duplicates on one side."""
    pairs = near_duplicate_pairs(fingerprints(index), max_hamming, max_thumb_diff)
    return duplicate_groups(len(index), pairs)
