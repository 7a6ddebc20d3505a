"""Expression classifiers from the literature, as scikit-learn estimators, and the method registry.

Every method is a ``Pipeline`` (preprocessing -> in-fold feature selection -> classifier), so
cross-validation refits all of it on each training fold by construction.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted, check_X_y, validate_data

from leukodx.omics.selection import GainRatioSelector, SignalToNoiseSelector, SVMRFESelector, TTestSelector, signal_to_noise
from leukodx.errors import InvalidInputError


class PNNClassifier(ClassifierMixin, BaseEstimator):
    """Probabilistic neural network (Specht 1990): a Gaussian Parzen density per class.

    ``sigma`` is the kernel width in units of sqrt(n_features), so one value suits any number of
    z-scored genes. Class priors are the training frequencies.
    """

    def __init__(self, sigma: float = 0.5):
        self.sigma = sigma

    def fit(self, X, y):
        X, y = check_X_y(X, y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        self.X_, self.y_ = X, yi
        self.n_features_in_ = X.shape[1]
        return self

    def predict_log_proba(self, X):
        check_is_fitted(self, "X_")
        X = validate_data(self, X, reset=False)
        width = self.sigma * np.sqrt(self.X_.shape[1])
        d2 = ((X[:, None, :] - self.X_[None, :, :]) ** 2).sum(-1) / (2 * width ** 2)
        out = np.empty((len(X), len(self.classes_)))
        for c in range(len(self.classes_)):
            members = -d2[:, self.y_ == c]
            m = members.max(axis=1, keepdims=True)  # log-sum-exp: densities underflow in thousands of genes
            out[:, c] = (m[:, 0] + np.log(np.exp(members - m).sum(axis=1)))  # prior x mean density = sum / N
        out -= out.max(axis=1, keepdims=True)
        return out - np.log(np.exp(out).sum(axis=1, keepdims=True))

    def predict_proba(self, X):
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class WeightedVotingClassifier(ClassifierMixin, BaseEstimator):
    """Golub et al. (1999) weighted voting: gene g votes a_g (x_g - b_g) with a_g its signal-to-noise
    and b_g the mid-point of the class means; prediction strength PS = (V_win - V_lose)/(V_win + V_lose).
    ``predict_proba`` maps PS to (1 + PS) / 2 for the winner. Two classes only."""

    def __init__(self, min_strength: float = 0.0):
        self.min_strength = min_strength

    def fit(self, X, y):
        X, y = check_X_y(X, y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise InvalidInputError("weighted voting needs exactly two classes")
        self.a_ = signal_to_noise(X, y, self.classes_)
        self.b_ = (X[y == self.classes_[0]].mean(0) + X[y == self.classes_[1]].mean(0)) / 2
        self.n_features_in_ = X.shape[1]
        return self

    def prediction_strength(self, X) -> np.ndarray:
        check_is_fitted(self, "a_")
        X = validate_data(self, X, reset=False)
        votes = self.a_ * (X - self.b_)
        v0, v1 = np.clip(votes, 0, None).sum(1), np.clip(-votes, 0, None).sum(1)
        return (v0 - v1) / np.maximum(v0 + v1, 1e-12)  # > 0 favours classes_[0]

    def predict_proba(self, X):
        p0 = (1 + self.prediction_strength(X)) / 2
        return np.stack([p0, 1 - p0], axis=1)

    def predict(self, X):
        return self.classes_[(self.prediction_strength(X) < 0).astype(int)]


def _sklearn_at_least(major: int, minor: int) -> bool:
    import sklearn

    parts = sklearn.__version__.split(".")
    return (int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)) >= (major, minor)


# scikit-learn 1.8 reads the penalty from l1_ratio and deprecates penalty=; older releases need it
_ELASTIC_NET = {} if _sklearn_at_least(1, 8) else {"penalty": "elasticnet"}


def _linear_svm():
    """A linear SVM whose probabilities come from Platt scaling on 3 internal folds (decisions from the full fit)."""
    return CalibratedClassifierCV(SVC(kernel="linear"), method="sigmoid", cv=3, ensemble=False)


def _method(preprocess: Callable, selector, classifier) -> Callable[[], Pipeline]:
    def build() -> Pipeline:
        steps = [("preprocess", preprocess())]
        if selector is not None:
            steps.append(("select", clone(selector)))
        steps.append(("classify", clone(classifier)))
        return Pipeline(steps)

    return build


def expression_methods(preprocess: Callable, n_genes: int = 50, binary: bool = True) -> dict[str, Callable[[], Pipeline]]:
    """Named method builders; binary-only methods (signal-to-noise, weighted voting) when ``binary``."""
    snr_or_t = SignalToNoiseSelector(n_genes) if binary else TTestSelector(n_genes)
    methods = {
        "pnn": _method(preprocess, snr_or_t, PNNClassifier()),
        "svm-linear": _method(preprocess, snr_or_t, _linear_svm()),
        # a t-test pre-filter to 500 genes keeps saga's run time in seconds; the penalty picks among them
        "elastic-net": _method(preprocess, TTestSelector(500), LogisticRegression(
            solver="saga", l1_ratio=0.5, C=0.5, max_iter=5000, tol=1e-3, random_state=0, **_ELASTIC_NET)),
        "mlp": _method(preprocess, TTestSelector(n_genes), MLPClassifier(
            hidden_layer_sizes=(16,), alpha=1e-2, max_iter=3000, random_state=0)),
        "svm-rfe+svm": _method(preprocess, SVMRFESelector(n_genes), _linear_svm()),
        "gain-ratio+pnn": _method(preprocess, GainRatioSelector(n_genes), PNNClassifier()),
    }
    if binary:
        methods = {"weighted-voting": _method(preprocess, SignalToNoiseSelector(n_genes), WeightedVotingClassifier()),
                   **methods}
    return methods
