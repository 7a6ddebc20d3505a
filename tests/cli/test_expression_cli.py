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


def test_predict_new_samples_from_the_shipped_bundle(tmp_path):
    import leukodx

    model = leukodx.load("golub-all-aml")
    _, test = read_golub()
    dropped = set(model.genes[:3])
    keep = [i for i, g in enumerate(test.genes) if g not in dropped]
    frame = pd.DataFrame(test.values[:5, keep].T, index=[test.genes[i] for i in keep], columns=test.samples[:5])
    frame.to_csv(tmp_path / "new.csv")
    out = tmp_path / "pred.csv"
    proc = subprocess.run([sys.executable, "-m", "leukodx", "expression", "predict", str(tmp_path / "new.csv"),
                           "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "3 of the model's 50 genes missing" in proc.stderr and "golub-all-aml (mlp" in proc.stderr
    rows = pd.read_csv(out)
    assert list(rows["sample"].astype(str)) == test.samples[:5]
    assert (rows["prediction"] == test.labels[:5]).mean() >= 0.8


def test_train_writes_a_bundle_that_predict_loads(tmp_path):
    bundle = tmp_path / "wv"
    assert main(["expression", "train", "--method", "weighted-voting", "-o", str(bundle)]) == 0
    card = json.loads((bundle / "card.json").read_text())
    assert card["task"] == "expression-classification" and card["method"] == "weighted-voting"
    assert card["metrics"]["loocv"]["n"] == 38 and card["metrics"]["independent"]["n"] == 34
    assert card["provenance"]["argv"].endswith(f"expression train --method weighted-voting -o {bundle}")
    _, test = read_golub()
    pd.DataFrame(test.values.T, index=test.genes, columns=test.samples).to_csv(tmp_path / "all.csv")
    assert main(["expression", "predict", str(tmp_path / "all.csv"), "-m", str(bundle), "-o",
                 str(tmp_path / "p.csv")]) == 0
    rows = pd.read_csv(tmp_path / "p.csv")
    assert (rows["prediction"] == test.labels).sum() == card["metrics"]["independent"]["correct"]


def test_train_refuses_a_method_without_a_bundle_format(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "leukodx", "expression", "train", "--method", "svm-linear",
                           "-o", str(tmp_path / "m")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: method 'svm-linear': bundled methods for golub are mlp, pnn")
    assert not (tmp_path / "m").exists()


def test_non_numeric_matrix_is_a_one_line_error(tmp_path):
    (tmp_path / "bad.csv").write_text("gene,s1,s2\nM27891_at,12,high\nM84526_at,3,4\nX95735_at,5,6\n")
    proc = subprocess.run([sys.executable, "-m", "leukodx", "expression", "predict", str(tmp_path / "bad.csv"),
                           "-o", str(tmp_path / "p.csv")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'bad.csv'}: non-numeric value 'high' at gene 'M27891_at', sample 's2'"
    assert not (tmp_path / "p.csv").exists()
