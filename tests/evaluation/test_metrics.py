"""Metrics agree with scikit-learn and carry confidence intervals that contain them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

from leukodx.evaluation.metrics import classification_metrics, expected_calibration_error


@pytest.fixture(scope="module")
def predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4))
    logits[np.arange(400), y] += 1.5  # informative but imperfect
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, proba


def test_point_values_match_sklearn(predictions):
    y, proba = predictions
    pred = proba.argmax(1)
    m = classification_metrics(y, proba, list("abcd"), n_boot=100)
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"]["value"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert m["per_class"]["a"]["auroc"]["value"] == pytest.approx(roc_auc_score(y == 0, proba[:, 0]))
    tn = ((y != 0) & (pred != 0)).sum()
    assert m["per_class"]["a"]["specificity"]["value"] == pytest.approx(tn / (y != 0).sum())


def test_confidence_intervals_bracket_the_value_and_shrink_with_n(predictions):
    y, proba = predictions
    small = classification_metrics(y[:80], proba[:80], list("abcd"), n_boot=300)
    large = classification_metrics(y, proba, list("abcd"), n_boot=300)
    for key in ("accuracy", "macro_f1", "balanced_accuracy"):
        lo, hi = large[key]["ci95"]
        assert lo <= large[key]["value"] <= hi
    lo, hi = large["ece"]["ci95"]  # ECE is biased upward under resampling: its interval need not hold the value
    assert 0 <= lo < hi
    width = lambda m: m["accuracy"]["ci95"][1] - m["accuracy"]["ci95"][0]
    assert width(large) < width(small)


def test_predicting_a_class_absent_from_the_data_counts_as_an_error():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])
    m = classification_metrics(y, proba, ["a", "b", "c"], n_boot=10)
    assert m["accuracy"]["value"] == 0.75
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, proba.argmax(1), average="macro"))


def test_ece_is_zero_for_calibrated_certainty_and_large_for_overconfidence():
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y, np.eye(2)[y]) == 0
    wrong = np.eye(2)[1 - y] * 0.99 + 0.005
    assert expected_calibration_error(y, wrong) > 0.9


def test_folder_classes_match_model_classes_case_insensitively_and_by_synonym():
    from leukodx.evaluation.evaluate import match_classes

    model = ["basophil", "eosinophil", "ig", "neutrophil"]
    assert match_classes(["Neutrophils", "EOSINOPHIL", "Immature_Granulocytes", "blast"], model) == {
        "Neutrophils": 3, "EOSINOPHIL": 1, "Immature_Granulocytes": 2}


def test_auroc_is_sklearns_with_ties_and_nan_without_a_group():
    from leukodx.stats import auroc

    rng = np.random.default_rng(3)
    positive = rng.random(500) < 0.3
    scores = np.round(rng.normal(size=500) + positive, 1)  # rounded: many ties across the two groups
    assert auroc(positive, scores) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    assert auroc(positive, -scores) == pytest.approx(1 - roc_auc_score(positive, scores), abs=1e-12)
    assert np.isnan(auroc(np.zeros(5, bool), np.arange(5.0)))
    assert np.isnan(auroc(np.ones(5, bool), np.arange(5.0)))
