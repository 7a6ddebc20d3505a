"""Feature selectors for expression data, as scikit-learn transformers so that a ``Pipeline``
refits them inside every cross-validation fold (never before the split)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.feature_selection import RFE, SelectorMixin
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted, check_X_y
from leukodx.errors import InvalidInputError


def signal_to_noise(X: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Golub's P(g, c) = (mu1 - mu2) / (sigma1 + sigma2) for two classes."""
    a, b = X[y == classes[0]], X[y == classes[1]]
    return (a.mean(0) - b.mean(0)) / (a.std(0) + b.std(0) + 1e-12)


class _TopK(SelectorMixin, BaseEstimator):
    """Keep the ``k`` features with the largest ``scores_`` (balanced between signs if asked)."""

    def _get_support_mask(self):
        check_is_fitted(self, "scores_")
        k = min(self.k, len(self.scores_))
        mask = np.zeros(len(self.scores_), dtype=bool)
        mask[np.argsort(-self.scores_, kind="stable")[:k]] = True
        return mask


class SignalToNoiseSelector(_TopK):
    """The k genes with the largest |signal-to-noise| (k/2 per class, as Golub et al. 1999)."""

    def __init__(self, k: int = 50):
        self.k = k

    def fit(self, X, y):
        X, y = check_X_y(X, y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise InvalidInputError("signal-to-noise selection needs exactly two classes")
        snr = signal_to_noise(X, y, self.classes_)
        half = self.k // 2
        scores = np.zeros_like(snr)
        up, down = np.argsort(-snr)[:half], np.argsort(snr)[: self.k - half]
        scores[up] = 1 + np.abs(snr[up])
        scores[down] = 1 + np.abs(snr[down])
        self.snr_ = snr
        self.scores_ = scores
        return self


class TTestSelector(_TopK):
    """The k genes with the largest |Welch t| (two classes) or ANOVA F (more classes)."""

    def __init__(self, k: int = 50):
        self.k = k

    def fit(self, X, y):
        from scipy import stats

        X, y = check_X_y(X, y)
        self.classes_ = np.unique(y)
        with warnings.catch_warnings():  # genes constant within a class give NaN t, scored 0 below
            warnings.simplefilter("ignore", RuntimeWarning)
            self._score(X, y, stats)
        return self

    def _score(self, X, y, stats) -> None:
        if len(self.classes_) == 2:
            t, _ = stats.ttest_ind(X[y == self.classes_[0]], X[y == self.classes_[1]], equal_var=False)
            self.scores_ = np.nan_to_num(np.abs(t))
        else:
            f, _ = stats.f_oneway(*[X[y == c] for c in self.classes_])
            self.scores_ = np.nan_to_num(f)


class GainRatioSelector(_TopK):
    """The k genes with the largest gain ratio of their best binary cut (information gain / split info)."""

    def __init__(self, k: int = 50):
        self.k = k

    @staticmethod
    def _entropy(counts: np.ndarray) -> np.ndarray:
        p = counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.nansum(np.where(p > 0, p * np.log2(p), 0.0), axis=-1)

    def fit(self, X, y):
        X, y = check_X_y(X, y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        n, k = len(y), len(self.classes_)
        onehot = np.eye(k)[yi]
        base = self._entropy(onehot.sum(0))
        scores = np.zeros(X.shape[1])
        for j in range(X.shape[1]):
            order = np.argsort(X[:, j], kind="stable")
            left = np.cumsum(onehot[order], axis=0)[:-1]  # class counts left of each cut
            right = left[-1] + onehot[order][-1] - left
            nl = np.arange(1, n)
            cond = (nl * self._entropy(left) + (n - nl) * self._entropy(right)) / n
            gain = base - cond
            split = self._entropy(np.stack([nl, n - nl], axis=1).astype(float))
            valid = np.diff(X[order, j]) > 0  # cut only between distinct values
            if valid.any():
                scores[j] = np.max(np.where(valid, gain / np.maximum(split, 1e-12), 0.0))
        self.scores_ = scores
        return self


class SVMRFESelector(SelectorMixin, BaseEstimator):
    """SVM-RFE (Guyon et al. 2002): drop the genes of smallest linear-SVM weight, ``step`` at a time."""

    def __init__(self, k: int = 50, step: float = 0.1, C: float = 1.0):
        self.k = k
        self.step = step
        self.C = C

    def fit(self, X, y):
        X, y = check_X_y(X, y)
        self.rfe_ = RFE(LinearSVC(C=self.C, dual="auto", max_iter=5000), n_features_to_select=min(self.k, X.shape[1]),
                        step=self.step).fit(X, y)
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "rfe_")
        return self.rfe_.support_


SELECTORS = {"snr": SignalToNoiseSelector, "ttest": TTestSelector, "gain-ratio": GainRatioSelector,
             "svm-rfe": SVMRFESelector}
