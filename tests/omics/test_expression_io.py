"""Expression readers: Golub's out-of-order columns, any matrix, and each bad input's one-line error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukodx.errors import InvalidInputError
from leukodx.omics.io import align_genes, read_ball_rnaseq, read_golub, read_matrix


@pytest.fixture(scope="module")
def golub():
    return read_golub()


def test_golub_samples_are_joined_to_labels_by_number(golub, data_root):
    train, test = golub
    assert train.values.shape == (38, 7129) and test.values.shape == (34, 7129)
    assert (train.labels == "AML").sum() == 11 and (test.labels == "AML").sum() == 14
    # the CSV lists 34..38 before 28..33: check one value against the raw file by sample number
    raw = pd.read_csv(data_root / "golub" / "data_set_ALL_AML_train.csv")
    j = train.samples.index("28")
    assert train.values[j, 0] == raw["28"].iloc[0]
    assert train.samples == sorted(train.samples, key=int)
    assert set(np.unique(train.meta["calls"])) <= {"P", "A", "M"}


def test_ball_rnaseq_counts_and_subtypes():
    data = read_ball_rnaseq()
    assert data.values.shape == (20, 19514)
    assert sorted(set(data.labels)) == ["DUX4", "ETV6-RUNX1", "Ph", "TCF3-PBX1"]


def _golub_slice(golub, tmp_path, n_genes=30, n_samples=6):
    train, _ = golub
    frame = pd.DataFrame(train.values[:n_samples, :n_genes].T, index=train.genes[:n_genes], columns=train.samples[:n_samples])
    return frame


def test_any_matrix_in_either_orientation_and_gct(golub, tmp_path):
    frame = _golub_slice(golub, tmp_path)
    frame.to_csv(tmp_path / "g.csv")
    frame.T.to_csv(tmp_path / "s.tsv", sep="\t")
    a, b = read_matrix(tmp_path / "g.csv"), read_matrix(tmp_path / "s.tsv")
    assert a.values.shape == b.values.shape == (6, 30) and a.genes == b.genes
    gct = tmp_path / "m.gct"
    body = frame.copy()
    body.insert(0, "Description", ["d"] * len(body))
    with gct.open("w") as fh:
        fh.write("#1.2\n30\t6\n")
        body.to_csv(fh, sep="\t", index_label="Name")
    assert read_matrix(gct).values.shape == (6, 30)


@pytest.mark.parametrize("defect, message", [
    ("text", "non-numeric value 'high' at gene"),
    ("nan", "missing value \\(NaN\\) at gene"),
    ("dupe", "duplicate gene id"),
])
def test_bad_matrices_are_refused_naming_the_file(golub, tmp_path, defect, message):
    frame = _golub_slice(golub, tmp_path).astype(object)
    if defect == "text":
        frame.iat[3, 2] = "high"
    elif defect == "nan":
        frame.iat[3, 2] = np.nan
    else:
        frame.index = [frame.index[0]] + list(frame.index[1:-1]) + [frame.index[0]]
    frame.to_csv(tmp_path / "bad.csv")
    with pytest.raises(InvalidInputError, match=f"bad.csv: {message}"):
        read_matrix(tmp_path / "bad.csv")


def test_empty_file_and_no_overlapping_genes(golub, tmp_path):
    (tmp_path / "empty.csv").touch()
    with pytest.raises(InvalidInputError, match="empty.csv: empty file"):
        read_matrix(tmp_path / "empty.csv")
    frame = _golub_slice(golub, tmp_path)
    frame.index = [f"X{i}" for i in range(len(frame))]
    frame.to_csv(tmp_path / "other.csv")
    with pytest.raises(InvalidInputError, match="none of the model's 7129 genes is present"):
        align_genes(read_matrix(tmp_path / "other.csv"), golub[0].genes)


def test_partial_overlap_reports_missing_and_extra(golub, tmp_path):
    frame = _golub_slice(golub, tmp_path)
    frame.index = list(frame.index[:-1]) + ["NOT_A_PROBE"]
    frame.to_csv(tmp_path / "p.csv")
    values, missing, extra = align_genes(read_matrix(tmp_path / "p.csv"), golub[0].genes)
    assert extra == ["NOT_A_PROBE"] and len(missing) == 7129 - 29
    assert np.isnan(values[:, golub[0].genes.index(golub[0].genes[29])]).all()
