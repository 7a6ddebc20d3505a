"""``--zoom``: a lab's cells read at another magnification, given or chosen from the images themselves."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

import leukodx
from leukodx.cli.app import main
from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
from leukodx.diagnosis.case import diagnose
from leukodx.errors import InvalidInputError
from leukodx.preprocessing.transforms import zoom_about_centre
from leukodx.training.adaptation import ZOOM_GRID


@pytest.fixture(scope="module")
def lab_cells():
    """32 of wbc-seg-2's cells (CellaVision images whose cells fill more of the frame than pbc's)."""
    index = load_dataset("wbc-seg-2")
    return [str(index.abspath(i)) for i in np.linspace(0, len(index) - 1, 32).round().astype(int)]


@pytest.mark.slow
def test_a_given_zoom_reads_each_image_as_if_it_had_been_zoomed_first(lab_cells):
    clf = leukodx.load("wbc-multisite", backend="torch")
    rgbs = [read_image(p) for p in lab_cells[:6]]
    zoomed_by_hand = clf.predict([zoom_about_centre(rgb, 0.7) for rgb in rgbs]).probabilities
    clf.set_zoom(0.7, [])
    assert clf.zoom == {"zoom": 0.7, "method": "given"}
    np.testing.assert_allclose(clf.predict(rgbs).probabilities, zoomed_by_hand, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_auto_chooses_the_grid_zoom_with_the_most_information_and_says_so(lab_cells):
    clf = leukodx.load("wbc-multisite", backend="torch")
    before = clf.predict(lab_cells).probabilities
    clf.set_zoom("auto", [(p, p) for p in lab_cells])
    chosen = clf.zoom
    assert chosen["images"] == 32 and chosen["method"].startswith("selected")
    assert set(chosen["information"]) == {f"{z:g}" for z in ZOOM_GRID}
    assert chosen["information"][f"{chosen['zoom']:g}"] == pytest.approx(max(chosen["information"].values()),
                                                                         abs=1e-4)
    assert chosen["zoom"] != 1.0  # these cells show larger than the training cells did
    assert not np.allclose(clf.predict(lab_cells).probabilities, before)


def test_auto_needs_a_batch_of_one_lab(lab_cells):
    clf = leukodx.load("wbc-multisite", backend="torch")
    with pytest.raises(InvalidInputError, match="at least 32 readable images"):
        clf.set_zoom("auto", [(p, p) for p in lab_cells[:31]])


@pytest.mark.slow
def test_predict_and_evaluate_record_the_zoom(lab_cells, tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    for p in lab_cells[:8]:
        (folder / p.rsplit("/", 1)[-1]).symlink_to(p)
    out = tmp_path / "p.json"
    main(["predict", str(folder), "--zoom", "0.8", "-o", str(out), "--backend", "torch"])
    assert json.loads(out.read_text())["zoom"] == {"zoom": 0.8, "method": "given"}
    result = tmp_path / "e.json"
    main(["evaluate", "--dataset", "wbc-seg-2", "--split", "all", "--zoom", "1.15", "--n-boot", "20", "--no-report",
          "-o", str(result), "--backend", "torch"])
    assert json.loads(result.read_text())["zoom"] == {"zoom": 1.15, "method": "given"}


@pytest.mark.parametrize("value, message", [("7", "from 0.4 to 2.5"), ("big", "expected auto or a number")])
def test_a_bad_zoom_is_one_line_before_any_work(value, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "leukodx", "predict", str(tmp_path), "--zoom", value, "-o",
                           str(tmp_path / "p.csv")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --zoom ") and message in lines[0]
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_diagnose_reads_the_cells_at_the_zoom_and_records_it(lab_cells, tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    for p in lab_cells:
        (folder / p.rsplit("/", 1)[-1]).symlink_to(p)
    for name, extra in (("plain", []), ("given", ["--zoom", "0.7"]), ("auto", ["--zoom", "auto"])):
        assert main(["diagnose", str(folder), "--kind", "cells", "-o", str(tmp_path / name), "--backend", "torch",
                     *extra]) == 0
    rows = {name: {r["input"].rsplit("/", 1)[-1]: r
                   for r in csv.DictReader((tmp_path / name / "predictions.csv").read_text().splitlines())}
            for name in ("plain", "given", "auto")}
    clf = leukodx.load("wbc-multisite", backend="torch")
    by_hand = clf.predict([zoom_about_centre(read_image(p), 0.7) for p in lab_cells]).probabilities
    assert len(rows["given"]) == 32
    # each cell read as if it had been zoomed by 0.7 first, not as it is
    for p, proba in zip(lab_cells, by_hand):
        row = rows["given"][p.rsplit("/", 1)[-1]]
        assert row["top_class"] == clf.classes[int(proba.argmax())]
        assert float(row["probability"]) == pytest.approx(float(proba.max()), abs=1e-3)
    assert sum(rows["given"][n]["probability"] != rows["plain"][n]["probability"] for n in rows["given"]) >= 16
    summaries = {name: json.loads((tmp_path / name / "summary.json").read_text()) for name in rows}
    assert summaries["plain"]["model"]["zoom"] is None
    assert summaries["given"]["model"]["zoom"] == {"zoom": 0.7, "method": "given"}
    auto = summaries["auto"]["model"]["zoom"]
    assert auto["method"].startswith("selected") and auto["images"] == 32 and auto["zoom"] != 1.0
    assert "cells read at zoom 0.7 (given)" in (tmp_path / "given" / "report.html").read_text()


def test_diagnose_refuses_a_zoom_for_smear_fields(tiny_aria_model, aria_folder, tmp_path):
    with pytest.raises(InvalidInputError, match="this case holds fields"):
        diagnose(aria_folder / "early", model=str(tiny_aria_model), zoom=0.8, out_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "summary.json").exists()
