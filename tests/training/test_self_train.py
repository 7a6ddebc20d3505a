"""Self-training on a lab's unlabelled cells: which cells are pseudo-labelled, and what the second fit is given."""

from __future__ import annotations

import numpy as np

from leukodx.benchmarking.loso import site_sides
from leukodx.data.cache import cached_arrays
from leukodx.data.folder import limit_per_class
from leukodx.inference.adapt import fine_tune_config
from leukodx.models.architectures import create_network
from leukodx.preprocessing.transforms import Preprocess
from leukodx.training import adaptation
from leukodx.training.adaptation import SELF_TRAIN_LABELLED_WEIGHT, pseudo_labels, reestimate_prior
from leukodx.training.calibration import softmax
from leukodx.training.trainer import predict_logits


def _posteriors(n_per_class: list[int], seed: int = 0):
    """Exact posteriors of three 1-D Gaussian classes (means 0, 2, 4; sd 1) under equal priors."""
    rng = np.random.default_rng(seed)
    means = np.array([0.0, 2.0, 4.0])
    y = np.repeat(np.arange(3), n_per_class)
    likelihood = np.exp(-0.5 * (rng.normal(means[y], 1.0)[:, None] - means[None, :]) ** 2)
    return likelihood / likelihood.sum(axis=1, keepdims=True), y


def test_pseudo_labels_take_each_class_in_the_batch_proportions_most_confident_first():
    proba, y = _posteriors([1600, 300, 100])
    uniform = np.full(3, 1 / 3)
    chosen, calls = pseudo_labels(proba, uniform, cells=300, threshold=0.8)
    adjusted, prior = reestimate_prior(proba, uniform)
    counts = np.bincount(calls, minlength=3)
    assert np.all(counts <= np.round(300 * prior)) and counts[0] > 200
    assert 0 < counts[2] < 30  # the rare class: far below an equal quota of 100
    assert np.all(adjusted[chosen].max(axis=1) >= 0.8) and np.array_equal(calls, adjusted[chosen].argmax(axis=1))
    for c in (0, 2):  # the chosen calls of a class are its most confident ones
        mine = chosen[calls == c]
        others = np.setdiff1d(np.flatnonzero(adjusted.argmax(axis=1) == c), mine)
        assert adjusted[mine, c].min() >= adjusted[others, c].max()
    # the confident calls are right more often than the calls as a whole
    assert np.mean(calls == y[chosen]) > np.mean(proba.argmax(axis=1) == y) + 0.05


def test_pseudo_labels_refuse_calls_below_the_threshold():
    proba, _ = _posteriors([200, 200, 200], seed=1)
    chosen, _ = pseudo_labels(proba, np.full(3, 1 / 3), cells=600, threshold=0.99)
    confidence = reestimate_prior(proba, np.full(3, 1 / 3))[0].max(axis=1)
    # the quotas (about 200 a class) do not bind here: every call at 0.99 or more is taken, and no other
    assert 0 < len(chosen) < 150 and len(chosen) == np.sum(confidence >= 0.99)
    assert np.all(confidence[chosen] >= 0.99)


def test_self_train_fits_the_parent_again_on_the_weighted_labelled_cells_and_the_first_fits_confident_calls(
        tmp_path, monkeypatch):
    pre = Preprocess(size=32)
    sides = site_sides("wbc-seg-2")
    labelled = limit_per_class(sides["train"], 3, 0)
    x, y = cached_arrays(labelled, pre), labelled.labels
    unlabelled = cached_arrays(sides["val"], pre)
    parent = create_network("regnetx_002", 5)
    config = fine_tune_config("regnetx_002", pre, len(y), epochs=1)
    first = adaptation.few_shot_fit(parent, x, y, 5, config, tmp_path / "first")
    calls_made = []
    real = adaptation.few_shot_fit

    def spy(net, xs, ys, n_classes, cfg, workdir, **kwargs):
        calls_made.append((net, xs, ys, cfg))
        return real(net, xs, ys, n_classes, cfg, workdir, **kwargs)

    monkeypatch.setattr(adaptation, "few_shot_fit", spy)
    result = adaptation.self_train(parent, x, y, unlabelled, 5, config, tmp_path / "self", first=first, threshold=0.0,
                                   epochs=2)
    assert len(calls_made) == 1  # the first fit is reused
    net, xs, ys, cfg = calls_made[0]
    expected, labels = pseudo_labels(softmax(predict_logits(first.net, unlabelled, pre), first.temperature),
                                     np.bincount(y, minlength=5) / len(y), threshold=0.0)
    n = SELF_TRAIN_LABELLED_WEIGHT * len(y)
    assert net is parent and len(expected) > 0 and cfg.epochs == 2
    assert np.array_equal(xs[:n], np.repeat(x, SELF_TRAIN_LABELLED_WEIGHT, axis=0))
    assert np.array_equal(ys, np.concatenate([np.repeat(y, SELF_TRAIN_LABELLED_WEIGHT), labels]))
    assert np.array_equal(xs[n:], unlabelled[expected])
    assert result.net is not first.net
