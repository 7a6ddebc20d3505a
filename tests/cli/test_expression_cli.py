"""``leukodx expression``: the documented result fields, predictions on new samples, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd

from leukodx.cli.app import main
from leukodx.omics.io import read_golub


def test_evaluate_writes_methods_and_best(tmp_path):
    out = tmp_path / "R.json"
    assert main(["expression", "evaluate", "--dataset", "golub", "--method", "weighted-voting",
                 "--method", "pnn", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"weighted-voting", "pnn"}
    for entry in result["methods"].values():
        assert 0 <= entry["loocv_errors"] <= 38 and 0 <= entry["independent_correct"] <= 34
    assert result["best"] in result["methods"]
    assert result["methods"]["weighted-voting"]["selected_genes"][0]["name"]


def test_predict_new_samples_from_a_matrix(tmp_path):
    _, test = read_golub()
    frame = pd.DataFrame(test.values[:5].T, index=test.genes, columns=test.samples[:5]).iloc[:-10]
    frame.to_csv(tmp_path / "new.csv")
    out = tmp_path / "pred.csv"
    proc = subprocess.run([sys.executable, "-m", "leukodx", "expression", "predict", str(tmp_path / "new.csv"),
                           "--method", "weighted-voting", "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "10 of the model's 7129 genes missing" in proc.stderr
    rows = pd.read_csv(out)
    assert list(rows["sample"].astype(str)) == test.samples[:5]
    assert (rows["prediction"] == test.labels[:5]).mean() >= 0.8


def test_non_numeric_matrix_is_a_one_line_error(tmp_path):
    (tmp_path / "bad.csv").write_text("gene,s1,s2\nM27891_at,12,high\nM84526_at,3,4\nX95735_at,5,6\n")
    proc = subprocess.run([sys.executable, "-m", "leukodx", "expression", "predict", str(tmp_path / "bad.csv"),
                           "-o", str(tmp_path / "p.csv")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: bad.csv: non-numeric value 'high' at gene 'M27891_at', sample 's2'"
    assert not (tmp_path / "p.csv").exists()
