"""Check a dataset's files against the data root's ``SHA256SUMS``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from leukodx.data.registry import dataset_info
from leukodx.data.root import resolve_data_root
from leukodx._hashing import sha256_file
from leukodx.errors import DataNotFoundError


@dataclass
class VerifyReport:
    dataset: str
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    #: listed, present, but not readable as a file (a folder in its place, no permission): "path: reason"
    unreadable: list[str] = field(default_factory=list)
    #: present under the set's folder but not in SHA256SUMS (reported; not a failure)
    unlisted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.checked > 0 and not self.missing and not self.mismatched and not self.unreadable


def verify_dataset(name: str, data_root: str | os.PathLike | None = None) -> VerifyReport:
    info = dataset_info(name)
    root = resolve_data_root(data_root)
    sums = root / "SHA256SUMS"
    if not sums.exists():
        raise DataNotFoundError(f"{sums}: checksum list missing, cannot verify {name}")
    prefix = f"./{info.subdir}/"
    report = VerifyReport(dataset=name)
    listed = set()
    for line in sums.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        if not rel.startswith(prefix):
            continue
        path = root / rel[2:]
        listed.add(rel[2:])
        report.checked += 1
        if not path.exists():
            report.missing.append(rel[2:])
        elif path.is_dir():
            report.unreadable.append(f"{rel[2:]}: a folder where a file is listed")
        else:
            try:
                if sha256_file(path) != digest:
                    report.mismatched.append(rel[2:])
            except OSError as exc:
                report.unreadable.append(f"{rel[2:]}: {exc.strerror or type(exc).__name__}")
    folder = root / info.subdir
    if folder.is_dir():
        report.unlisted = sorted(str(q.relative_to(root)) for q in folder.rglob("*")
                                 if q.is_file() and str(q.relative_to(root)) not in listed)
    return report
