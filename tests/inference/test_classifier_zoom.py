"""``--zoom``: a lab's cells read at another magnification, given or chosen from the images themselves."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import leukodx
from leukodx.cli.app import main
from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
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
