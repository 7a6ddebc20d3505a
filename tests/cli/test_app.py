"""The command line as a newcomer meets it: version, usage errors, fast help, every model listed,
bad bundles refused with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from leukodx.models.bundle import bundled


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "leukodx", *args], capture_output=True, text=True, **kw)


def test_version():
    import leukodx

    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"leukodx {leukodx.__version__}"


@pytest.mark.parametrize("args, message", [
    (["predict", "--bogus"], "No such option: --bogus"),
    (["detect", "x.jpg", "-o", "out", "--pixel-scale", "abc"], "Invalid value for '--pixel-scale'"),
    (["evaluate", "--images", "x"], "Missing option '--output'"),
])
def test_usage_errors_are_a_short_message_not_a_traceback(args, message):
    proc = run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 4  # usage line, hint, the error


def test_help_does_not_import_torch():
    code = ("import sys; from leukodx.cli.app import main; "
            "main(['--help']); print('torch' in sys.modules, 'timm' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "False False"


def test_models_list_shows_every_kind_of_model():
    proc = run("models", "list")
    assert proc.returncode == 0
    lines = {line.split("\t")[0]: line.split("\t")[1] for line in proc.stdout.strip().splitlines()}
    assert lines == {"all-stage": "image-classification", "bccd-frcnn": "detection", "bccd-frcnn-aug": "detection",
                     "ddpr-leukemic-cell": "flow-cell-classification", "golub-all-aml": "expression-classification",
                     "pbc-celltype": "image-classification", "wbc-seg-unet": "segmentation",
                     "wbc-multisite": "image-classification", "deepapl-apl": "patient-classification"}
    proc = run("models", "list", "--task", "detection")
    assert proc.stdout.startswith("bccd-frcnn\tdetection\t3 classes\ttest AP@0.5 RBC 0.840, WBC 0.977")


def test_models_info_prints_the_card_without_history():
    proc = run("models", "info", "wbc-seg-unet")
    card = json.loads(proc.stdout)
    assert card["task"] == "segmentation" and "history" not in card["training"]
    assert card["provenance"]["argv"].startswith("leukodx train-segmenter")


def _copy(tmp_path, name="pbc-celltype"):
    copy = tmp_path / name
    shutil.copytree(bundled()[name], copy)
    return copy


def test_bad_bundles_are_one_line_each(tmp_path, pbc_folder):
    missing_card = _copy(tmp_path)
    (missing_card / "card.json").unlink()
    other_task = _copy(tmp_path, "ddpr-leukemic-cell")
    tampered = tmp_path / "tampered"
    shutil.copytree(bundled()["pbc-celltype"], tampered)
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[100] ^= 0x01
    (tampered / "model.safetensors").write_bytes(bytes(data))
    cases = {
        missing_card: f"error: {missing_card}: not a model bundle (card.json missing)",
        other_task: f"error: {other_task}: a flow-cell-classification model, not a image-classification model",
        tampered: f"error: {tampered / 'model.safetensors'}: sha256 ",
        "no-such-model": "error: no-such-model: no such image-classification model",
    }
    for model, message in cases.items():
        proc = run("predict", "-m", str(model), str(pbc_folder / "basophil"), "-o", str(tmp_path / "p.csv"))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(message) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "p.csv").exists()


def test_detect_refuses_a_detector_of_the_wrong_task(tmp_path):
    proc = run("detect", "x.jpg", "-o", str(tmp_path / "o"), "--detector", "all-stage")
    assert proc.returncode == 2
    assert "a image-classification model, not a detection model" in proc.stderr


def test_zoo_lists_every_recipe_with_its_paper():
    from leukodx.zoo.recipes import list_recipes

    import os

    proc = run("zoo", env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 0
    for name in list_recipes():
        assert name in proc.stdout


def test_an_unexpected_failure_is_one_line_and_a_crash_file(monkeypatch, capsys, tmp_path):
    """The last-resort handler: no traceback for the user, the traceback kept in a crash file."""
    import leukodx.hub
    from leukodx.cli.app import EXIT_INTERNAL_ERROR, main

    def broken(task=None):
        raise RuntimeError("simulated fault\nsecond line")

    monkeypatch.setenv("LEUKODX_CACHE", str(tmp_path))
    monkeypatch.delenv("LEUKODX_DEBUG", raising=False)
    monkeypatch.setattr(leukodx.hub, "list_models", broken)
    assert main(["models", "list"]) == EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("internal error: RuntimeError: simulated fault;") and "\n" not in err
    assert "Traceback" not in err
    crash = list((tmp_path / "crash").iterdir())
    assert len(crash) == 1 and "simulated fault" in crash[0].read_text() and "Traceback" in crash[0].read_text()
