"""Image-classification datasets as an index of (path, label): folders of class sub-folders."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukodx.data.images import is_image_file
from leukodx.errors import DataNotFoundError, InvalidInputError


@dataclass
class ImageIndex:
    """Paths, integer labels and class names of one image-classification dataset.

    ``root`` is the folder the relative ``paths`` hang from; ``groups`` (optional) holds a key per
    image that must never be split apart (a patient, a smear, a near-duplicate cluster).
    """

    name: str
    root: Path
    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    groups: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def abspath(self, i: int) -> Path:
        return self.root / self.paths[i]

    def abspaths(self) -> list[Path]:
        return [self.root / p for p in self.paths]

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def subset(self, indices) -> "ImageIndex":
        idx = np.asarray(indices, dtype=int)
        return ImageIndex(
            name=self.name,
            root=self.root,
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            classes=list(self.classes),
            groups=None if self.groups is None else self.groups[idx],
            meta=dict(self.meta),
        )

    def fingerprint(self) -> str:
        """A hash of the file list and labels: what a result was computed on (not the pixels)."""
        h = hashlib.sha256()
        for p, y in zip(self.paths, self.labels):
            h.update(f"{p}\t{self.classes[y]}\n".encode())
        return h.hexdigest()[:16]

    def content_key(self) -> str:
        """A key for results derived from the pixels (decoded-array and fingerprint caches): the
        root, the file list and labels, and each file's size, modification and change time. An image
        replaced under the same name (even with its old modification time kept) changes the key."""
        h = hashlib.sha256()
        h.update(f"{self.root.resolve()}\n{self.fingerprint()}\n".encode())
        for p in self.abspaths():
            try:
                st = p.stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}\n".encode())
            except OSError:
                h.update(b"missing\n")
        return h.hexdigest()[:20]


def index_image_folder(root: str | os.PathLike, name: str | None = None) -> ImageIndex:
    """Index a folder whose sub-folders are classes (the layout most labs keep)."""
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"{root}: folder not found")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise InvalidInputError(f"{root}: no class sub-folders found (expected ROOT/CLASS/image files)")
    classes: list[str] = []
    paths: list[str] = []
    labels: list[int] = []
    for d in class_dirs:
        files = sorted(
            str(p.relative_to(root)) for p in d.rglob("*") if p.is_file() and is_image_file(p)
        )
        if not files:
            continue
        classes.append(d.name)
        paths.extend(files)
        labels.extend([len(classes) - 1] * len(files))
    if not paths:
        raise InvalidInputError(f"{root}: the class sub-folders hold no image files")
    return ImageIndex(
        name=name or root.name, root=root, paths=paths, labels=np.asarray(labels, dtype=int), classes=classes
    )


def limit_per_class(index: ImageIndex, n: int | None, seed: int) -> ImageIndex:
    """At most ``n`` images of each class, drawn with a seeded permutation (``None``/0 = all)."""
    if not n:
        return index
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(len(index.classes)):
        members = np.flatnonzero(index.labels == c)
        keep.extend(rng.permutation(members)[:n].tolist())
    return index.subset(sorted(keep))
