"""Figures of a classifier's reliability statistics (``leukodx.models.reliability``) on labelled data:
OOD AUROC against another site, the batch shift check's flag rates, conformal coverage and set
size, and risk-coverage curves (selective prediction). Used by the leave-one-site-out protocol and
``benchmarks/reliability.py``, so every figure of these kinds is computed one way.
"""

from __future__ import annotations

import numpy as np

from leukodx.models.reliability import Reliability
from leukodx.stats import auroc, wilson_interval

SHIFT_BATCH = 100
COVERAGES = (0.90, 0.95)
#: the shares of inputs kept (most confident first) at which selective accuracy is reported
KEPT = (1.0, 0.9, 0.8, 0.7, 0.5)


def ood_auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float | None:
    """AUROC of the OOD score telling ``out`` inputs (positive) from ``in`` inputs."""
    if len(in_scores) == 0 or len(out_scores) == 0:
        return None
    out = np.r_[np.zeros(len(in_scores), dtype=bool), np.ones(len(out_scores), dtype=bool)]
    return auroc(out, np.r_[in_scores, out_scores])


def shift_flag_rate(rel: Reliability, scores: np.ndarray, batch: int = SHIFT_BATCH, seed: int = 0) -> dict:
    """The share of random batches of ``batch`` inputs that the shift check flags (whole batches only)."""
    order = np.random.default_rng(seed).permutation(len(scores))
    batches = [order[s:s + batch] for s in range(0, len(order) - batch + 1, batch)]
    flagged = [rel.shift(scores[b])["flagged"] for b in batches]
    n, k = len(flagged), int(sum(flagged))
    lo, hi = wilson_interval(k, n)
    return {"batches": n, "batch_size": batch, "flagged": k, "rate": k / n if n else None,
            "ci95": [lo, hi] if n else None}


def conformal_figures(rel: Reliability, proba: np.ndarray, labels: np.ndarray,
                      coverages: tuple[float, ...] = COVERAGES) -> dict:
    """Empirical coverage and mean set size at each nominal coverage (labels as class positions)."""
    out = {}
    for c in coverages:
        sets = rel.prediction_sets(proba, c)
        hit = np.array([y in s for y, s in zip(labels, sets)])
        out[f"{c:.2f}"] = {"coverage": float(hit.mean()) if len(hit) else None,
                           "mean_set_size": float(np.mean([len(s) for s in sets])) if sets else None,
                           "singletons": float(np.mean([len(s) == 1 for s in sets])) if sets else None,
                           "n": int(len(labels))}
    return out


def risk_coverage(proba: np.ndarray, labels: np.ndarray, kept: tuple[float, ...] = KEPT) -> dict:
    """Selective accuracy when only the most confident share of inputs is kept, and the area under
    the risk-coverage curve (AURC, lower is better; Geifman & El-Yaniv 2017)."""
    if len(labels) == 0:
        return {"accuracy_at": {}, "aurc": None, "n": 0}
    order = np.argsort(-proba.max(axis=1), kind="stable")
    correct = (proba.argmax(axis=1) == labels)[order]
    cum_acc = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    at = {f"{k:.2f}": float(cum_acc[max(0, int(round(k * len(correct))) - 1)]) for k in kept}
    return {"accuracy_at": at, "aurc": float(np.mean(1.0 - cum_acc)), "n": int(len(labels))}


def reliability_figures(rel: Reliability, in_site: dict, others: dict[str, dict]) -> dict:
    """All figures for one model: ``in_site`` and each of ``others`` are dicts with ``ood`` (scores),
    and where labels are known, ``proba`` and ``labels`` (class positions; -1 = a class the model lacks)."""
    def labelled(part: dict) -> tuple[np.ndarray, np.ndarray] | None:
        if part.get("labels") is None:
            return None
        keep = np.asarray(part["labels"]) >= 0
        return np.asarray(part["proba"])[keep], np.asarray(part["labels"])[keep]

    def block(part: dict) -> dict:
        out = {"n": int(len(part["ood"])), "ood_rate": float(np.mean(rel.is_ood(part["ood"]))) if len(part["ood"]) else None,
               "shift": shift_flag_rate(rel, np.asarray(part["ood"]))}
        lab = labelled(part)
        if lab is not None and len(lab[1]):
            if rel.has_conformal:
                out["conformal"] = conformal_figures(rel, *lab)
            out["risk_coverage"] = risk_coverage(*lab)
        return out

    result = {"in_site": block(in_site), "others": {}}
    for name, part in others.items():
        result["others"][name] = {**block(part), "ood_auroc": ood_auroc(np.asarray(in_site["ood"]), np.asarray(part["ood"]))}
    return result
