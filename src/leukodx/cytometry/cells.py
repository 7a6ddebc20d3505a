"""Single-cell tables: the tidytof DDPR cells (``flow/tidytof/ddpr_cells.csv``) or any CSV of
cells x markers with a sample column, and the saved cell-level split.

The DDPR table holds raw mass-cytometry intensities (values up to several thousand, small
negatives from CyTOF randomization), not arcsinh-transformed values as the data README says:
the FCS files of the same two samples show the same quantiles channel for channel. Models
therefore apply arcsinh(x / 5) themselves.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leukodx.cytometry.markers import canonical_marker
from leukodx.data.root import resolve_data_root
from leukodx._hashing import sha256_file
from leukodx.errors import DataNotFoundError, IntegrityError, InvalidInputError

DDPR_RELATIVE = Path("flow") / "tidytof" / "ddpr_cells.csv"
SPLIT_PATH = Path(__file__).resolve().parents[1] / "data" / "splits" / "ddpr-cells.json"
LEUKEMIC, HEALTHY = "leukemic", "healthy"


@dataclass
class CellTable:
    """Cells x markers (raw intensities), the sample each cell came from and its label."""

    values: np.ndarray        # (cells, markers) float64
    markers: list[str]        # canonical marker names
    samples: np.ndarray       # sample name per cell
    labels: np.ndarray        # 1 = leukemic, 0 = healthy
    source: Path
    sha256: str

    def subset(self, rows: np.ndarray) -> "CellTable":
        return CellTable(self.values[rows], self.markers, self.samples[rows], self.labels[rows], self.source, self.sha256)


def read_cell_table(path: str | os.PathLike, sample_column: str = "sample_name",
                    leukemic_pattern: str = r"^UPN") -> CellTable:
    """A CSV of cells: one sample column, the rest numeric marker intensities.

    A sample whose name matches ``leukemic_pattern`` is leukemic (in DDPR, UPN = patient at
    diagnosis; 'Healthy' = healthy donor).
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such cell table")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: not a readable CSV ({exc})") from None
    if sample_column not in frame.columns:
        raise InvalidInputError(f"{path}: no {sample_column!r} column (columns: {', '.join(frame.columns[:8])})")
    marker_columns = [c for c in frame.columns if c != sample_column]
    numeric = frame[marker_columns].apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & frame[marker_columns].notna()
    if bad.any().any():
        column = bad.any().idxmax()
        raise InvalidInputError(f"{path}: non-numeric value in column {column!r} row {int(bad[column].idxmax()) + 2}")
    if numeric.isna().any().any():
        column = numeric.isna().any().idxmax()
        raise InvalidInputError(f"{path}: missing value in column {column!r}")
    markers = [canonical_marker(c) for c in marker_columns]
    if len(set(markers)) != len(markers):
        raise InvalidInputError(f"{path}: two columns name the same marker ({marker_columns})")
    samples = frame[sample_column].astype(str).to_numpy()
    labels = pd.Series(samples).str.contains(leukemic_pattern, regex=True).to_numpy().astype(int)
    if len(np.unique(labels)) < 2:
        raise InvalidInputError(f"{path}: needs leukemic and healthy cells; found only "
                                f"{'leukemic' if labels.all() else 'healthy'} samples ({sorted(set(samples))})")
    return CellTable(numeric.to_numpy(np.float64), markers, samples, labels, path, sha256_file(path))


def read_ddpr(data_root: str | os.PathLike | None = None) -> CellTable:
    path = resolve_data_root(data_root) / DDPR_RELATIVE
    if not path.is_file():
        raise DataNotFoundError(f"{path}: DDPR cell table not found (expected under the data root)")
    return read_cell_table(path)


def make_cell_split(table: CellTable, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Held-out cells, stratified by sample, reproducible from the seed."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(table.labels))
    train, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=table.samples)
    return {"dataset": "ddpr-cells", "source_sha256": table.sha256, "seed": seed, "test_fraction": test_fraction,
            "stratify": "sample", "train": sorted(int(i) for i in train), "test": sorted(int(i) for i in test)}


def load_cell_split(table: CellTable, path: str | os.PathLike = SPLIT_PATH) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows of the saved split; refuses a table that changed since it was made."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: cell split not found")
    split = json.loads(path.read_text())
    if split["source_sha256"] != table.sha256:
        raise IntegrityError(f"{table.source}: cell table changed since the split {path} was made (sha256 differs)")
    return np.asarray(split["train"]), np.asarray(split["test"])
