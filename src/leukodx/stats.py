"""One statistics module: point estimates with percentile-bootstrap 95% confidence intervals.

Every figure leukodx reports with uncertainty has one shape, ``{"value": v, "ci95": [lo, hi]}``
(``ci95`` is ``None`` when no interval was computed, ``value`` is ``None`` when undefined), and
every bootstrap in the package goes through :func:`bootstrap`.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np

__all__ = ["estimate", "percentile_ci", "bootstrap", "bootstrap_estimate", "finite_or_none", "wilson_interval",
           "binomial_tail", "rank_sum_greater", "auroc"]


def finite_or_none(x) -> float | None:
    """A float, or ``None`` for NaN / infinity / missing (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def percentile_ci(samples: Sequence[float] | np.ndarray, alpha: float = 0.05) -> list[float] | None:
    """The (alpha/2, 1 - alpha/2) percentiles of the finite samples; ``None`` if there are none."""
    s = np.asarray(samples, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    lo, hi = np.percentile(s, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


def estimate(value, samples: Sequence[float] | np.ndarray | None = None, alpha: float = 0.05) -> dict:
    """``{"value", "ci95"}``: the point value and, given bootstrap samples, their percentile interval."""
    return {"value": finite_or_none(value), "ci95": None if samples is None else percentile_ci(samples, alpha)}


#: more resamples than this add nothing to a 95% interval and can take hours
MAX_BOOT = 100_000


def bootstrap(statistic: Callable[[np.ndarray], float | np.ndarray], n: int, n_boot: int = 1000,
              seed: int = 0) -> np.ndarray:
    """``statistic(idx)`` on ``n_boot`` resamples ``idx`` of ``range(n)`` drawn with replacement.

    Returns an array (n_boot, ...) of the statistic's values; the resamples are drawn from one
    seeded generator in order, so the same call gives the same samples.
    """
    if int(n_boot) > MAX_BOOT:
        from leukodx.errors import InvalidInputError

        raise InvalidInputError(f"{n_boot} bootstrap resamples: at most {MAX_BOOT} (1,000 is plenty for a 95% CI)")
    rng = np.random.default_rng(seed)
    out = []
    with warnings.catch_warnings():  # an all-NaN resample (a class absent) is expected, not news
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(max(0, int(n_boot))):
            out.append(statistic(rng.integers(0, n, n)))
    return np.asarray(out, dtype=np.float64)


def bootstrap_estimate(statistic: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """The statistic on all ``n`` items with a bootstrap interval over items (``ci95`` None if n_boot is 0)."""
    value = statistic(np.arange(n))
    if not n_boot or n == 0:
        return estimate(value)
    return estimate(value, bootstrap(statistic, n, n_boot, seed))


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k / n (the closed-form CI for counts); NaN for n = 0."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how surprising k events in n trials are at rate p."""
    from scipy.special import bdtrc  # binom.sf's own routine, without importing scipy.stats (~0.5 s)

    if k <= 0:
        return 1.0
    return float(bdtrc(k - 1, n, p))


def auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` telling the ``positive`` items (a boolean mask) from the others:
    the share of (positive, other) pairs in which the positive one scores higher, ties counting half (the
    Mann-Whitney U over the number of pairs, equal to the trapezoidal area under the ROC curve that
    ``sklearn.metrics.roc_auc_score`` computes, without its per-call input checks: a bootstrap calls it
    thousands of times). NaN when either group is empty."""
    positive = np.asarray(positive, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    pos, neg = scores[positive], np.sort(scores[~positive])
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return _pairs_above(pos, neg) / (len(pos) * len(neg))


def _pairs_above(x: np.ndarray, sorted_reference: np.ndarray) -> float:
    """The Mann-Whitney U of ``x`` against ``sorted_reference`` (ascending): the (x, reference) pairs in which x
    is larger, ties counting half."""
    below = np.searchsorted(sorted_reference, x, side="left")
    ties = np.searchsorted(sorted_reference, x, side="right") - below
    return float(below.sum() + 0.5 * ties.sum())


def rank_sum_greater(x: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """One-sided Mann-Whitney U test that ``x`` tends to exceed ``reference`` (normal approximation,
    tie and continuity corrections, as ``scipy.stats.mannwhitneyu(x, reference, alternative='greater',
    method='asymptotic')``): the p-value, and the share of (x, reference) pairs in which x is larger
    (ties count half; 0.5 when the two come from one distribution). NaN p-value when either is empty."""
    from scipy.special import ndtr  # without importing scipy.stats (~0.5 s)

    x = np.asarray(x, dtype=np.float64).ravel()
    ref = np.sort(np.asarray(reference, dtype=np.float64).ravel())
    n, m = len(x), len(ref)
    if n == 0 or m == 0:
        return float("nan"), float("nan")
    u = _pairs_above(x, ref)
    _, counts = np.unique(np.concatenate([x, ref]), return_counts=True)
    tie_term = float(((counts.astype(np.float64) ** 3) - counts).sum())
    total = n + m
    var = n * m / 12.0 * ((total + 1) - tie_term / (total * (total - 1))) if total > 1 else 0.0
    if var <= 0:
        return 1.0, u / (n * m)
    z = (u - n * m / 2.0 - 0.5) / math.sqrt(var)
    return float(ndtr(-z)), u / (n * m)
