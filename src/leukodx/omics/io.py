"""Expression matrices: the Golub ALL/AML set, ALLSorts B-ALL RNA-seq counts, and any CSV/TSV/GCT.

Everything becomes an ``ExpressionSet``: samples x genes values with gene ids, optional gene
symbols/descriptions, sample ids and labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from leukodx.data.root import resolve_data_root
from leukodx.errors import DataNotFoundError, InvalidInputError


@dataclass
class ExpressionSet:
    values: np.ndarray  # (n_samples, n_genes) float64
    genes: list[str]  # gene / probe ids, unique
    samples: list[str]
    labels: np.ndarray | None = None  # class names per sample
    gene_names: list[str] | None = None  # symbols or descriptions, aligned with genes
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.samples), len(self.genes)):
            raise InvalidInputError(f"expression matrix shape {self.values.shape} does not match "
                                    f"{len(self.samples)} samples x {len(self.genes)} genes")

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist())) if self.labels is not None else []


def _check_values(frame: pd.DataFrame, name: str) -> np.ndarray:
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & frame.notna()
    if bad.to_numpy().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise InvalidInputError(f"{name}: non-numeric value {frame.iat[r, c]!r} at gene {frame.index[r]!r}, "
                                f"sample {frame.columns[c]!r}")
    if numeric.isna().to_numpy().any():
        r, c = np.argwhere(numeric.isna().to_numpy())[0]
        raise InvalidInputError(f"{name}: missing value (NaN) at gene {frame.index[r]!r}, sample {frame.columns[c]!r}")
    values = numeric.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise InvalidInputError(f"{name}: infinite value at gene {frame.index[r]!r}, sample {frame.columns[c]!r}")
    return values


def _unique_genes(genes: list[str], name: str) -> None:
    seen, dupes = set(), []
    for g in genes:
        if g in seen:
            dupes.append(g)
        seen.add(g)
    if dupes:
        raise InvalidInputError(f"{name}: duplicate gene id {dupes[0]!r} ({len(dupes)} duplicates); ids must be unique")


GOLUB_ID_COLUMN = "Gene Accession Number"


def _read_golub_table(path: Path, raw: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Values and P/A/M calls (genes x samples) of one Golub CSV, whose sample columns are out of order."""
    if not path.exists():
        raise DataNotFoundError(f"{path}: file not found")
    raw = pd.read_csv(path) if raw is None else raw
    genes = raw["Gene Accession Number"].astype(str)
    sample_cols = [c for c in raw.columns if not c.startswith("call") and c not in ("Gene Description", "Gene Accession Number")]
    call_cols = [raw.columns[raw.columns.get_loc(c) + 1] for c in sample_cols]  # each sample's call follows it
    values = raw[sample_cols].copy()
    values.index = genes
    values.columns = [str(c).strip() for c in sample_cols]
    calls = raw[call_cols].copy()
    calls.index, calls.columns = genes, values.columns
    return values, calls, raw["Gene Description"].astype(str).tolist()


def read_golub(data_root: str | os.PathLike | None = None) -> tuple[ExpressionSet, ExpressionSet]:
    """(train 38, independent 34) joined to ``actual.csv`` by sample number; calls kept in ``meta``."""
    folder = resolve_data_root(data_root) / "golub"
    labels = pd.read_csv(folder / "actual.csv")
    label_of = {str(p): c for p, c in zip(labels["patient"], labels["cancer"])}
    out = []
    for name in ("data_set_ALL_AML_train.csv", "data_set_ALL_AML_independent.csv"):
        values, calls, descriptions = _read_golub_table(folder / name)
        samples = sorted(values.columns, key=int)
        missing = [s for s in samples if s not in label_of]
        if missing:
            raise InvalidInputError(f"{folder / 'actual.csv'}: no label for sample(s) {', '.join(missing)}")
        x = _check_values(values[samples], name).T
        out.append(ExpressionSet(values=x, genes=values.index.tolist(), samples=samples,
                                 labels=np.array([label_of[s] for s in samples]), gene_names=descriptions,
                                 meta={"source": str(folder / name), "calls": calls[samples].T.to_numpy()}))
    return out[0], out[1]


