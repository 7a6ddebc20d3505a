"""``--tta``: each cell's call averaged over its 8 flips and quarter turns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import leukodx
from leukodx.cli.app import main
from leukodx.data.sites import site_sides
from leukodx.diagnosis.case import diagnose
from leukodx.inference.classifier import Classifier
from leukodx.inference import explain
from leukodx.preprocessing.transforms import TTA_VIEWS, dihedral_view, undo_dihedral_view
from leukodx.training.calibration import softmax
from leukodx.training.trainer import predict_logits


@pytest.fixture(scope="module")
def pbc_cells():
    """16 of pbc's test cells, as paths, and as the shipped cell model's inputs."""
    paths = [str(p) for p in site_sides("pbc")["test"].abspaths()[::130][:16]]
    clf = leukodx.load("wbc-multisite", backend="torch")
    _, arrays, errors = clf.load_inputs(paths)
    assert not errors
    return paths, arrays


def _bytes(batch: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in batch}


def test_the_views_are_the_eight_symmetries_of_the_square(pbc_cells):
    x = pbc_cells[1][:1]
    views = [dihedral_view(x, i) for i in range(TTA_VIEWS)]
    assert len({v.tobytes() for v in views}) == 8 and all(v.shape == x.shape for v in views)
    np.testing.assert_array_equal(views[0], x)
    np.testing.assert_array_equal(views[1], np.rot90(x, 1, axes=(1, 2)))
    np.testing.assert_array_equal(views[4], x[:, :, ::-1])
    for j in range(TTA_VIEWS):  # a group: the views of any view are the same eight images
        assert {dihedral_view(views[j], i).tobytes() for i in range(TTA_VIEWS)} == {v.tobytes() for v in views}


def test_probabilities_are_those_of_the_mean_logits_and_ood_reads_the_image_as_it_is(pbc_cells):
    _, x = pbc_cells
    clf = leukodx.load("wbc-multisite", backend="torch")
    tta = clf.with_tta()
    assert clf.tta is None and tta.tta == {"method": "logits averaged over the 8 flips and quarter turns of each image",
                                           "views": 8}
    mean = np.mean([clf.logits(dihedral_view(x, i)) for i in range(TTA_VIEWS)], axis=0)
    got, plain = tta.score_arrays(x, batch_size=5), clf.score_arrays(x)  # batches that split the images
    np.testing.assert_allclose(got.proba, softmax(mean, clf.temperature), atol=1e-5)
    assert not np.allclose(got.proba, plain.proba, atol=1e-3)
    np.testing.assert_allclose(got.ood_scores, plain.ood_scores, atol=1e-6)
    np.testing.assert_allclose(got.embedding, plain.embedding, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "auto"])  # auto: the int8 file on ONNX Runtime
def test_a_call_does_not_depend_on_how_the_cell_lies(pbc_cells, backend):
    _, x = pbc_cells
    tta = Classifier.load("wbc-multisite", backend=backend).with_tta()
    as_is = tta.predict_arrays(x)
    for i in (1, 3, 6):
        np.testing.assert_allclose(tta.predict_arrays(dihedral_view(x, i)), as_is, atol=1e-5)
    plain = Classifier.load("wbc-multisite", backend=backend)
    assert not np.allclose(plain.predict_arrays(dihedral_view(x, 1)), plain.predict_arrays(x), atol=1e-3)


def test_adabn_and_tta_together_average_the_adapted_network(pbc_cells):
    _, x = pbc_cells
    clf = leukodx.load("wbc-multisite", backend="torch")
    adapted = clf.adapted_to(np.concatenate([x, x]))
    both = adapted.with_tta()
    mean = np.mean([adapted.logits(dihedral_view(x, i)) for i in range(TTA_VIEWS)], axis=0)
    np.testing.assert_allclose(both.predict_arrays(x), softmax(mean, clf.temperature), atol=1e-5)


@pytest.mark.slow
def test_predict_evaluate_and_diagnose_take_tta_and_record_it(pbc_cells, tmp_path, capsys):
    paths, x = pbc_cells
    tta = leukodx.load("wbc-multisite", backend="torch").with_tta()
    out = tmp_path / "p.json"
    assert main(["predict", *paths, "--tta", "-o", str(out), "--backend", "torch"]) == 0
    written = json.loads(out.read_text())
    assert written["test_time_augmentation"] == tta.tta
    got = np.array([[r["probabilities"][c] for c in tta.classes] for r in written["rows"]])
    np.testing.assert_allclose(got, tta.predict_arrays(x), atol=1e-5)
    plain = tmp_path / "plain.json"
    assert main(["predict", *paths, "-o", str(plain), "--backend", "torch"]) == 0
    assert json.loads(plain.read_text())["test_time_augmentation"] is None

    folder = tmp_path / "cells"  # a labelled folder: evaluate scores the averaged calls
    test = site_sides("pbc")["test"]
    for i in range(0, len(test), 130):
        label = test.classes[test.labels[i]]
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / test.abspath(i).name).symlink_to(test.abspath(i))
    result = tmp_path / "e.json"
    assert main(["evaluate", "--images", str(folder), "--tta", "--n-boot", "20", "--no-report", "-o", str(result),
                 "--backend", "torch"]) == 0
    evaluated = json.loads(result.read_text())
    assert evaluated["test_time_augmentation"] == tta.tta
    said = capsys.readouterr().err.strip().splitlines()[-1]
    lo, hi = evaluated["metrics"]["accuracy"]["ci95"]
    assert said.startswith(f"wbc-multisite on {evaluated['n']} images, averaged over 8 views (--tta): accuracy "
                           f"{evaluated['accuracy']:.4f} [{lo:.4f}, {hi:.4f}], balanced")
    proba = np.asarray(evaluated["roc_inputs"]["proba"])
    names = sorted(str(p) for p in folder.rglob("*.jpg"))
    _, arrays, _ = tta.load_inputs(names)
    np.testing.assert_allclose(proba, tta.predict_arrays(arrays), atol=1e-4)

    case = tmp_path / "case"  # the main job: the calls, the counts and the report say so
    run = diagnose(folder, kind="cells", out_dir=case, tta=True, backend="torch")
    summary = json.loads((case / "summary.json").read_text())
    assert summary["model"]["test_time_augmentation"] == tta.tta == run["model"]["test_time_augmentation"]
    assert "Test-time augmentation:</b> logits averaged over the 8 flips" in (case / "report.html").read_text()
    with (case / "predictions.csv").open() as f:
        rows = {Path(r["input"]).name: [float(r[f"p_{c}"]) for c in tta.classes] for r in csv.DictReader(f)}
    as_case = np.stack([tta.preprocess(a) for a in _case_reads(names)])
    averaged = tta.predict_arrays(as_case)
    assert sorted(rows) == sorted(Path(n).name for n in names)
    np.testing.assert_allclose([rows[Path(n).name] for n in names], averaged, atol=2e-4)
    assert not np.allclose(averaged, leukodx.load("wbc-multisite", backend="torch").predict_arrays(as_case), atol=1e-3)


def _case_reads(paths: list[str]) -> list[np.ndarray]:
    from leukodx.data.images import read_image
    from leukodx.diagnosis.case import CASE_READ_SIDE

    return [read_image(p, max_side=CASE_READ_SIDE) for p in paths]


def test_a_resumed_run_keeps_the_interrupted_runs_tta_and_ray_refuses_it(pbc_cells, tmp_path, monkeypatch, capsys):
    paths, _ = pbc_cells
    out = tmp_path / "p.csv"

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
        yield  # a generator, as stream is

    monkeypatch.setattr(Classifier, "stream", interrupted)
    assert main(["predict", *paths, "--tta", "-o", str(out)]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["predict", *paths, "--resume", "-o", str(out)]) == 2
    assert "written with tta True" in capsys.readouterr().err
    assert main(["predict", *paths, "--tta", "--ray", "local", "-o", str(tmp_path / "r.csv")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --ray and --tta: the Ray workers read each image once, as it is")


def test_a_smear_case_types_its_white_cells_with_the_averaged_calls_too():
    from leukodx.diagnosis.case import _smear_analyzer

    assert _smear_analyzer(None, None, tta=True).classifier.tta["views"] == TTA_VIEWS
    assert _smear_analyzer(None, None).classifier.tta is None


def test_each_view_is_undone_by_its_inverse(pbc_cells):
    x = pbc_cells[1][:2]
    for i in range(TTA_VIEWS):
        np.testing.assert_array_equal(undo_dihedral_view(dihedral_view(x, i), i), x)
        np.testing.assert_array_equal(undo_dihedral_view(dihedral_view(x[..., 0], i), i), x[..., 0])  # a heatmap


def test_the_averaged_calls_heatmap_turns_with_the_cell(pbc_cells):
    clf = leukodx.load("wbc-multisite", backend="torch")
    x = pbc_cells[1][:4]
    targets = np.zeros(len(x), dtype=int)
    heat = explain.gradcam(clf.net, x, clf.preprocess, targets, views=TTA_VIEWS)
    assert heat.shape == (4, clf.preprocess.size, clf.preprocess.size)
    np.testing.assert_allclose(heat.reshape(4, -1).max(1), 1.0, rtol=1e-6)
    for j in (1, 5):  # the cell turned (mirrored): its explanation is the same map turned (mirrored)
        turned = explain.gradcam(clf.net, dihedral_view(x, j), clf.preprocess, targets, views=TTA_VIEWS)
        np.testing.assert_allclose(turned, dihedral_view(heat, j), atol=1e-5)
    one_view = explain.gradcam(clf.net, x, clf.preprocess, targets)
    assert np.abs(explain.gradcam(clf.net, dihedral_view(x, 1), clf.preprocess, targets)
                  - dihedral_view(one_view, 1)).max() > 0.05  # a single view's map does not turn with the cell


def test_diagnose_with_tta_explains_over_the_views_of_the_call(pbc_cells, monkeypatch):
    seen, gradcam = [], explain.gradcam

    def spy(net, batch, preprocess, targets=None, **kw):
        seen.append(kw.get("views", 1))
        return gradcam(net, batch, preprocess, targets, **kw)

    monkeypatch.setattr(explain, "gradcam", spy)
    paths = [Path(p) for p in pbc_cells[0][:3]]
    diagnose(paths, kind="cells", model="wbc-multisite", backend="torch", tta=True, explain=True)
    diagnose(paths, kind="cells", model="wbc-multisite", backend="torch", explain=True)
    assert seen == [TTA_VIEWS, 1]


def test_a_bare_network_averages_the_views_as_the_bundle_does(pbc_cells):
    """``predict_logits(views=8)`` (training and the LOSO protocol's ``tta`` arm) is ``--tta``'s average."""
    _, x = pbc_cells
    clf = leukodx.load("wbc-multisite", backend="torch")
    averaged = predict_logits(clf.net, x, clf.preprocess, batch_size=5, views=TTA_VIEWS)
    np.testing.assert_allclose(softmax(averaged, clf.temperature), clf.with_tta().predict_arrays(x), atol=1e-5)
    assert not np.allclose(averaged, predict_logits(clf.net, x, clf.preprocess), atol=1e-2)
