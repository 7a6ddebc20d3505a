"""CSV injection: text a spreadsheet would run as a formula is written inert, in every CSV leukodx writes."""

from __future__ import annotations

import csv
import io
import shutil

from leukodx._csv import csv_text, safe_cell


def test_formula_text_is_escaped_and_numbers_are_not():
    assert safe_cell("=SUM(1+1).jpg") == "'=SUM(1+1).jpg"
    assert [safe_cell(v) for v in ("+1x", "-cmd|' /C calc'!A0", "@x", "\tx", "cell.jpg")] == \
        ["'+1x", "'-cmd|' /C calc'!A0", "'@x", "'\tx", "cell.jpg"]
    assert safe_cell("-0.5") == "-0.5" and safe_cell(-3) == -3
    rows = list(csv.reader(io.StringIO(csv_text(["a", "b"], [["=1+1", "2"]]))))
    assert rows == [["a", "b"], ["'=1+1", "2"]]


def test_predict_writes_a_formula_named_file_inert(pbc_folder, tmp_path, monkeypatch):
    from leukodx.cli.app import main

    src = sorted((pbc_folder / "monocyte").iterdir())[0]
    shutil.copy(src, tmp_path / "=SUM(1+1).jpg")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "=SUM(1+1).jpg", "-o", "p.csv"]) == 0
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert rows[1][0] == "'=SUM(1+1).jpg"
