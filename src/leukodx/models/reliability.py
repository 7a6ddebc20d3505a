"""Knowing when a model does not know: out-of-distribution scores, shift checks, conformal sets.

One home for every image classifier's reliability statistics, fitted once from the model's own
data and stored in its bundle (``reliability.safetensors``, sha256 in the card):

- **OOD score per input**, two distances fitted on the training images: the Mahalanobis distance
  (Lee et al. 2018) of the penultimate features to the nearest class (of each training site, for
  multi-site models) under one shared covariance; and the distance of the *style* of the network's
  stride-4 stage (per-channel mean and standard deviation of its activations: the colour, texture and
  scale a stain and scanner leave), whitened by its (shrunk) spread within a site (``_style_whitening``),
  to its nearest neighbour among the training images of each site (a bank of up to
  ``STYLE_BANK_PER_SITE`` per site; deep kNN, Sun et al. 2022). A site's look is not one Gaussian:
  slides, stains and days spread it, and another lab's cells can sit near the middle of that spread
  yet away from every training image (on the leave-one-site-out folds, pbc's and deepapl's cells are
  told from the training sites' better by the nearest neighbour than by the distance to the site mean;
  figures in ``benchmarks/results/reliability.md``). A site with fewer than ``MIN_BANK_PER_SITE``
  training images (a few-shot adaptation's dozens) is scored by the Mahalanobis distance to its mean
  instead: among so few images a new cell of the same lab is as far
  from its nearest neighbour as another lab's cell is. Bundles made before the bank keep the
  site-mean form for every site. Each distance is divided by its own 95th percentile
  on the site's validation images and the larger counts. The threshold is the
  score's ``1 - false_alarm`` quantile on in-site validation images, so about ``false_alarm``
  (default 5%) of images like the training ones are flagged.
- **Shift check per batch**, two tests (each at ``SHIFT_P / 2``): with that threshold, the number of
  flagged inputs of images like the training ones is Binomial(n, false_alarm), and a batch with far
  more is flagged; and the batch's whole score distribution is compared with the validation images'
  (one-sided Mann-Whitney U), which also catches a batch whose scores all run somewhat high though
  few pass the threshold. The rank test counts only when the shift is large enough to matter as
  well as unlikely by chance: the batch's scores beat the reference's in at least ``MIN_EXCEED`` of
  pairs (a large case of a few thousand cells from a training site would otherwise be flagged for
  a difference of no consequence). A multi-site model's reference is each training site's own
  validation images, and the batch is compared with the site it departs from least: the per-site
  scaling matches the sites' 95th percentiles, not their whole distributions, and a batch of one
  training site's new patients would otherwise be judged against a pool that another site dominates.
- **Conformal prediction sets** (split conformal, APS: Romano et al. 2020): nonconformity scores
  of the validation images kept in the bundle, so any coverage can be asked for at run time. The
  APS tie-break ``u`` is derived from the input's own probabilities, so a set never depends on
  the other inputs of the batch and is the same on every run.

Which features (``models.features``): the input of the network's last linear layer and the style of
every activation in the stage at a quarter of the input's side (or, for networks that declare no
stages and in bundles fitted before, of the last layer at that side; the card's ``style_source``),
taken by forward hooks, so every architecture of the zoo gets the same treatment; they travel as one
vector (the ONNX export's second output), split at ``Reliability.pen_dim``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukodx._hashing import sha256_file
from leukodx.errors import InvalidInputError
from leukodx.stats import binomial_tail, rank_sum_greater

RELIABILITY_FILE = "reliability.safetensors"
#: where a network's style features are read (``models.features``): statistics fitted now record
#: theirs; bundles whose statistics record none were fitted on the legacy one
STYLE_SOURCES = ("quarter-stage", "quarter-layer")
DEFAULT_STYLE_SOURCE = "quarter-stage"
LEGACY_STYLE_SOURCE = "quarter-layer"
DEFAULT_FALSE_ALARM = 0.05
DEFAULT_COVERAGE = 0.90
#: a batch is flagged as shifted when this many flagged inputs would happen by chance with p below this
SHIFT_P = 1e-3
#: the rank test flags a batch only when its scores exceed the reference's in at least this share of pairs
#: (0.5: no difference). Random batches of 100 held-out cells of the training sites reach 0.56 (the
#: bundled models and the leave-one-site-out folds of benchmarks/reliability.py); chosen with the
#: left-out sites' figures also in view (pbc's batches lie at 0.55-0.65)
MIN_EXCEED = 0.6
#: covariance shrinkage towards its mean variance (features are many, training images per class few)
SHRINKAGE = 1e-3
#: the within-site style covariance is mixed this much with its mean variance before whitening: full whitening
#: lets the directions in which the training labs barely vary dominate, and a new lab that matches their
#: spread along the rest passes (benchmarks/results/reliability.md compares it with SHRINKAGE on every fold)
STYLE_SHRINKAGE = 0.1
#: training images per site kept as the style part's nearest-neighbour bank (stored in the bundle)
STYLE_BANK_PER_SITE = 1500
#: a site needs this many training images for the nearest-neighbour bank (else its Gaussian)
MIN_BANK_PER_SITE = 100


ADAPT_ADVICE = "Check a sample by eye, and consider `leukodx adapt` with a few labelled cells from this lab."


#: what a shift of image inputs usually means
IMAGE_CAUSES = "the site, stain, scanner or magnification likely differs from the training images"


def shift_verdict(flagged: int, n: int, false_alarm: float = DEFAULT_FALSE_ALARM, unit: str = "inputs",
                  advice: str = ADAPT_ADVICE, causes: str = IMAGE_CAUSES, scores=None, reference=None) -> dict:
    """A batch's shift verdict from how many of its ``n`` inputs were flagged OOD and, where the batch's
    OOD ``scores`` and the validation images' (``reference``) are given, how its scores compare
    (``rank_sum_greater``). Flagged when either test's p is below ``SHIFT_P / 2`` (the rank test's only
    with at least ``MIN_EXCEED`` of pairs exceeded); ``advice`` ends the sentence."""
    if n == 0:
        return {"flagged": False, "score": None, "p_value": None, "n": 0, "n_ood": 0, "reason": f"no {unit} to judge"}
    p_count = binomial_tail(flagged, n, false_alarm)
    share = flagged / n
    rank = (rank_sum_greater(scores, reference)
            if scores is not None and reference is not None and len(scores) and len(reference) else None)
    p_rank, exceed = rank if rank is not None else (float("nan"), float("nan"))
    large = exceed >= MIN_EXCEED  # NaN compares False
    by_count = p_count < SHIFT_P / 2
    by_rank = bool(large and p_rank < SHIFT_P / 2)
    counted = f"{flagged} of {n} {unit} ({share:.0%}) lie outside the model's training data"
    if by_count:
        reason = (f"{counted} where about {false_alarm:.0%} would by chance (p = {p_count:.1e}): {causes}; "
                  f"results are unreliable. {advice}")
    elif by_rank:
        reason = (f"{counted}, but their OOD scores as a whole run higher than the training reference's (above "
                  f"it in {exceed:.0%} of pairs where 50% is expected; p = {p_rank:.1e}): {causes}; results are "
                  f"unreliable. {advice}")
    else:
        reason = (f"{counted}, in line with the {false_alarm:.0%} expected by chance: no sign of a shift")
    # Bonferroni over the tests that count (the rank test's only when its shift is large enough)
    p_value = min(1.0, 2 * min(p_count, p_rank if large else 1.0))
    out = {"flagged": by_count or by_rank, "score": round(share, 4), "p_value": float(p_value), "n": n,
           "n_ood": flagged, "reason": reason}
    if rank is not None:
        out["rank_test"] = {"p_value": float(p_rank), "exceed": round(float(exceed), 4)}
    return out


def aps_tiebreak(proba: np.ndarray) -> np.ndarray:
    """A number in [0, 1) per row, fixed by the row's probabilities (APS's randomization, made
    reproducible and independent of the rest of the batch): a splitmix64 hash of the rounded row."""
    q = np.round(np.asarray(proba, dtype=np.float64) * 1e6).astype(np.uint64)
    mult = (np.arange(1, q.shape[1] + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    with np.errstate(over="ignore"):
        x = (q * mult[None, :]).sum(axis=1, dtype=np.uint64)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / 2.0 ** 53


def aps_scores(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """APS nonconformity of the true label: the probability mass of the classes ranked above it
    plus ``u`` times its own."""
    order = np.argsort(-proba, axis=1, kind="stable")
    sorted_p = np.take_along_axis(proba, order, axis=1)
    rank = np.argmax(order == np.asarray(labels)[:, None], axis=1)
    before = np.cumsum(sorted_p, axis=1) - sorted_p
    rows = np.arange(len(proba))
    return before[rows, rank] + aps_tiebreak(proba) * sorted_p[rows, rank]


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The split-conformal threshold: the ceil((n + 1) * coverage)-th smallest score (inf when
    there are too few scores for that coverage: every class is then in the set)."""
    check_coverage(coverage)
    n = len(scores)
    k = math.ceil((n + 1) * coverage)
    if k > n:
        return math.inf
    return float(np.sort(scores)[k - 1])


