"""The patient-level APL model: bags of cells, a NumPy bundle tied to its cell model, patient CV."""

from __future__ import annotations

import numpy as np
import pytest

import leukodx
from leukodx.errors import InvalidInputError
from leukodx.inference.patient import (PatientModel, bag_features, fit_instance, fit_platt, predict_logistic,
                                       train_apl_model)


def test_bag_features_are_mean_probabilities_and_top_class_fractions():
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    x, names = bag_features(proba, ["a", "b", "c"])
    assert names == ["mean_p_a", "mean_p_b", "mean_p_c", "fraction_a", "fraction_b", "fraction_c"]
    np.testing.assert_allclose(x[:3], proba.mean(0))
    np.testing.assert_allclose(x[3:], [0.5, 0.25, 0.25])
    with pytest.raises(InvalidInputError, match="at least one cell"):
        bag_features(np.zeros((0, 3)), ["a", "b", "c"])


def test_the_embedding_is_pooled_over_leukemic_looking_cells():
    classes = ["lymphocyte", "blast", "immature_granulocyte"]
    proba = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    embedding = np.array([[100.0, -100.0], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    x, names = bag_features(proba, classes, embedding)
    # weights 0, 1, 0.5, 1: the lymphocyte does not count, the mixed cell half
    np.testing.assert_allclose(x[6:], (embedding[1] + 0.5 * embedding[2] + embedding[3]) / 2.5)
    assert names[6:] == ["leukemic_embedding_0", "leukemic_embedding_1"]
    with pytest.raises(InvalidInputError, match="one row per cell"):
        bag_features(proba, classes, embedding[:2])


def test_instance_regression_ignores_cells_that_do_not_look_leukemic():
    classes = ["lymphocyte", "blast"]
    rng = np.random.default_rng(0)
    bags = [np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8]]) for _ in range(6)]
    embeddings = [rng.normal(size=(3, 4)) for _ in range(6)]
    y = np.array([0, 1, 0, 1, 0, 1])
    fitted = fit_instance(bags, embeddings, y, classes)
    moved = [e.copy() for e in embeddings]
    for e in moved:
        e[0] += 50  # the lymphocyte (weight 0) of every patient
    refit = fit_instance(bags, moved, y, classes)
    for key in fitted:
        np.testing.assert_allclose(refit[key], fitted[key], rtol=1e-6, atol=1e-9)
    moved[0][1] += 50  # a blast
    assert not np.allclose(fit_instance(bags, moved, y, classes)["cell_coef"], fitted["cell_coef"])
    with pytest.raises(InvalidInputError, match="both classes"):
        fit_instance(bags[:2], embeddings[:2], np.array([1, 1]), classes)


def test_platt_scaling_maps_higher_scores_to_higher_probabilities():
    score = np.array([-2.0, -1.0, -0.5, 0.2, 0.5, 1.0, 2.0, -0.1])
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    slope, intercept = fit_platt(score, y)
    assert slope > 0
    p = 1 / (1 + np.exp(-(slope * score + intercept)))
    assert p[6] > 0.9 and p[0] < 0.1


@pytest.fixture(scope="module")
def small_apl(tmp_path_factory):
    """The instance model, fitted on 4 cells per patient typed by pbc-celltype (never saw deepapl)."""
    clf = leukodx.load("pbc-celltype")
    model, details = train_apl_model(clf, repeats=2, n_boot=50, cells_per_patient=4, name="apl-test")
    return clf, model, details, tmp_path_factory.mktemp("apl")


@pytest.fixture(scope="module")
def small_bag_apl(small_apl):
    clf = small_apl[0]
    model, details = train_apl_model(clf, repeats=2, n_boot=50, cells_per_patient=4, name="apl-test",
                                     method="bag")
    return clf, model, details, small_apl[3]


