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

    @property
    def ok(self) -> bool:
        return self.checked > 0 and not self.missing and not self.mismatched


def verify_dataset(name: str, data_root: str | os.PathLike | None = None) -> VerifyReport:
    info = dataset_info(name)
    root = resolve_data_root(data_root)
    sums = root / "SHA256SUMS"
    if not sums.exists():
        raise DataNotFoundError(f"{sums}: checksum list missing, cannot verify {name}")
    prefix = f"./{info.subdir}/"
    report = VerifyReport(dataset=name)
    for line in sums.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        if not rel.startswith(prefix):
            continue
        path = root / rel[2:]
        report.checked += 1
        if not path.exists():
            report.missing.append(rel[2:])
        elif sha256_file(path) != digest:
            report.mismatched.append(rel[2:])
    return report
