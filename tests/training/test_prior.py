"""Class-prior re-estimation (Saerens et al. 2002): from the calibrated probabilities of a batch drawn in
other proportions than the training set, EM recovers those proportions and the re-weighted probabilities
classify better; a batch in the training proportions is left as it was."""

from __future__ import annotations

import numpy as np

from leukodx.training.adaptation import reestimate_prior


def _posteriors(n_per_class: list[int], train_prior: np.ndarray, seed: int = 0):
    """Exact posteriors of three 1-D Gaussian classes (means 0, 1.5, 3; sd 1) under ``train_prior``, for a batch
    with ``n_per_class`` cells of each class."""
    rng = np.random.default_rng(seed)
    means = np.array([0.0, 1.5, 3.0])
    y = np.repeat(np.arange(3), n_per_class)
    x = rng.normal(means[y], 1.0)
    likelihood = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2)
    post = likelihood * train_prior
    return post / post.sum(axis=1, keepdims=True), y


def test_em_recovers_the_batch_proportions_and_lifts_accuracy():
    train = np.full(3, 1 / 3)
    proba, y = _posteriors([1600, 300, 100], train)
    adjusted, prior = reestimate_prior(proba, train)
    assert np.allclose(prior, [0.8, 0.15, 0.05], atol=0.04)
    assert np.allclose(adjusted.sum(axis=1), 1.0)
    before = (proba.argmax(1) == y).mean()
    after = (adjusted.argmax(1) == y).mean()
    assert after > before + 0.03


def test_a_batch_in_the_training_proportions_is_nearly_unchanged():
    train = np.array([0.5, 0.3, 0.2])
    proba, _ = _posteriors([2500, 1500, 1000], train, seed=1)
    adjusted, prior = reestimate_prior(proba, train)
    assert np.allclose(prior, train, atol=0.03)
    assert (adjusted.argmax(1) == proba.argmax(1)).mean() > 0.97


def test_a_class_the_model_was_not_trained_on_is_not_blown_up():
    """A zero training proportion would divide by zero: that class keeps its weight, the others are re-estimated."""
    proba, y = _posteriors([1600, 300, 100], np.full(3, 1 / 3))
    proba = np.hstack([proba * 0.98, np.full((len(proba), 1), 0.02)])  # a fourth class, never trained on
    adjusted, prior = reestimate_prior(proba, np.array([1 / 3, 1 / 3, 1 / 3, 0.0]))
    assert np.isfinite(adjusted).all() and np.allclose(adjusted[:, 3], 0.02)
    assert np.allclose(adjusted.sum(axis=1), 1.0)
    assert (adjusted.argmax(1) == y).mean() > (proba.argmax(1) == y).mean() + 0.03
    assert np.allclose(prior[:3], [0.8, 0.15, 0.05], atol=0.04) and prior[3] == 0.0