def read_ball_rnaseq(data_root: str | os.PathLike | None = None) -> ExpressionSet:
    folder = resolve_data_root(data_root) / "ball-rnaseq"
    counts = pd.read_csv(folder / "test_counts.csv", index_col=0)
    labels = pd.read_csv(folder / "test_labels.csv", header=None, index_col=0).iloc[:, 0]
    counts.index = counts.index.astype(str)
    missing = [s for s in counts.index if s not in labels.index]
    if missing:
        raise InvalidInputError(f"{folder / 'test_labels.csv'}: no label for sample(s) {', '.join(missing[:3])}")
    genes = [str(g) for g in counts.columns]
    _unique_genes(genes, "test_counts.csv")
    x = _check_values(counts.T, "test_counts.csv").T
    return ExpressionSet(values=x, genes=genes, samples=counts.index.tolist(),
                         labels=labels.loc[counts.index].astype(str).to_numpy(), gene_names=genes,
                         meta={"source": str(folder), "kind": "counts"})


ORIENTATIONS = ("auto", "genes-by-samples", "samples-by-genes")


def read_matrix(path: str | os.PathLike, labels: str | os.PathLike | None = None,
                orientation: str = "auto") -> ExpressionSet:
    """Any expression table: CSV, TSV or GCT; ``orientation`` 'genes-by-samples', 'samples-by-genes' or 'auto'
    (auto: more rows than columns means genes are rows). Labels: a two-column file sample,label."""
    if orientation not in ORIENTATIONS:
        raise InvalidInputError(f"orientation {orientation!r}: expected {', '.join(ORIENTATIONS)}")
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"{path}: file not found")
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a folder, not an expression table")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: empty file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".gct":
            frame = pd.read_csv(path, sep="\t", skiprows=2, index_col=0)
            if frame.shape[1] == 0:
                raise InvalidInputError(f"{path}: GCT table without a Description column or samples")
            names = frame.pop(frame.columns[0]).astype(str).tolist()  # Description column
            orientation = "genes-by-samples"
        else:
            frame = pd.read_csv(path, sep="\t" if suffix in (".tsv", ".txt") else ",", index_col=0)
            names = None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: not a readable expression table ({str(exc).splitlines()[0]})") from None
    if GOLUB_ID_COLUMN in frame.columns:  # Golub's own layout: description, id, then sample / call pairs
        values, _, names = _read_golub_table(path, frame.reset_index())
        frame, orientation = values, "genes-by-samples"
        if values.shape[1] == 0:
            raise InvalidInputError(f"{path}: Golub-style table without sample columns")
    if frame.shape[1] == 0:
        raise InvalidInputError(f"{path}: no sample columns (only the gene ids); expected genes x samples values")
    if frame.empty:
        raise InvalidInputError(f"{path}: no data rows")
    if orientation == "auto":
        orientation = "genes-by-samples" if frame.shape[0] >= frame.shape[1] else "samples-by-genes"
    if orientation == "genes-by-samples":
        genes, samples = [str(g) for g in frame.index], [str(s) for s in frame.columns]
        values = _check_values(frame, str(path)).T
    elif orientation == "samples-by-genes":
        genes, samples = [str(g) for g in frame.columns], [str(s) for s in frame.index]
        values = _check_values(frame.T, str(path)).T
    else:
        raise InvalidInputError(f"orientation {orientation!r}: expected genes-by-samples, samples-by-genes or auto")
    _unique_genes(genes, str(path))
    y = None
    if labels is not None:
        table = pd.read_csv(labels, header=None, index_col=0, sep=None, engine="python").iloc[:, 0]
        table.index = table.index.astype(str)
        missing = [s for s in samples if s not in table.index]
        if missing:
            raise InvalidInputError(f"{labels}: no label for sample {missing[0]!r}")
        y = table.loc[samples].astype(str).to_numpy()
    return ExpressionSet(values=values, genes=genes, samples=samples, labels=y, gene_names=names,
                         meta={"source": str(path)})


def align_genes(data: ExpressionSet, genes: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """``data`` reordered to the model's ``genes``; returns (values, missing genes, extra genes).

    Missing genes are filled with NaN for the caller to decide; no overlap at all is an error.
    """
    position = {g: i for i, g in enumerate(data.genes)}
    missing = [g for g in genes if g not in position]
    extra = [g for g in data.genes if g not in set(genes)]
    if len(missing) == len(genes):
        raise InvalidInputError(f"{data.meta.get('source', 'input')}: none of the model's {len(genes)} genes is present")
    out = np.full((len(data.samples), len(genes)), np.nan)
    for j, g in enumerate(genes):
        if g in position:
            out[:, j] = data.values[:, position[g]]
    return out, missing, extra