def check_coverage(coverage: float) -> None:
    if not (isinstance(coverage, (int, float)) and 0 < coverage < 1):
        raise InvalidInputError(f"--coverage {coverage}: expected a number strictly between 0 and 1 (e.g. 0.90)")


def aps_sets(proba: np.ndarray, qhat: float) -> list[list[int]]:
    """Each row's APS prediction set at threshold ``qhat``, classes in decreasing probability."""
    order = np.argsort(-proba, axis=1, kind="stable")
    sorted_p = np.take_along_axis(proba, order, axis=1)
    before = np.cumsum(sorted_p, axis=1) - sorted_p
    scores = before + aps_tiebreak(proba)[:, None] * sorted_p
    return [order[i][scores[i] <= qhat].tolist() for i in range(len(proba))]


@dataclass
class Reliability:
    """Fitted statistics of one classifier (see the module doc)."""

    means: np.ndarray              # (K, D) training feature mean per cluster (class, or class x site)
    whitener: np.ndarray           # (D, D) Cholesky factor of the shared precision matrix
    threshold: float               # OOD score above which an input is flagged
    reference: np.ndarray          # sorted OOD scores of the validation images
    conformal: np.ndarray          # sorted APS scores of the validation images
    false_alarm: float = DEFAULT_FALSE_ALARM
    fitted_on: dict | None = None
    #: where the style part of a feature vector starts (None: no style part); the penultimate part is
    #: always the first ``means.shape[1]`` columns
    pen_dim: int | None = None
    #: the style part: a bank of training images' whitened style features, and each one's site
    style_bank: np.ndarray | None = None      # (N, E) float32, (style - style_center) @ style_whitening
    bank_sites: np.ndarray | None = None      # (N,) the training site of each bank row
    style_center: np.ndarray | None = None    # (E,)
    style_whitening: np.ndarray | None = None  # (E, E)
    #: bundles made before the whitening: the bank is (style - style_center) / style_spread
    style_spread: np.ndarray | None = None    # (E,)
    #: the style part's Gaussian per training site: scores the sites without bank rows (every site, in
    #: bundles made before the bank)
    style_means: np.ndarray | None = None     # (S, E) style mean per training site
    style_whitener: np.ndarray | None = None
    #: each cluster's distance is divided by the 95th percentile, on its own site's validation images,
    #: of the distance to that site's nearest cluster (sites differ in spread: a small, varied site
    #: would otherwise be flagged against a threshold set by the large ones)
    pen_scale: np.ndarray | None = None       # (K,) per penultimate cluster
    style_scale: np.ndarray | None = None     # (S,) per style cluster (site)
    cluster_sites: np.ndarray | None = None   # (K,) the training site of each penultimate cluster
    #: the site of each ``reference`` score (multi-site models; None: one pooled reference)
    reference_sites: np.ndarray | None = None
    #: where the network's style features were read (``STYLE_SOURCES``); the features scored must come from it
    style_source: str = DEFAULT_STYLE_SOURCE

    # --- scoring ---------------------------------------------------------------------------------
    def ood_scores(self, features: np.ndarray) -> np.ndarray:
        """The OOD score per row (larger = less like training; see the module doc)."""
        f = np.asarray(features)
        pen = _nearest(f[:, :self.means.shape[1]], self.means, self.whitener, self.pen_scale)
        if not self.has_style:
            return pen
        return np.maximum(pen, _scaled_min(self.style_distances(f[:, self.pen_dim:]), self.style_scale))

    @property
    def has_style(self) -> bool:
        return self.style_bank is not None or self.style_means is not None

    def style_distances(self, style: np.ndarray) -> np.ndarray:
        """(n, S) squared distance of each row's style part to each training site: to its nearest bank
        image of that site, or for a site without bank rows the Mahalanobis distance to its mean."""
        if self.style_whitening is not None:
            style = gauss_style = _product(style - self.style_center, self.style_whitening)
        else:  # bundles made before the whitening: the Gaussians on the raw style, the bank standardized
            gauss_style = style
            if self.style_bank is not None:
                style = (style - self.style_center) / self.style_spread
        if self.style_bank is None:
            return _distances(gauss_style, self.style_means, self.style_whitener)
        near = _bank_distances(style, self.style_bank, self.bank_sites, self.n_style_sites)
        gauss = np.setdiff1d(np.arange(self.n_style_sites), self.bank_sites)  # the sites without bank rows
        if self.style_means is not None and len(gauss):
            near[:, gauss] = _distances(gauss_style, self.style_means[gauss], self.style_whitener)
        return near

    @property
    def n_style_sites(self) -> int:
        return len(self.style_means) if self.style_means is not None else int(self.bank_sites.max()) + 1

    def is_ood(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def shift(self, scores: np.ndarray, **wording) -> dict:
        """Whether a batch as a whole departs from the training data, as a plain sentence (``wording``:
        ``shift_verdict``'s unit, causes, advice)."""
        scores = np.asarray(scores, dtype=np.float64)
        return shift_verdict(int(np.sum(scores > self.threshold)), len(scores), self.false_alarm, scores=scores,
                             reference=self.closest_reference(scores), **wording)

    def closest_reference(self, scores: np.ndarray) -> np.ndarray:
        """The validation scores of the training site whose distribution ``scores`` exceed least (each site
        with at least ``MIN_SITE_VAL`` of them), or the pooled reference for a one-site model."""
        if self.reference_sites is None or len(scores) == 0:
            return self.reference
        sites = [g for g in np.unique(self.reference_sites) if np.sum(self.reference_sites == g) >= MIN_SITE_VAL]
        if len(sites) < 2:
            return self.reference
        parts = [self.reference[self.reference_sites == g] for g in sites]
        return min(parts, key=lambda part: rank_sum_greater(scores, part)[1])

    @property
    def has_conformal(self) -> bool:
        return len(self.conformal) > 0

    def prediction_sets(self, proba: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> list[list[int]]:
        if not self.has_conformal:
            raise InvalidInputError("this model's bundle has no conformal calibration scores: prediction sets "
                                    "are unavailable for it")
        return aps_sets(np.asarray(proba, dtype=np.float64), conformal_quantile(self.conformal, coverage))

    # --- storage ---------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {"means": self.means, "whitener": self.whitener, "reference": self.reference,
               "conformal": self.conformal, "threshold": np.array([self.threshold]),
               "false_alarm": np.array([self.false_alarm])}
        for key in ("pen_scale", "style_scale", "cluster_sites", "reference_sites"):
            if getattr(self, key) is not None:
                out[key] = np.asarray(getattr(self, key), dtype=np.float64)
        for key in ("style_bank", "bank_sites", "style_center", "style_whitening", "style_spread", "style_means",
                    "style_whitener"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.has_style:
            out["pen_dim"] = np.array([self.pen_dim], dtype=np.float64)
        return out

    def card_entry(self, digest: str) -> dict:
        return {"file": RELIABILITY_FILE, "sha256": digest,
                "ood_score": ("max(mahalanobis-nearest-class, nearest-neighbour style (mahalanobis for sites with "
                              f"fewer than {MIN_BANK_PER_SITE} training images))" if self.style_bank is not None
                              else "max(mahalanobis-nearest-class, mahalanobis-nearest-site style)"
                              if self.style_means is not None else "mahalanobis-nearest-cluster"),
                "feature_dim": int(self.means.shape[1]),
                "style_dim": (int(self.style_bank.shape[1]) if self.style_bank is not None else
                              int(self.style_means.shape[1]) if self.style_means is not None else None),
                "style_bank": None if self.style_bank is None else int(len(self.style_bank)),
                **({"style_source": self.style_source} if self.has_style else {}),
                "clusters": int(len(self.means)), "threshold": round(self.threshold, 6),
                "false_alarm": self.false_alarm,
                "conformal": "APS (split conformal)" if self.has_conformal else None,
                "n_reference": int(len(self.reference)), "n_conformal": int(len(self.conformal)),
                "fitted_on": self.fitted_on or {}}


def fit_reliability(features: np.ndarray, labels: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray | None,
                    val_proba: np.ndarray | None, false_alarm: float = DEFAULT_FALSE_ALARM,
                    fitted_on: dict | None = None, shrinkage: float = SHRINKAGE, pen_dim: int | None = None,
                    groups: np.ndarray | None = None, val_groups: np.ndarray | None = None,
                    style_shrinkage: float = STYLE_SHRINKAGE) -> Reliability:
    """Statistics from training features (clusters: ``labels``, times ``groups`` = training sites
    where given); the per-site scales, threshold and conformal scores from the validation images
    (features, labels and calibrated probabilities, ``val_groups`` their sites; without
    probabilities, e.g. a detector's fields, no conformal scores). ``pen_dim``: the features carry a
    style part from that column on; ``style_shrinkage``: of its within-site covariance."""
    rel = _fit_statistics(features, labels, false_alarm, fitted_on, shrinkage, pen_dim, groups, style_shrinkage)
    val_features = np.asarray(val_features, dtype=np.float64)
    val_groups = np.zeros(len(val_features), dtype=int) if val_groups is None else np.asarray(val_groups, dtype=int)
    _calibrate(rel, val_features, val_groups)
    if val_proba is not None:
        rel.conformal = np.sort(aps_scores(np.asarray(val_proba, dtype=np.float64), val_labels))
    return rel


#: a site needs this many validation images for its own scale (else the pooled one)
MIN_SITE_VAL = 20


def _site_scales(distances: np.ndarray, owner: np.ndarray, val_groups: np.ndarray) -> np.ndarray:
    """Per cluster: the 95th percentile, over its site's validation images, of their distance to that
    site's nearest cluster; ``distances`` (n_val, K), ``owner`` (K,) the site of each cluster."""
    pooled = float(np.quantile(distances.min(axis=1), 0.95)) or 1.0
    scale = np.full(len(owner), pooled)
    for g in np.unique(owner):
        mine = val_groups == g
        if mine.sum() >= MIN_SITE_VAL:
            scale[owner == g] = float(np.quantile(distances[mine][:, owner == g].min(axis=1), 0.95)) or pooled
    return scale


def _calibrate(rel: Reliability, val_features: np.ndarray, val_groups: np.ndarray) -> None:
    """Per-site scales of each distance, then the threshold on the combined score."""
    f = val_features
    pen_d = _distances(f[:, :rel.means.shape[1]], rel.means, rel.whitener)
    rel.pen_scale = _site_scales(pen_d, rel.cluster_sites, val_groups)
    if rel.has_style:
        style_d = rel.style_distances(f[:, rel.pen_dim:])
        rel.style_scale = _site_scales(style_d, np.arange(style_d.shape[1]), val_groups)
    scores = rel.ood_scores(val_features)
    order = np.argsort(scores, kind="stable")
    rel.reference = scores[order]
    rel.reference_sites = val_groups[order] if len(np.unique(val_groups)) > 1 else None
    rel.threshold = float(np.quantile(rel.reference, 1 - rel.false_alarm, method="higher"))


#: few samples, many features (an expression profile): shrink the covariance hard
SMALL_SAMPLE_SHRINKAGE = 0.5


def fit_ood_crossfit(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0,
                     false_alarm: float = DEFAULT_FALSE_ALARM, fitted_on: dict | None = None,
                     shrinkage: float = SMALL_SAMPLE_SHRINKAGE, fold: np.ndarray | None = None,
                     fold_features: list[np.ndarray] | None = None, pen_dim: int | None = None) -> Reliability:
    """OOD statistics for a model with no validation set to spare (tens of samples): each training
    sample is scored by statistics fitted without it (``folds``-fold, or each sample's ``fold``),
    those scores set the threshold, and the final statistics use every sample. No conformal scores
    (none are stored).

    ``fold_features[f]``: every sample's features as fold ``f``'s own model sees them, for a model
    that learns its features from these samples (a fine-tuned network sees its training images
    closer than new ones, so scoring them with the final model would set the threshold too low).
    ``pen_dim``: the features carry a style part from that column on; each part's distance is then
    divided by its 95th percentile over the held-out scores, as ``fit_reliability`` does on
    validation images, and the larger counts."""
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    fold = np.random.default_rng(seed).permutation(len(labels)) % folds if fold is None else np.asarray(fold)
    rel = _fit_statistics(features, labels, false_alarm, fitted_on, shrinkage, pen_dim)
    pen_held, style_held = np.empty(len(labels)), np.empty(len(labels))
    for f in np.unique(fold):
        seen = features if fold_features is None else np.asarray(fold_features[f], dtype=np.float64)
        part = _fit_statistics(seen[fold != f], labels[fold != f], false_alarm, None, shrinkage, pen_dim)
        held = seen[fold == f]
        pen_held[fold == f] = _nearest(held[:, :part.means.shape[1]], part.means, part.whitener)
        if rel.has_style:
            style_held[fold == f] = part.style_distances(held[:, pen_dim:]).min(axis=1)
    if not rel.has_style:
        rel.reference = np.sort(pen_held)
    else:
        pen_q, style_q = float(np.quantile(pen_held, 0.95)) or 1.0, float(np.quantile(style_held, 0.95)) or 1.0
        rel.pen_scale, rel.style_scale = np.full(len(rel.means), pen_q), np.full(rel.n_style_sites, style_q)
        rel.reference = np.sort(np.maximum(pen_held / pen_q, style_held / style_q))
    rel.threshold = float(np.quantile(rel.reference, 1 - false_alarm, method="higher"))
    return rel


def _product(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``x @ matrix`` in float32 (the features are float32 already; half the time of float64), as float64."""
    return (np.asarray(x, dtype=np.float32) @ np.asarray(matrix, dtype=np.float32)).astype(np.float64)


def _distances(features: np.ndarray, means: np.ndarray, whitener: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances (n, K) of each row to each of ``means`` (the whitening product in float32)."""
    z = _product(features, whitener)
    centres = np.asarray(means, dtype=np.float64) @ whitener
    return np.maximum((z ** 2).sum(1)[:, None] - 2 * z @ centres.T + (centres ** 2).sum(1)[None, :], 0.0)


def _nearest(features: np.ndarray, means: np.ndarray, whitener: np.ndarray, scale: np.ndarray | None = None
             ) -> np.ndarray:
    """Distance to the nearest of ``means``, each cluster's distance divided by its ``scale``."""
    return _scaled_min(_distances(features, means, whitener), scale)


def _scaled_min(d: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    return (d if scale is None else d / scale[None, :]).min(axis=1)


#: rows scored against the bank at a time (bounds the (rows, bank) distance matrix's memory)
_BANK_CHUNK = 2048


def _bank_distances(z: np.ndarray, bank: np.ndarray, bank_sites: np.ndarray, sites: int) -> np.ndarray:
    """(n, sites) squared Euclidean distance of each row of ``z`` to its nearest ``bank`` row of each
    site (NaN for a site without bank rows).

    The nearest row minimizes ``|b|^2 - 2 z.b`` (``|z|^2`` is the same for every row), which one float32 product
    gives with the bank written as ``[-2 b, |b|^2]`` and each row as ``[z, 1]``; ``|z|^2`` is added to the minima."""
    order = np.argsort(bank_sites, kind="stable")  # each site's rows side by side: one min per site and row
    bank = np.asarray(bank, dtype=np.float32)[order]
    owner = np.asarray(bank_sites)[order]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    norms = (bank.astype(np.float64) ** 2).sum(1)
    scaled = np.ascontiguousarray(np.concatenate([-2.0 * bank, norms[:, None].astype(np.float32)], axis=1).T)
    out = np.full((len(z), sites), np.nan)
    for start in range(0, len(z) if len(bank) else 0, _BANK_CHUNK):
        rows = np.asarray(z[start:start + _BANK_CHUNK], dtype=np.float32)
        near = np.minimum.reduceat(np.c_[rows, np.ones(len(rows), np.float32)] @ scaled, starts, axis=1)
        own = (rows.astype(np.float64) ** 2).sum(1)[:, None]
        out[start:start + len(rows), owner[starts]] = np.maximum(near + own, 0.0)
    return out


def _style_bank(style: np.ndarray, groups: np.ndarray, per_site: int = STYLE_BANK_PER_SITE, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """The style part's bank: up to ``per_site`` training images (their whitened style) of each site with
    at least ``MIN_BANK_PER_SITE`` (at random), and each one's site, numbered as ``np.unique(groups)``
    orders them."""
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(groups == g))[:per_site] for g in np.unique(groups)
                           if np.sum(groups == g) >= MIN_BANK_PER_SITE] or [np.zeros(0, dtype=int)])
    keep.sort()
    return style[keep].astype(np.float32), np.unique(groups, return_inverse=True)[1][keep].astype(np.int64)


#: images per style channel (beyond one per site) needed to whiten the style by its within-site covariance
MIN_WHITEN_PER_CHANNEL = 4


def _style_whitening(style: np.ndarray, groups: np.ndarray, shrinkage: float,
                     style_shrinkage: float = STYLE_SHRINKAGE) -> np.ndarray:
    """(E, E): whitens the (centred) style channels by their covariance within a site (the slides, stains
    and days of one lab), then scales each whitened direction to unit spread over all training images.
    Directions along which one lab's images vary little count for more than the raw channels' scale
    would give them, and the directions that merely tell the training sites apart count for no more
    than their spread. A covariance of E channels needs several times E images: with fewer than
    ``MIN_WHITEN_PER_CHANNEL`` x E (less the sites) and no heavy shrinkage, the channels are only scaled
    to unit spread (as bundles made before the whitening were), since the directions no training image
    spans would otherwise be blown up and every new image flagged. The covariance is shrunk by the larger of
    ``shrinkage`` and ``style_shrinkage``."""
    sites = len(np.unique(groups))
    if shrinkage <= SHRINKAGE and len(style) - sites < MIN_WHITEN_PER_CHANNEL * style.shape[1]:
        within = np.eye(style.shape[1])
    else:
        # Cholesky factor of the (shrunk) within-site precision
        _, within = _gaussian_clusters(style, groups, max(shrinkage, style_shrinkage))
    spread = ((style - style.mean(axis=0)) @ within).std(axis=0)
    return within / np.maximum(spread, 1e-3 * float(spread.mean()) + 1e-12)[None, :]


def _gaussian_clusters(features: np.ndarray, clusters: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Cluster means and the Cholesky factor of the shared (shrunk) precision matrix."""
    ids, inverse = np.unique(clusters, return_inverse=True)
    means = np.stack([features[inverse == i].mean(0) for i in range(len(ids))])
    centred = features - means[inverse]
    cov = centred.T @ centred / max(1, len(features) - len(ids))
    mean_var = np.trace(cov) / cov.shape[0] or 1.0
    if shrinkage > SHRINKAGE:  # few samples: a convex mix with the mean variance
        cov = (1 - shrinkage) * cov + shrinkage * mean_var * np.eye(cov.shape[0])
    else:
        cov = cov + shrinkage * mean_var * np.eye(cov.shape[0])
    precision = np.linalg.inv(cov)
    return means, np.linalg.cholesky((precision + precision.T) / 2)


def _fit_statistics(features: np.ndarray, labels: np.ndarray, false_alarm: float, fitted_on: dict | None,
                    shrinkage: float, pen_dim: int | None = None, groups: np.ndarray | None = None,
                    style_shrinkage: float = STYLE_SHRINKAGE) -> Reliability:
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.zeros(len(labels), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    clusters = groups * (int(labels.max()) + 1) + labels
    has_style = pen_dim is not None and pen_dim < features.shape[1]
    means, whitener = _gaussian_clusters(features[:, :pen_dim] if has_style else features, clusters, shrinkage)
    rel = Reliability(means=means, whitener=whitener, threshold=0.0, reference=np.zeros(0), conformal=np.zeros(0),
                      false_alarm=false_alarm, fitted_on=fitted_on, pen_dim=pen_dim if has_style else None,
                      cluster_sites=np.unique(clusters) // (int(labels.max()) + 1))
    if has_style:
        style = features[:, pen_dim:]
        rel.style_center = style.mean(axis=0)
        rel.style_whitening = _style_whitening(style, groups, shrinkage, style_shrinkage)
        style = (style - rel.style_center) @ rel.style_whitening
        rel.style_means, rel.style_whitener = _gaussian_clusters(style, groups, shrinkage)
        bank = _style_bank(style, groups)
        if len(bank[0]):  # else no site has enough images: every site is scored by its Gaussian
            rel.style_bank, rel.bank_sites = bank
    return rel


def save_reliability(directory: str | os.PathLike, rel: Reliability, name: str = RELIABILITY_FILE) -> str:
    """Write ``name`` (``reliability.safetensors``) into a bundle folder; returns its sha256 for the card."""
    from leukodx import _atomic
    from leukodx.models.bundle import _save_tensors

    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic.atomic_path(path) as tmp:
        _save_tensors({k: np.ascontiguousarray(v, dtype=np.float32 if k == "style_bank" else np.float64)
                       for k, v in rel.arrays().items()}, tmp,
                      {"kind": "leukodx reliability"})
    return sha256_file(path)


def load_reliability(directory: str | os.PathLike | None, card: dict) -> Reliability | None:
    """The bundle's statistics, checked against the card's sha256; None for bundles made without them."""
    from leukodx.models.bundle import listed_file, load_tensors

    entry = card.get("reliability")
    if not entry or directory is None:
        return None
    path = listed_file(directory, entry, RELIABILITY_FILE)
    source = entry.get("style_source", LEGACY_STYLE_SOURCE)
    if source not in STYLE_SOURCES:
        raise InvalidInputError(f"{path}: style source {source!r} is unknown to this leukodx (it knows "
                                f"{', '.join(STYLE_SOURCES)}); upgrade leukodx or refit with `leukodx reliability fit`")
    a = load_tensors(path, "np")
    return Reliability(means=a["means"], whitener=a["whitener"], threshold=float(a["threshold"][0]),
                       reference=a["reference"], conformal=a["conformal"], false_alarm=float(a["false_alarm"][0]),
                       fitted_on=entry.get("fitted_on"),
                       pen_dim=int(a["pen_dim"][0]) if "pen_dim" in a else None,
                       style_means=a.get("style_means"), style_whitener=a.get("style_whitener"),
                       style_bank=None if "style_bank" not in a else a["style_bank"].astype(np.float32),
                       bank_sites=a["bank_sites"].astype(int) if "bank_sites" in a else None,
                       style_center=a.get("style_center"), style_whitening=a.get("style_whitening"),
                       style_spread=a.get("style_spread"),
                       pen_scale=a.get("pen_scale"), style_scale=a.get("style_scale"),
                       cluster_sites=a["cluster_sites"].astype(int) if "cluster_sites" in a else None,
                       reference_sites=a["reference_sites"].astype(int) if "reference_sites" in a else None,
                       style_source=source)


def attach_reliability(directory: str | os.PathLike, card: dict, rel: Reliability) -> dict:
    """Add ``rel`` to an existing bundle without touching its weights: the statistics file, then the
    card (validated, written atomically) naming its sha256. Returns the new card."""
    from leukodx import _atomic
    from leukodx.models.bundle import CARD
    from leukodx.models.card import ModelCard

    directory = Path(directory)
    card = ModelCard.from_dict({**card, "reliability": rel.card_entry(save_reliability(directory, rel))},
                               directory / CARD).to_dict()
    _atomic.write_json(directory / CARD, card)
    return card


def fit_unlabelled(train_features: np.ndarray, val_features: np.ndarray, fitted_on: dict | None = None) -> Reliability:
    """OOD statistics of a model without classes to cluster by (a detector's fields, a segmenter's
    images): one Gaussian of the training features, shrunk hard (a few hundred images)."""
    return fit_reliability(train_features, np.zeros(len(train_features), dtype=int), val_features, None, None,
                           fitted_on=fitted_on, shrinkage=SMALL_SAMPLE_SHRINKAGE)
