"""Head re-fit (``TrainConfig.refit_head``): the last layer becomes a logistic regression on the
training images' features (as they are, or with one augmented copy each), before the temperature is fitted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from leukodx.cli.app import main
from leukodx.data.cache import cached_arrays
from leukodx.data.registry import load_dataset
from leukodx.errors import InvalidInputError
from leukodx.models.architectures import create_network
from leukodx.preprocessing.augment import augment_preset
from leukodx.preprocessing.transforms import Preprocess
from leukodx.training.adaptation import adapt_batchnorm
from leukodx.training.calibration import fit_temperature
from leukodx.training.trainer import (HEAD_REFIT_C, TrainConfig, fit, penultimate_features, predict_logits,
                                      refit_head)

PRE = Preprocess(size=32)


@pytest.fixture(scope="module")
def cells():
    """Four pbc types (basophil, eosinophil, ig, lymphocyte), 20 train / 10 val each."""
    index = load_dataset("pbc")
    tr, va = [], []
    for c in (0, 1, 3, 4):
        members = np.flatnonzero(index.labels == c)
        tr += list(members[:20])
        va += list(members[20:30])
    train, val = index.subset(tr), index.subset(va)
    remap = {0: 0, 1: 1, 3: 2, 4: 3}
    return (cached_arrays(train, PRE), np.array([remap[y] for y in train.labels]),
            cached_arrays(val, PRE), np.array([remap[y] for y in val.labels]))


def _reference(feats: np.ndarray, y: np.ndarray) -> tuple[StandardScaler, LogisticRegression]:
    scaler = StandardScaler().fit(feats)
    return scaler, LogisticRegression(C=HEAD_REFIT_C, max_iter=2000).fit(scaler.transform(feats), y)


def _config(refit_head: str = "clean", **kw) -> TrainConfig:
    return TrainConfig(arch="resnet10t", epochs=2, batch_size=16, lr=3e-3, patience=2, preprocess=PRE,
                       refit_head=refit_head, **kw)


def test_the_refitted_head_is_the_logistic_regression_and_the_temperature_comes_after(cells):
    x_tr, y_tr, x_va, y_va = cells
    result = fit(x_tr, y_tr, x_va, y_va, 4, _config(), None, show_progress=False)
    scaler, reference = _reference(penultimate_features(result.net, x_tr, PRE), y_tr)
    for x in (x_tr, x_va):
        expected = reference.decision_function(scaler.transform(penultimate_features(result.net, x, PRE)))
        np.testing.assert_allclose(predict_logits(result.net, x, PRE), expected, atol=2e-3)
    refit = result.head_refit
    assert refit["images"] == len(y_tr) and refit["C"] == HEAD_REFIT_C
    assert refit["train_accuracy_refitted_head"] == round(reference.score(scaler.transform(
        penultimate_features(result.net, x_tr, PRE)), y_tr), 4)
    assert refit["val_accuracy_refitted_head"] == round(float(np.mean(predict_logits(result.net, x_va, PRE)
                                                                      .argmax(1) == y_va)), 4)
    # calibrated on the re-fitted head's validation logits, not the trained head's
    assert result.temperature == pytest.approx(fit_temperature(predict_logits(result.net, x_va, PRE), y_va), rel=1e-4)


def test_without_the_option_the_trained_head_stays(cells):
    x_tr, y_tr, x_va, y_va = cells
    result = fit(x_tr, y_tr, x_va, y_va, 4, _config(refit_head="none"), None, show_progress=False)
    scaler, reference = _reference(penultimate_features(result.net, x_tr, PRE), y_tr)
    expected = reference.decision_function(scaler.transform(penultimate_features(result.net, x_va, PRE)))
    assert result.head_refit is None
    assert np.abs(predict_logits(result.net, x_va, PRE) - expected).max() > 0.1


def test_two_classes_and_a_class_without_images(cells):
    x_tr, y_tr, _, _ = cells
    keep = np.isin(y_tr, (0, 2))  # basophils and immature granulocytes only, in a four-class network
    x, y = x_tr[keep], y_tr[keep]
    torch.manual_seed(0)
    net = create_network("resnet10t", 4)
    scaler, reference = _reference(penultimate_features(net, x, PRE), y)
    refit_head(net, x, y, 4, PRE)
    logits = predict_logits(net, x, PRE)
    np.testing.assert_array_equal(logits.argmax(1), reference.predict(scaler.transform(
        penultimate_features(net, x, PRE))))
    # the two classes' logit difference is scikit-learn's single decision value
    np.testing.assert_allclose(logits[:, 2] - logits[:, 0],
                               reference.decision_function(scaler.transform(penultimate_features(net, x, PRE))),
                               atol=2e-3)
    assert np.all(logits[:, [1, 3]].max(1) < logits[:, [0, 2]].min(1))


def test_site_batches_refit_each_site_on_its_own_statistics(cells):
    x_tr, y_tr, x_va, y_va = cells
    groups = np.arange(len(y_tr)) % 2
    val_groups = np.arange(len(y_va)) % 2
    result = fit(x_tr, y_tr, x_va, y_va, 4, _config(site_batches=True), None, show_progress=False,
                 groups=groups, val_groups=val_groups)
    feats = np.zeros((len(x_tr), result.head_refit["features"]), dtype=np.float32)
    for g in (0, 1):
        mine = groups == g
        feats[mine] = penultimate_features(adapt_batchnorm(result.net, x_tr[mine], PRE), x_tr[mine], PRE)
    scaler, reference = _reference(feats, y_tr)
    site = groups == 1
    np.testing.assert_allclose(predict_logits(adapt_batchnorm(result.net, x_tr[site], PRE), x_tr[site], PRE),
                               reference.decision_function(scaler.transform(feats[site])), atol=2e-3)


def test_train_refit_head_is_recorded_in_the_card(tmp_path):
    out = tmp_path / "m"
    assert main(["train", "-d", "pbc", "-o", str(out), "--epochs", "1", "--max-per-class", "8", "--size", "32",
                 "--batch-size", "16", "--refit-head", "clean", "-q"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["config"]["refit_head"] == "clean"
    assert card["training"]["head_refit"]["images"] == sum(card["data"]["counts"]["train"].values())


def test_clean_and_augmented_views_fit_one_head(cells):
    x_tr, y_tr, x_va, y_va = cells
    config = _config("clean+augmented", augment=augment_preset("stain"), seed=3)
    result = fit(x_tr, y_tr, x_va, y_va, 4, config, None, show_progress=False)
    augmented = penultimate_features(result.net, x_tr, PRE, augment=config.augment,
                                     generator=torch.Generator().manual_seed(3))  # the draws refit_head made
    feats = np.concatenate([penultimate_features(result.net, x_tr, PRE), augmented])
    scaler, reference = _reference(feats, np.tile(y_tr, 2))
    np.testing.assert_allclose(predict_logits(result.net, x_va, PRE), reference.decision_function(
        scaler.transform(penultimate_features(result.net, x_va, PRE))), atol=2e-3)
    assert result.head_refit["views"] == "clean+augmented" and result.head_refit["images"] == len(y_tr)


def test_an_unknown_refit_mode_is_one_line(tmp_path, capsys):
    with pytest.raises(InvalidInputError, match="expected one of none, clean, clean\\+augmented"):
        _config("yes")
    assert main(["train", "-d", "pbc", "-o", str(tmp_path / "m"), "--refit-head", "yes"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refit head 'yes'" in err[0]
