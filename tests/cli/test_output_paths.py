"""Output paths are checked before any work: a folder where a file is wanted, a file where a folder
is wanted, or a place that cannot be written gives one line naming it, and nothing is computed."""

from __future__ import annotations

import os

import pytest

from leukodx.cli.app import main


@pytest.mark.parametrize("verb", [["predict", "IMAGES"], ["export", "onnx", "-m", "pbc-celltype"]])
def test_a_folder_given_as_the_output_file_is_refused(verb, pbc_folder, tmp_path, capsys):
    args = [str(pbc_folder / "monocyte") if a == "IMAGES" else a for a in verb]
    (tmp_path / "out").mkdir()
    assert main([*args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and str(tmp_path / "out") in err and "Traceback" not in err


@pytest.mark.parametrize("verb", [["diagnose", "--kind", "cells"], ["detect"], ["segment"]])
def test_a_file_given_as_the_output_folder_is_refused(verb, pbc_folder, tmp_path, capsys):
    (tmp_path / "out").write_text("an existing file")
    assert main([verb[0], str(pbc_folder / "monocyte"), *verb[1:], "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err
    assert (tmp_path / "out").read_text() == "an existing file"


def test_an_unwritable_place_is_refused_before_the_work(pbc_folder, tmp_path, capsys, monkeypatch):
    """The suite runs as root, where permission bits do not bind: the operating system's answer is injected."""
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(locked) else real_access(p, mode))
    assert main(["predict", str(pbc_folder / "monocyte"), "-o", str(locked / "p.csv")]) == 2
    assert main(["diagnose", str(pbc_folder / "monocyte"), "--kind", "cells", "-o", str(locked / "case")]) == 2
    err = capsys.readouterr().err
    assert err.count("cannot write into") == 2 and "Traceback" not in err