def test_instance_model_scores_a_patient_by_their_leukemic_looking_cells(small_apl):
    clf, model, details, tmp = small_apl
    data = details["data"]
    assert model.method == "instance" and model.card["training"]["method"] == "instance"
    assert len(data["patients"]) == 82 and int(data["y"].sum()) == 22
    auroc = model.card["metrics"]["auroc_all_patients"]
    assert 0 <= auroc["ci95"][0] <= auroc["value"] <= auroc["ci95"][1] <= 1
    # calibrated on single models' out-of-fold scores (each repeat's), not their average over repeats
    repeats = details["cv"]["oof_repeats"]
    assert repeats.shape == (2, 82)
    np.testing.assert_allclose(model.arrays["platt"], fit_platt(repeats.ravel(), np.tile(data["y"], 2)))
    model.save(tmp / "instance")
    loaded = PatientModel.load(tmp / "instance")
    assert loaded.method == "instance"
    classes = list(clf.classes)
    blast, lymph = classes.index("ig"), classes.index("lymphocyte")  # pbc-celltype has no blast class
    bag = np.zeros((3, len(classes)))
    bag[0, blast] = bag[1, blast] = bag[2, lymph] = 1.0
    embedding = data["embeddings"][data["patients"][0]][:3].astype(np.float64)
    p = loaded.probability(bag, embedding)
    assert p == pytest.approx(model.probability(bag, embedding), abs=1e-12)
    # the patient's score: the mean of its two leukemic-looking cells' log-odds, calibrated (not the lymphocyte)
    logits = (embedding - model.arrays["cell_mean"]) / model.arrays["cell_scale"] @ model.arrays["cell_coef"]
    slope, intercept = model.arrays["platt"]
    z = slope * (logits[:2].mean() + model.arrays["cell_intercept"][0]) + intercept
    assert p == pytest.approx(1 / (1 + np.exp(-z)))
    other = embedding.copy()
    other[2] += 10
    assert loaded.probability(bag, other) == pytest.approx(p, abs=1e-12)
    other[0] += 10
    assert loaded.probability(bag, other) != pytest.approx(p, abs=1e-6)
    drivers = loaded.contributions(bag, top=5, cell_embedding=embedding)
    assert sorted(d["cell"] for d in drivers) == [0, 1, 2]
    assert [abs(d["log_odds"]) for d in drivers] == sorted((abs(d["log_odds"]) for d in drivers), reverse=True)
    assert next(d for d in drivers if d["cell"] == 2)["log_odds"] == 0
    # the same call from per-cell log-odds worked out a chunk of cells at a time (how a large case is scored)
    chunked = np.concatenate([loaded.instance_logits(embedding[i:i + 2]) for i in range(0, 3, 2)])
    assert loaded.probability(bag, cell_logits=chunked) == pytest.approx(p, abs=1e-12)
    assert loaded.contributions(bag, top=5, cell_logits=chunked) == drivers
    with pytest.raises(InvalidInputError, match="2 cell log-odds for 3 cells"):
        loaded.probability(bag, cell_logits=chunked[:2])
    with pytest.raises(InvalidInputError, match="features"):
        loaded.probability(bag)
    with pytest.raises(InvalidInputError, match="expects"):
        loaded.probability(bag, embedding[:, :5])
    with pytest.raises(InvalidInputError, match="features per cell"):
        loaded.instance_logits(embedding[:, :5])


def test_apl_model_cross_validates_over_patients_and_saves_as_a_bundle(small_bag_apl):
    clf, model, details, tmp = small_bag_apl
    data = details["data"]
    assert len(data["patients"]) == 82 and int(data["y"].sum()) == 22
    assert all(n == 4 for n in data["n_cells"].values())
    assert data["unseen"].all()  # pbc-celltype saw no deepapl patient
    auroc = model.card["metrics"]["auroc_all_patients"]
    assert 0 <= auroc["ci95"][0] <= auroc["value"] <= auroc["ci95"][1] <= 1
    assert model.card["cell_model"] == "pbc-celltype" and model.card["cell_model_sha256"] == clf.card["sha256"]
    card = model.save(tmp / "apl")
    loaded = PatientModel.load(tmp / "apl")
    assert loaded.method == "bag"
    bag, embedding = data["bags"][data["patients"][0]], data["embeddings"][data["patients"][0]]
    assert model.uses_embedding and embedding.shape == (4, clf.embedding_dim)
    assert loaded.probability(bag, embedding) == pytest.approx(model.probability(bag, embedding), abs=1e-12)
    x, _ = bag_features(bag, clf.classes, embedding)
    assert model.probability(bag, embedding) == pytest.approx(float(predict_logistic(model.arrays, x[None])[0]))
    with pytest.raises(InvalidInputError, match="features"):
        model.probability(bag)
    every = model.contributions(bag, top=100, cell_embedding=embedding)
    # each probability feature, and the pooled features as one driver
    assert len(every) == 2 * len(clf.classes) + 1
    assert [d["feature"] for d in every].count("leukemic_cell_morphology") == 1
    assert card["task"] == "patient-classification"
    assert card["data"]["dataset_fingerprint"] and len(card["data"]["split_sha256"]) == 64


def test_apl_model_refuses_cells_typed_by_another_model(small_apl):
    _, model, _, _ = small_apl
    with pytest.raises(InvalidInputError, match="cannot be used"):
        model.check_cell_model(leukodx.load("all-stage").card)
    model.check_cell_model(leukodx.load("pbc-celltype").card)
