"""The models shipped in the package: complete cards, intact weights, and real accuracy."""

from __future__ import annotations

import numpy as np
import pytest

import leukodx
from leukodx.data.registry import load_dataset
from leukodx.data.splits import apply_split, bundled_split_path, load_split
from leukodx.data.verify import sha256_file
from leukodx.models.bundle import BUNDLED_DIR, read_card

BUNDLED = {"pbc-celltype": "pbc", "all-stage": "all-aria"}


def test_both_bundled_models_are_installed():
    assert set(BUNDLED) <= set(leukodx.list_models())


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_card_describes_data_split_metrics_and_limits(name):
    card = read_card(BUNDLED_DIR / name)
    weights = BUNDLED_DIR / name / card["weights"]
    assert sha256_file(weights) == card["sha256"]
    assert weights.stat().st_size <= 20_000_000
    assert card["data"]["dataset"] == BUNDLED[name]
    assert card["data"]["split_sha256"] == sha256_file(bundled_split_path(BUNDLED[name]))
    test = card["metrics"]["test"]
    assert test["accuracy"]["ci95"][0] <= test["accuracy"]["value"] <= test["accuracy"]["ci95"][1]
    assert card["input_size"] == card["preprocess"]["size"]
    assert card["intended_use"] and card["limits"] and card["versions"]["torch"]
    assert 0.05 < card["temperature"] < 20
    assert card["training"]["config"]["seed"] == 0


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_model_is_accurate_on_its_own_test_images(name):
    dataset = BUNDLED[name]
    test = apply_split(load_dataset(dataset), load_split(bundled_split_path(dataset)))["test"]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(test), 120, replace=False)
    clf = leukodx.load_model(name)
    result = clf.predict([test.abspath(i) for i in pick])
    truth = [test.classes[test.labels[i]] for i in pick]
    accuracy = np.mean([r["top_class"] == t for r, t in zip(result.rows, truth)])
    assert accuracy >= 0.9
