"""Microarray and RNA-seq preprocessing as scikit-learn transformers (fitted on training data only)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted
from leukodx.errors import InvalidInputError


class GolubPreprocessor(TransformerMixin, BaseEstimator):
    """Floor/ceiling thresholds, a variation filter, log10 and per-gene z-scores (Dudoit et al. 2002).

    Genes pass the filter when, over the training samples, max/min > ``min_fold`` and
    max - min > ``min_range``. Means and standard deviations come from the training samples.
    """

    def __init__(self, floor: float = 100.0, ceiling: float = 16000.0, min_fold: float = 5.0,
                 min_range: float = 500.0, log: bool = True, zscore: bool = True):
        self.floor = floor
        self.ceiling = ceiling
        self.min_fold = min_fold
        self.min_range = min_range
        self.log = log
        self.zscore = zscore

    def _clip_log(self, X: np.ndarray) -> np.ndarray:
        X = np.clip(X, self.floor, self.ceiling)
        return np.log10(X) if self.log else X

    def fit(self, X, y=None):
        X = check_array(X, dtype=np.float64)
        clipped = np.clip(X, self.floor, self.ceiling)
        hi, lo = clipped.max(axis=0), clipped.min(axis=0)
        self.support_ = (hi / lo > self.min_fold) & (hi - lo > self.min_range)
        if not self.support_.any():
            raise InvalidInputError("no gene passes the variation filter on these training samples")
        Z = self._clip_log(X[:, self.support_])
        self.mean_ = Z.mean(axis=0)
        self.scale_ = Z.std(axis=0) + 1e-12
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        check_is_fitted(self, "support_")
        X = check_array(X, dtype=np.float64)
        Z = self._clip_log(X[:, self.support_])
        return (Z - self.mean_) / self.scale_ if self.zscore else Z

    def get_support(self) -> np.ndarray:
        return self.support_


class CountsPreprocessor(TransformerMixin, BaseEstimator):
    """RNA-seq counts -> log2(CPM + 1), keeping genes expressed (CPM >= ``min_cpm``) in at least
    ``min_samples`` training samples, then per-gene z-scores from the training samples."""

    def __init__(self, min_cpm: float = 1.0, min_samples: int = 2, zscore: bool = True):
        self.min_cpm = min_cpm
        self.min_samples = min_samples
        self.zscore = zscore

    @staticmethod
    def _log_cpm(X: np.ndarray) -> np.ndarray:
        lib = X.sum(axis=1, keepdims=True)
        if (lib <= 0).any():
            raise InvalidInputError("a sample has no counts (library size 0)")
        return np.log2(X / lib * 1e6 + 1.0)

    def fit(self, X, y=None):
        X = check_array(X, dtype=np.float64)
        if (X < 0).any():
            raise InvalidInputError("counts must be non-negative")
        cpm = X / X.sum(axis=1, keepdims=True) * 1e6
        self.support_ = (cpm >= self.min_cpm).sum(axis=0) >= self.min_samples
        Z = self._log_cpm(X)[:, self.support_]
        self.mean_, self.scale_ = Z.mean(axis=0), Z.std(axis=0) + 1e-12
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        check_is_fitted(self, "support_")
        Z = self._log_cpm(check_array(X, dtype=np.float64))[:, self.support_]
        return (Z - self.mean_) / self.scale_ if self.zscore else Z

    def get_support(self) -> np.ndarray:
        return self.support_
