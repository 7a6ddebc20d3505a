"""``leukodx flow``: info on every kind of file, batch read-out that survives bad files, features CSV."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from leukodx.cli.app import main


def test_info_prints_version_events_channels(data_root, capsys):
    path = data_root / "flow" / "formats" / "FACS_Diva" / "facs_diva_test.fcs"
    assert main(["flow", "info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "FCS 3.0" in text and "83411 events" in text and "FITC-A" in text and "spillover" in text


def test_info_json_for_a_later_data_set(data_root, capsys):
    path = data_root / "flow" / "formats" / "GuavaMuse" / "Guava Muse.fcs"
    assert main(["flow", "info", str(path), "--dataset", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events"] == 50081 and summary["dataset"] == 2 and summary["datasets"] == 4


@pytest.mark.parametrize("name", ["corrupted/corrupted.fcs", "cytek-nl-2000/sample_header.fcs",
                                  "fake_bitmask_error/fcs1_cleaned.lmd"])
def test_info_refuses_broken_files_in_one_line(data_root, name):
    path = data_root / "flow" / "formats" / name
    proc = subprocess.run([sys.executable, "-m", "leukodx", "flow", "info", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and str(path) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_readout_batch_reports_bad_files_and_goes_on(data_root, tmp_path):
    good = data_root / "flow" / "tidytof" / "ddpr" / "UPN1_Basal.fcs"
    bad = tmp_path / "notes.fcs"
    bad.write_text("not flow data\n" * 10)
    out = tmp_path / "R.json"
    assert main(["flow", "readout", str(good), str(bad), "--no-refit-missing", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["file"] for r in result["results"]] == [str(good)]
    assert result["failed"][0]["file"] == str(bad) and "not an FCS file" in result["failed"][0]["error"]
    assert result["model_sha256"] and 0 <= result["results"][0]["fraction_leukemic_like"] <= 1


def test_readout_all_bad_exits_nonzero(tmp_path):
    bad = tmp_path / "x.fcs"
    bad.write_bytes(b"")
    assert main(["flow", "readout", str(bad), "--no-refit-missing", "-o", str(tmp_path / "R.json")]) == 2


def test_features_csv_one_row_per_file(data_root, tmp_path):
    files = [data_root / "flow" / "tidytof" / "ddpr" / n for n in ("UPN1_Basal.fcs", "Healthy1_Basal.fcs")]
    out = tmp_path / "f.csv"
    assert main(["flow", "features", *map(str, files), "--markers", "cd45,cd10,cd34", "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and len(rows[0]) == 2 + 3 * 24
    upn, healthy = (float(r["cd10:mean"]) for r in rows)
    assert upn > healthy  # CD10 (CALLA) is high on the BCP-ALL blasts


@pytest.mark.slow
def test_train_writes_a_loadable_model(tmp_path):
    from leukodx.cytometry.classifier import CellClassifier

    out = tmp_path / "model"
    assert main(["flow", "train", "-o", str(out)]) == 0
    model = CellClassifier.load(out)
    assert model.card["test"]["auroc"] >= 0.99 and len(model.markers) == 20


def test_evaluate_scores_the_shipped_model_and_comparators(tmp_path):
    out = tmp_path / "e.json"
    assert main(["flow", "evaluate", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"mlp (shipped)", "logistic-regression", "gradient-boosting"}
    shipped = result["methods"]["mlp (shipped)"]["held_out"]
    assert result["test_cells"] == shipped["n"] == 1000
    assert shipped["auroc"]["value"] >= 0.99  # regression floor of the shipped flow model
    assert shipped["auroc"]["ci95"][0] <= shipped["auroc"]["value"] <= shipped["auroc"]["ci95"][1]
