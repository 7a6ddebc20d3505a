"""Classification metrics, each with a 95% bootstrap confidence interval.

Pure functions of (y_true, probabilities). Everything derived from the confusion matrix is
recomputed on each bootstrap resample from one vectorized ``bincount``, so 1,000 resamples of a
few thousand predictions take well under a second.
"""

from __future__ import annotations

import warnings

import numpy as np

from leukodx import stats
from leukodx.stats import estimate


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts, rows = true class, columns = predicted class."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def _from_confusion(cm: np.ndarray) -> dict[str, np.ndarray | float]:
    cm = cm.astype(np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    fn = support - tp
    fp = predicted - tp
    tn = total - tp - fn - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.where(support > 0, tp / support, np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        ppv = np.where(predicted > 0, tp / predicted, np.nan)
        npv = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    present = support > 0
    return {
        "accuracy": tp.sum() / total,
        "balanced_accuracy": float(np.nanmean(sens[present])),
        # classes absent from y_true but predicted count as F1 = 0 (sklearn's convention)
        "macro_f1": float(np.nanmean(np.where(present | (predicted > 0), np.nan_to_num(f1), np.nan))),
        "weighted_f1": float(np.nansum(np.nan_to_num(f1) * support) / total),
        "sensitivity": sens, "specificity": spec, "ppv": ppv, "npv": npv, "f1": f1,
    }


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=correct, minlength=n_bins) - np.bincount(bins, weights=conf, minlength=n_bins))
    return float(gap.sum() / max(len(y_true), 1)) if count.sum() else float("nan")


def reliability_curve(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> dict:
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
    return {"count": count.tolist(), "accuracy": np.nan_to_num(acc).tolist(), "confidence": np.nan_to_num(mean_conf).tolist()}


def ovr_auroc(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC per class; NaN where a class has no positives or no negatives."""
    out = np.full(proba.shape[1], np.nan)
    for c in range(proba.shape[1]):
        pos = y_true == c
        if 0 < pos.sum() < len(y_true):
            out[c] = stats.auroc(pos, proba[:, c])
    return out


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                           n_boot: int = 1000, seed: int = 0, auroc_boot: int = 200) -> dict:
    """Every figure the evaluation reports, as ``{"value": x, "ci95": [lo, hi]}`` entries.

    ``proba`` is (N, K) over the model's K classes; ``y_true`` indexes the same classes.
    """
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    k = proba.shape[1]
    y_pred = proba.argmax(axis=1)
    point = _from_confusion(confusion(y_true, y_pred, k))
    ece = expected_calibration_error(y_true, proba)
    auroc = ovr_auroc(y_true, proba)

    n = len(y_true)
    keys = list(point)
    widths = [np.size(point[key]) for key in keys]

    def confusion_figures(idx: np.ndarray) -> np.ndarray:
        m = _from_confusion(confusion(y_true[idx], y_pred[idx], k))
        return np.concatenate([np.ravel(m[key]) for key in keys]
                              + [[expected_calibration_error(y_true[idx], proba[idx])]])

    # one resampling sequence (stats.bootstrap); AUROC, the slow one, on its first ``auroc_boot`` resamples
    flat = stats.bootstrap(confusion_figures, n, n_boot, seed).reshape(n_boot, -1)
    boot_auroc = stats.bootstrap(lambda idx: ovr_auroc(y_true[idx], proba[idx]), n, min(auroc_boot, n_boot),
                                 seed).reshape(-1, k)
    boots, col = {}, 0
    for key, width in zip(keys, widths):
        block = flat[:, col:col + width]
        boots[key] = block[:, 0] if np.ndim(point[key]) == 0 else block
        col += width
    boot_ece = flat[:, col]

    entry = estimate
    result = {key: entry(point[key], boots[key]) for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")}
    result["ece"] = entry(ece, boot_ece)
    with warnings.catch_warnings():  # a class without positives makes an all-NaN resample
        warnings.simplefilter("ignore", RuntimeWarning)
        result["macro_auroc"] = entry(np.nanmean(auroc), np.nanmean(boot_auroc, axis=1))
    result["per_class"] = {
        cls: {
            "support": int((y_true == c).sum()),
            **{key: entry(point[key][c], boots[key][:, c]) for key in ("sensitivity", "specificity", "ppv", "npv", "f1")},
            "auroc": entry(auroc[c], boot_auroc[:, c]),
        }
        for c, cls in enumerate(classes)
    }
    result["confusion_matrix"] = confusion(y_true, y_pred, k).tolist()
    result["n"] = int(n)
    result["bootstrap"] = {"resamples": n_boot, "auroc_resamples": auroc_boot, "seed": seed, "ci": "percentile 95%"}
    return result
