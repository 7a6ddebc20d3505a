"""Case diagnosis: input kind recognition, case summaries, flags and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
from leukodx.errors import InvalidInputError
from leukodx.diagnosis.case import diagnose, recognise_kind, write_case_outputs


def _case(dataset, start, n=10):
    index = load_dataset(dataset)
    rng = np.random.default_rng(start)
    pick = rng.choice(len(index), n, replace=False)
    return [read_image(index.abspath(i)) for i in pick]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_cell_cases_and_smear_field_cases_are_told_apart(seed):
    assert recognise_kind(_case("pbc", seed))[0] == "cells"
    assert recognise_kind(_case("all-aria", seed))[0] == "fields"


def test_cell_case_gives_a_differential_and_files_atomically(pbc_folder, tmp_path):
    result = diagnose([pbc_folder], kind="cells", model="pbc-celltype")
    s = result["summary"]
    assert result["n_images"] == 32
    assert sum(s["counts"].values()) + s["unsure"] == 32
    assert s["leukocytes_counted"] == sum(n for c, n in s["counts"].items() if c in s["differential_percent"])
    assert s["leukocytes_counted"] >= 15  # 24 of the 32 images are leukocytes; the shipped model is sure of most
    assert sum(s["differential_percent"].values()) == pytest.approx(100, abs=0.5)
    assert any("differential needs at least 100" in f for f in result["flags"])
    paths = write_case_outputs(result, tmp_path / "out")
    assert json.loads(paths["summary"].read_text())["kind"] == "cells"
    assert paths["predictions"].read_text().count("\n") == 33
    html = paths["report"].read_text()
    assert "data:image/jpeg;base64" in html and "not a medical device" in html
    assert not list((tmp_path / "out").glob("*.part"))


def test_field_case_gives_stage_probabilities(tiny_aria_model, aria_folder):
    result = diagnose(aria_folder / "early", model=str(tiny_aria_model))
    s = result["summary"]
    assert result["kind"] == "fields" and result["kind_evidence"] == "the model's input kind"
    assert sum(s["stage_probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert s["case_call"] in s["stage_probabilities"]


def test_wrong_model_for_the_kind_and_empty_cases_are_refused(tiny_aria_model, tmp_path, real_jpeg):
    case = tmp_path / "one"
    case.mkdir()
    (case / "a.jpg").write_bytes(real_jpeg.read_bytes())
    with pytest.raises(InvalidInputError, match="classifies fields, but the case was given as cells"):
        diagnose(case, kind="cells", model=str(tiny_aria_model))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="empty: no readable image in this case"):
        diagnose(tmp_path / "empty", kind="cells")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_text("junk")
    with pytest.raises(InvalidInputError, match=r"no readable image in this case; 1 unreadable"):
        diagnose(tmp_path / "bad", kind="cells")


def test_field_case_also_counts_cells_with_the_smear_pipeline(tiny_aria_model, aria_folder):
    result = diagnose(aria_folder / "pro", model=str(tiny_aria_model), pixel_scale=0.15)
    smear = result["smear"]
    assert smear["summary"]["n_fields"] == len(smear["fields"]) == result["n_images"] == 6
    assert smear["summary"]["counts"]["WBC"] >= 6  # every all-aria field shows at least one white cell
    assert smear["detector"]["sha256"]
    assert "smear" not in diagnose(aria_folder / "pro", model=str(tiny_aria_model), smear=False)


def test_case_report_escapes_file_names_and_labels():
    from leukodx.diagnosis.report import render_case_html

    evil = "<img src=x onerror=alert(1)>.png"
    result = {"case": evil, "created": "now", "kind": "cells", "kind_evidence": "given",
              "model": {"name": "m", "sha256": "ab" * 32, "backend": "torch", "test_accuracy": None},
              "flags": ["<b>flag</b>"], "summary": {"leukocytes_counted": 1, "unsure": 0, "counts": {"neutrophil": 1},
                                                    "differential_percent": {"neutrophil": 100.0}},
              "rows": [{"input": evil, "top_class": "neutrophil", "probability": 0.9, "unsure": False,
                        "probabilities": {"neutrophil": 0.9, "lymphocyte": 0.1}}],
              "errors": [], "versions": {"leukodx": "0"}}
    html = render_case_html(result)
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;.png" in html
    assert "<b>flag</b>" not in html and "lymphocyte 0.10" in html


def test_field_case_measures_each_fields_scale_when_none_is_given(tiny_aria_model, aria_folder):
    result = diagnose(aria_folder / "pro", model=str(tiny_aria_model))
    smear = result["smear"]
    summary = smear["summary"]
    assert summary["fields_counted"] + summary["fields_not_counted"] == 6
    for field in smear["fields"]:
        assert field["scale"]["source"] in ("estimated", "uncertain")
        if field["scale"]["source"] == "estimated":  # all-aria's 224 px fields: red cells ~15 px
            assert 0.08 < field["scale"]["pixel_scale"] < 0.3
        else:
            assert not field["counted"] and "outside what it knows" in field["scale"]["detail"]
        if not field["counted"]:  # uncertain scale, or BCCD's detector reading bluish red cells as white
            assert field["not_counted_reason"] and any("not counted" in f for f in field["flags"])
    assert smear["scale_given"] == {"pixel_scale": None, "um_per_px": None}


@pytest.mark.slow
def test_patient_case_gets_blast_fraction_and_apl_probability(tmp_path, monkeypatch):
    import leukodx.diagnosis.case as case

    monkeypatch.setattr(case, "_CHUNK", 16)  # the cells' features reduced to per-cell log-odds over several chunks
    folder = load_dataset("deepapl").root / "images" / "Patient_01"  # a test-split patient
    result = diagnose(folder, kind="cells")
    assert result["n_images"] > 2 * case._CHUNK
    s = result["summary"]
    assert result["model"]["name"] == "wbc-multisite"
    assert isinstance(s["apl_probability"], float) and 0 <= s["apl_probability"] <= 1
    assert s["apl_model"]["used"] and s["apl_model"]["cells"] == result["n_images"]
    # the instance model names the cells that moved the call most, by their image
    names = {p.name for p in folder.iterdir()}
    drivers = s["apl_model"]["drivers"]
    assert drivers and all(d["feature"].startswith("cell ") for d in drivers)
    assert all(Path(d["feature"][len("cell "):]).name in names for d in drivers)
    # the case kept each cell's features (float16) for the patient model: the same call as on the cells directly
    from leukodx.inference.classifier import load_model
    from leukodx.inference.patient import PatientModel

    clf = load_model("wbc-multisite")
    _, arrays, _ = clf.load_inputs([folder])
    scored = clf.score_arrays(arrays)
    direct = PatientModel.load("deepapl-apl").probability(scored.proba, scored.embedding)
    assert s["apl_probability"] == pytest.approx(direct, abs=0.01)
    lo, hi = s["blast_fraction_ci95"]
    assert lo <= s["blast_fraction"] <= hi
    assert s["blast_fraction"] == pytest.approx(s["counts"]["blast"] / s["leukocytes_counted"], abs=1e-4)
    paths = write_case_outputs(result, tmp_path / "out")
    saved = json.loads(paths["summary"].read_text())["summary"]
    assert saved["apl_probability"] == s["apl_probability"]
    assert "APL probability" in paths["report"].read_text() and "Blast fraction" in paths["report"].read_text()


def test_apl_probability_is_withheld_for_another_cell_model(pbc_folder):
    s = diagnose([pbc_folder], kind="cells", model="pbc-celltype")["summary"]
    assert s["apl_probability"] is None and not s["apl_model"]["used"]
    assert "cannot be used" in s["apl_model"]["reason"]


def test_apl_probability_is_withheld_for_a_case_unlike_any_aml_patient(pbc_folder):
    """Healthy donors' cells, four of each type: no AML patient looks like that (it once scored 1.0)."""
    result = diagnose([pbc_folder], kind="cells")
    s = result["summary"]
    assert s["apl_probability"] is None and "outside" in s["apl_model"]["reason"]
    assert not any("APL pattern" in f for f in result["flags"])


