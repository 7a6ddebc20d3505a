"""Grad-CAM explanations: shapes, the model-randomization sanity check, and the report."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from leukodx.data.cache import cached_arrays
from leukodx.data.folder import limit_per_class
from leukodx.data.images import collect_image_paths, read_image
from leukodx.data.sites import site_sides
from leukodx.diagnosis.case import CASE_READ_SIDE, diagnose
from leukodx.inference import explain
from leukodx.inference.classifier import load_model
from leukodx.inference.explain import gradcam, overlay


def _cells(clf, n_per_class=2):
    side = limit_per_class(site_sides("pbc")["test"], n_per_class, 0)
    return cached_arrays(side, clf.preprocess)


def test_heatmaps_are_normalised_maps_of_the_input_size():
    clf = load_model("wbc-multisite", backend="torch")
    x = _cells(clf, 1)
    heat = gradcam(clf.net, x, clf.preprocess)
    assert heat.shape == (len(x), clf.preprocess.size, clf.preprocess.size)
    assert heat.min() >= 0 and np.allclose(heat.reshape(len(x), -1).max(1), 1.0, atol=1e-5)
    assert overlay(x[0], heat[0]).shape == (96, 96, 3)
    # another class explains other pixels
    other = gradcam(clf.net, x, clf.preprocess, targets=np.full(len(x), clf.classes.index("platelet")))
    assert not np.allclose(heat, other)


def test_model_randomization_sanity_check():
    """Adebayo et al. 2018: heatmaps of the trained network must differ from those of the same
    network with re-initialized weights (else they show the input, not what the model learnt)."""
    clf = load_model("wbc-multisite", backend="torch")
    x = _cells(clf)
    trained = gradcam(clf.net, x, clf.preprocess)
    randomized = copy.deepcopy(clf.net)
    torch.manual_seed(0)
    for module in randomized.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    random_maps = gradcam(randomized, x, clf.preprocess)
    rho = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(trained, random_maps)]
    assert np.nanmean(rho) < 0.5, f"heatmaps barely change when the weights are randomized (rho {np.nanmean(rho):.2f})"


def test_diagnose_explain_puts_a_heatmap_per_cell_in_the_report(pbc_folder, tmp_path):
    from leukodx.cli.app import main

    out = tmp_path / "case"
    assert main(["diagnose", str(pbc_folder / "monocyte"), "--kind", "cells", "--explain", "-o", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert html.count('class="cam"') == 4 and "Grad-CAM" in html
    summary = json.loads((out / "summary.json").read_text())
    assert "_explanations" not in summary and summary["shift"]["reason"] and summary["explained"] is True
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(r["prediction_set"] and r["ood"] in ("0", "1") for r in rows)


@pytest.mark.slow
def test_with_test_time_adaptation_the_adapted_network_is_explained(pbc_folder, monkeypatch):
    explained = []

    def spy(net, batch, preprocess, targets=None, **kw):
        explained.append(net)
        return gradcam(net, batch, preprocess, targets, **kw)

    monkeypatch.setattr(explain, "gradcam", spy)
    result = diagnose([pbc_folder], kind="cells", model="wbc-multisite", backend="torch", adapt_bn=True, explain=True)
    assert len(result["_explanations"]) == 32
    shipped = load_model("wbc-multisite", backend="torch")
    paths, _ = collect_image_paths([pbc_folder])
    by_hand = shipped.adapted_to(np.stack([shipped.preprocess(read_image(p, max_side=CASE_READ_SIDE)) for p in paths]))

    def running_mean(net):
        return next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean

    assert explained and all(torch.allclose(running_mean(n), running_mean(by_hand.net), atol=1e-4) for n in explained)
    assert not torch.allclose(running_mean(explained[0]), running_mean(shipped.net), atol=1e-3)
