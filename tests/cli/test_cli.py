"""End to end through the ``leukodx`` command: train, evaluate, predict, diagnose, export, and
the one-line errors and exit codes for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leukodx.cli.app import main


def run(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "leukodx", *args], capture_output=True, text=True, timeout=600)


def test_evaluate_exact_form_writes_the_documented_fields(tiny_aria_model, aria_folder, tmp_path):
    out = tmp_path / "r" / "RESULT.json"
    rc = main(["evaluate", "--model", str(tiny_aria_model), "--images", str(aria_folder), "--output", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["n"] == 24
    assert result["accuracy"] == pytest.approx(1 - len(result["misclassified"]) / 24)
    cm = np.array(result["metrics"]["confusion_matrix"])
    assert cm.sum() == 24 and result["accuracy"] == pytest.approx(np.trace(cm) / 24)
    assert result["macro_f1"] == result["metrics"]["macro_f1"]["value"]
    assert result["metrics"]["accuracy"]["ci95"][0] <= result["accuracy"] <= result["metrics"]["accuracy"]["ci95"][1]
    assert set(result["metrics"]["per_class"]) == {"Benign", "Early", "Pre", "Pro"}  # lower-case folders matched
    assert result["versions"]["torch"] and result["seed"] == 0 and result["dataset_fingerprint"]
    report = tmp_path / "r" / "RESULT_report"
    assert {"report.md", "report.html", "confusion.png", "roc.png", "reliability.png"} <= {p.name for p in report.iterdir()}


def test_evaluate_on_a_registered_split(tiny_aria_model, tmp_path):
    out = tmp_path / "val.json"
    assert main(["evaluate", "-m", str(tiny_aria_model), "--dataset", "all-aria", "--split", "val",
                 "-o", str(out), "--no-report", "--n-boot", "50"]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 396 and result["split"] == "val"
    # the tiny model calibrated on 16 of these images (its capped val side): coverage and OOD rate follow from that.
    # Its OOD threshold is the largest of 16 calibration scores, which images like them pass with probability
    # about 1/17 (a rate above 0.15 happens by chance less than 8% of the time, (1 - 0.15) ** 16); a broken
    # score or threshold flags far more
    selective = result["selective"]
    assert selective["conformal"]["0.90"]["coverage"] >= 0.9 and selective["ood_rate"] <= 0.15
    assert selective["risk_coverage"]["n"] == 396 and selective["shift_verdict"]["flagged"] is False


def test_predict_csv_and_json(tiny_pbc_model, pbc_folder, tmp_path):
    assert main(["predict", "-m", str(tiny_pbc_model), str(pbc_folder / "monocyte"), "-o", str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0].startswith("input,top_class,probability,unsure,ood_score,ood,prediction_set,p_basophil")
    assert len(lines) == 5
    assert main(["predict", "-m", str(tiny_pbc_model), str(pbc_folder / "monocyte"), "-o", str(tmp_path / "p.json"),
                 "--coverage", "0.95"]) == 0
    result = json.loads((tmp_path / "p.json").read_text())
    assert len(result["rows"]) == 4 and result["coverage"] == 0.95
    assert set(result["shift"]) >= {"flagged", "score", "reason"} and isinstance(result["shift"]["flagged"], bool)
    row = result["rows"][0]
    assert isinstance(row["ood"], bool) and isinstance(row["ood_score"], float) and isinstance(row["prediction_set"], list)


@pytest.mark.parametrize("coverage", ["0", "1", "1.5", "-0.2"])
def test_predict_refuses_a_coverage_outside_0_1(tiny_pbc_model, pbc_folder, tmp_path, capsys, coverage):
    assert main(["predict", "-m", str(tiny_pbc_model), str(pbc_folder / "monocyte"), "-o", str(tmp_path / "p.json"),
                 "--coverage", coverage]) != 0
    err = capsys.readouterr().err
    assert "--coverage" in err and "between 0 and 1" in err and "Traceback" not in err
    assert not (tmp_path / "p.json").exists()


def test_diagnose_writes_summary_csv_and_report(tiny_pbc_model, pbc_folder, tmp_path):
    assert main(["diagnose", str(pbc_folder), "--kind", "cells", "-m", str(tiny_pbc_model), "-o", str(tmp_path / "case")]) == 0
    summary = json.loads((tmp_path / "case" / "summary.json").read_text())
    assert summary["n_images"] == 32 and "differential_percent" in summary["summary"]
    assert (tmp_path / "case" / "report.html").stat().st_size > 10_000  # thumbnails embedded


def test_export_onnx_checks_parity(tiny_pbc_model, tmp_path):
    assert main(["export", "onnx", "-m", str(tiny_pbc_model), "-o", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 100_000


def test_datasets_verbs(tmp_path):
    assert main(["datasets", "list"]) == 0
    assert main(["datasets", "info", "pbc", "--json"]) == 0
    assert main(["datasets", "verify", "wbc-seg-2"]) == 0
    assert main(["datasets", "split", "all-aria", "-o", str(tmp_path / "s.json"), "--group", "none", "--seed", "4"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["seed"] == 4


# --- bad input: one line naming the input, non-zero exit, nothing half-written --------------------

def test_all_bad_batch_exits_non_zero_without_output(tiny_pbc_model, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_text("junk")
    out = tmp_path / "p.csv"
    proc = run("predict", "-m", str(tiny_pbc_model), str(tmp_path / "in"), "-o", str(out))
    assert proc.returncode != 0
    assert "a.jpg: not a readable image" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no image could be processed")
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_empty_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run("diagnose", str(tmp_path / "empty"), "--kind", "cells", "-o", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'empty'}: no readable image in this case"
    assert not (tmp_path / "out").exists()


def test_missing_data_root_is_a_one_line_error(tmp_path):
    proc = run("datasets", "verify", "pbc", "--data-root", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'nowhere'}: data root from --data-root does not exist or is not a folder"


def test_tampered_weights_are_refused(tiny_pbc_model, tmp_path, pbc_folder):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_pbc_model, copy, ignore=shutil.ignore_patterns("work"))
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.safetensors").write_bytes(bytes(data))
    proc = run("predict", "-m", str(copy), str(pbc_folder / "basophil"), "-o", str(tmp_path / "p.csv"))
    assert proc.returncode == 2
    assert "model.safetensors: sha256" in proc.stderr and "does not match its card" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "p.csv").exists()


def test_mixed_batch_reports_bad_files_and_finishes(tiny_pbc_model, pbc_folder, tmp_path):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted((pbc_folder / "eosinophil").iterdir())[0]
    (folder / "good.jpg").write_bytes(good.read_bytes())
    (folder / "cut.jpg").write_bytes(good.read_bytes()[:2000])
    Image.new("RGB", (1, 1)).save(folder / "tiny.png")
    Image.open(good).convert("L").save(folder / "gray.png")
    proc = run("predict", "-m", str(tiny_pbc_model), str(folder), "-o", str(tmp_path / "p.json"))
    assert proc.returncode == 0
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert sorted(r["input"].split("/")[-1] for r in rows) == ["good.jpg", "gray.png"]
    assert "cut.jpg: corrupt or truncated" in proc.stderr and "tiny.png: image is 1x1 px" in proc.stderr


def test_unknown_model_and_bad_output_suffix(pbc_folder, tmp_path):
    proc = run("predict", "-m", "nope", str(pbc_folder), "-o", str(tmp_path / "p.csv"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: nope: no such image-classification model (bundled: all-stage, pbc-celltype, wbc-multisite;")
    proc = run("predict", "-m", "nope", str(pbc_folder), "-o", str(tmp_path / "p.txt"))
    assert proc.returncode == 2 and "must end in .csv, .jsonl, .json, .parquet" in proc.stderr


def test_datasets_audit_writes_its_report(tmp_path):
    out = tmp_path / "audit.json"
    assert main(["datasets", "audit", "wbc-seg-2", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_images"] == 100 and report["split"] is None
    assert len(report["examples"]) == min(report["n_pairs"], 20)
    assert all(ex["hamming"] <= 6 for ex in report["examples"])


def test_loso_table_only_rewrites_the_table_from_result_files(tmp_path):
    results = tmp_path / "loso"
    results.mkdir()
    empty = run("benchmark", "--protocol", "loso", "--table-only", "--output-dir", str(results))
    assert empty.returncode != 0 and "no leave-one-site-out result files" in empty.stderr
    assert "Traceback" not in empty.stderr
    shipped = Path(__file__).parents[2] / "benchmarks" / "results" / "loso" / "stain-aug-large__adapt.json"
    shutil.copy(shipped, results)
    proc = run("benchmark", "--protocol", "loso", "--table-only", "--output-dir", str(results))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "LOSO.md").read_text()
    assert "| stain-aug-large |" in text and "## Few-shot adaptation, stain-aug-large" in text
