"""The patient-level APL model: bags of cells, a NumPy bundle tied to its cell model, patient CV."""

from __future__ import annotations

import numpy as np
import pytest

import leukodx
from leukodx.errors import InvalidInputError
from leukodx.inference.patient import PatientModel, bag_features, predict_logistic, train_apl_model


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


@pytest.fixture(scope="module")
def small_apl(tmp_path_factory):
    """Fitted on 4 cells per patient typed by pbc-celltype (a model that never saw deepapl)."""
    clf = leukodx.load("pbc-celltype")
    model, details = train_apl_model(clf, repeats=2, n_boot=50, cells_per_patient=4, name="apl-test")
    return clf, model, details, tmp_path_factory.mktemp("apl")


def test_apl_model_cross_validates_over_patients_and_saves_as_a_bundle(small_apl):
    clf, model, details, tmp = small_apl
    data = details["data"]
    assert len(data["patients"]) == 82 and int(data["y"].sum()) == 22
    assert all(n == 4 for n in data["n_cells"].values())
    assert data["unseen"].all()  # pbc-celltype saw no deepapl patient
    auroc = model.card["metrics"]["auroc_all_patients"]
    assert 0 <= auroc["ci95"][0] <= auroc["value"] <= auroc["ci95"][1] <= 1
    assert model.card["cell_model"] == "pbc-celltype" and model.card["cell_model_sha256"] == clf.card["sha256"]
    card = model.save(tmp / "apl")
    loaded = PatientModel.load(tmp / "apl")
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