def test_a_missing_file_is_reported_and_the_rest_of_the_case_diagnosed(pbc_folder, tmp_path, capsys):
    """`diagnose good.jpg missing.jpg` aborted the case where every other verb skips the missing file."""
    from leukodx.cli.app import main

    good = sorted((pbc_folder / "monocyte").iterdir())[:2]
    out = tmp_path / "case"
    assert main(["diagnose", *map(str, good), str(tmp_path / "missing.jpg"), "--kind", "cells", "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 2 and len(summary["errors"]) == 1
    assert "missing.jpg" in summary["errors"][0]["error"]


def test_a_cell_model_without_features_gives_no_apl_probability_and_says_why(tmp_path):
    """A logits-only ONNX file (no features output): the case is still typed and counted; the patient
    model, which reads the cells' features, is not used, and the summary says why."""
    from leukodx.inference.classifier import load_model
    from leukodx.inference.onnx_backend import OnnxSession, export_onnx

    clf = load_model("wbc-multisite", backend="onnx")
    session = OnnxSession(export_onnx(clf.net, clf.preprocess.size, tmp_path / "plain.onnx"))
    session.outputs = lambda x: (session(x), None)
    clf._onnx, clf.reliability = session, None
    files = sorted((load_dataset("deepapl").root / "images" / "Patient_01").rglob("*.jpg"))[:12]
    result = diagnose(files, kind="cells", model=clf)
    s = result["summary"]
    assert result["n_images"] == 12 and s["apl_probability"] is None and not s["apl_model"]["used"]
    assert "features" in s["apl_model"]["reason"]
