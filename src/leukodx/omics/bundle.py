"""Expression classifiers as leukodx bundles: trained once, stored as arrays, loaded without pickle.

A fitted expression pipeline (preprocessing -> in-fold gene selection -> classifier) is reduced to
what prediction needs: the ids of the genes the classifier finally uses, the per-gene
preprocessing of those genes (clip / log / z-score, or log-CPM), and the classifier's arrays.
Prediction is a NumPy forward pass that reproduces the scikit-learn pipeline's probabilities.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from leukodx.errors import InvalidInputError
from leukodx.models.bundle import interpreting, load_arrays, save_arrays
from leukodx.models.card import build_card
from leukodx.models.reliability import Reliability, fit_ood_crossfit, load_reliability, save_reliability
from leukodx.stats import auroc, bootstrap_estimate, wilson_interval

TASK = "expression-classification"
DEFAULT_MODEL = "golub-all-aml"
#: methods whose fitted state is plain arrays (the calibrated SVMs are not exported)
EXPORTABLE = ("mlp", "pnn", "weighted-voting", "elastic-net")


#: the share of the model's genes an input must have (the rest are filled with training medians)
MIN_GENES_PRESENT = 0.8
#: a matrix whose typical gene is more than this many decades off its training median is refused
MAX_SCALE_OFFSET_DECADES = 0.7


@dataclass
class ExpressionModel:
    """Class probabilities for samples x ``genes`` expression values (raw scale, as in training)."""

    genes: list[str]
    classes: list[str]
    method: str
    preprocess: dict                 # {"kind": "microarray", floor, ceiling, log, zscore} or {"kind": "counts", zscore}
    arrays: dict[str, np.ndarray]    # mean, scale, train_median + the classifier's arrays
    params: dict = field(default_factory=dict)
    card: dict = field(default_factory=dict)
    #: OOD statistics of the model's features (training samples); None for bundles made without them
    reliability: Reliability | None = None

    # -- prediction ----------------------------------------------------------------------------
    def _features(self, values: np.ndarray, library_size: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(values, dtype=np.float64)
        pre = self.preprocess
        if pre["kind"] == "microarray":
            z = np.clip(x, pre["floor"], pre["ceiling"])
            z = np.log10(z) if pre["log"] else z
        else:
            if library_size is None:
                raise InvalidInputError("a counts model needs each sample's library size (all its genes)")
            z = np.log2(x / np.asarray(library_size, dtype=np.float64)[:, None] * 1e6 + 1.0)
        return (z - self.arrays["mean"]) / self.arrays["scale"] if pre.get("zscore", True) else z

    def predict_proba(self, values: np.ndarray, library_size: np.ndarray | None = None) -> np.ndarray:
        """(samples, len(genes)) raw values in ``genes`` order -> (samples, classes) probabilities."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.genes):
            raise InvalidInputError(f"expected (samples, {len(self.genes)}) values, got {values.shape}")
        return _CLASSIFIERS[self.method](self._features(values, library_size), self.arrays, self.params)

    def predict_set(self, data) -> tuple[np.ndarray, list[str], list[str]]:
        """Probabilities for an ``ExpressionSet`` aligned by gene id; missing genes take the training
        median. Returns (probabilities, missing gene ids, genes of the input not used)."""
        proba, _, missing, extra = self.score_set(data)
        return proba, missing, extra

    def score_set(self, data, min_genes_present: float = MIN_GENES_PRESENT) -> tuple[np.ndarray, np.ndarray | None,
                                                                                    list[str], list[str]]:
        """``predict_set`` plus each sample's OOD score (None without statistics in the bundle).

        Refused, rather than guessed: fewer than ``min_genes_present`` of the model's genes in the input
        (the rest would be training medians, and the call would be the training set's, not the sample's),
        and values on another scale than training (log-transformed, rescaled)."""
        from leukodx.omics.io import align_genes

        source = data.meta.get("source", "input")
        values, missing, extra = align_genes(data, self.genes)
        present = len(self.genes) - len(missing)
        if present < min_genes_present * len(self.genes):
            raise InvalidInputError(
                f"{source}: shares {present} of the model's {len(self.genes)} genes; at least "
                f"{int(np.ceil(min_genes_present * len(self.genes)))} are needed (same platform and probe ids as "
                f"training?)")
        self._check_scale(values, data, source)
        if missing:
            values = np.where(np.isnan(values), self.arrays["train_median"], values)
        library = data.values.sum(axis=1) if self.preprocess["kind"] == "counts" else None
        proba = self.predict_proba(values, library)
        ood = self.reliability.ood_scores(self._features(values, library)) if self.reliability else None
        return proba, ood, missing, extra

    def _check_scale(self, values: np.ndarray, data, source: str) -> None:
        """Values must be on the training scale: a microarray sample's typical gene, relative to the
        training median of that gene, within x5 (training samples lie within x2.5); counts must be
        non-negative raw counts, not log values."""
        if self.preprocess["kind"] == "microarray":
            present = ~np.isnan(values)
            ratio = np.log10(np.maximum(values, 1.0)) - np.log10(np.maximum(self.arrays["train_median"], 1.0))
            per_sample = np.array([np.median(r[m]) for r, m in zip(ratio, present)])
            offset = float(np.median(per_sample))
            if abs(offset) > MAX_SCALE_OFFSET_DECADES:
                raise InvalidInputError(
                    f"{source}: values are on another scale than training (the typical gene is x{10 ** offset:.3g} "
                    f"its training median): log-transformed or rescaled? The model needs the raw scale it was "
                    f"trained on ({self.card.get('data', {}).get('dataset', 'training')} values)")
        else:
            if (data.values < 0).any():
                raise InvalidInputError(f"{source}: negative values; a counts model needs raw read counts")
            if data.values.max() < 50:
                raise InvalidInputError(f"{source}: the largest value is {data.values.max():.3g}: log-transformed? "
                                        "A counts model needs raw read counts")

    def fit_reliability(self, data, labels) -> None:
        """OOD statistics from the training samples (cross-fitted threshold: there is no validation set)."""
        from leukodx.omics.io import align_genes

        values, _, _ = align_genes(data, self.genes)
        library = data.values.sum(axis=1) if self.preprocess["kind"] == "counts" else None
        codes = np.asarray([self.classes.index(str(c)) for c in labels])
        self.reliability = fit_ood_crossfit(self._features(values, library), codes,
                                            fitted_on={"train_samples": int(len(codes)), "threshold": "5-fold cross-fit"})

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> dict:
        card = {**self.card, "task": TASK, "classes": self.classes, "genes": self.genes, "method": self.method,
                "pipeline": {"preprocess": self.preprocess, "params": self.params}}
        if self.reliability is not None:
            card["reliability"] = self.reliability.card_entry(save_reliability(directory, self.reliability))
        self.card = save_arrays(directory, self.arrays, card)
        return self.card

    @classmethod
    def load(cls, name_or_path: str | os.PathLike = DEFAULT_MODEL) -> "ExpressionModel":
        card, arrays, directory = load_arrays(name_or_path, TASK)
        with interpreting(directory):
            model = cls._from_bundle(card, arrays, directory)
            # one forward pass on the training medians: arrays that do not fit together fail here
            model.predict_proba(model.arrays["train_median"][None, :],
                                None if model.preprocess["kind"] != "counts" else np.array([1e6]))
            return model

    @classmethod
    def _from_bundle(cls, card: dict, arrays: dict, directory) -> "ExpressionModel":
        pipeline = card["pipeline"]
        if card["method"] not in _CLASSIFIERS:
            raise InvalidInputError(f"{directory}: unknown expression method {card['method']!r}")
        needed = {"mean", "scale", "train_median"} | set(_ARRAYS[card["method"]])
        if not needed <= set(arrays) or not isinstance(pipeline, dict) or "preprocess" not in pipeline:
            raise InvalidInputError(f"{directory}: expression bundle is incomplete "
                                    f"(lacks {', '.join(sorted(needed - set(arrays))) or 'pipeline'})")
        return cls(genes=list(card["genes"]), classes=list(card["classes"]), method=card["method"],
                   preprocess=pipeline["preprocess"], arrays=arrays, params=pipeline.get("params", {}), card=card,
                   reliability=load_reliability(directory, card))


# --- classifiers as NumPy forward passes ------------------------------------------------------------

def _softmax_rows(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def _two_or_more(score: np.ndarray) -> np.ndarray:
    """Binary models output one logit column (P of the second class); others a column per class."""
    if score.shape[1] == 1:
        p = _sigmoid(score[:, 0])
        return np.stack([1 - p, p], axis=1)
    return _softmax_rows(score)


def _mlp(x, a, params):
    h = x
    n = int(params["layers"])
    for i in range(n):
        h = h @ a[f"layer{i}.weight"] + a[f"layer{i}.bias"]
        if i < n - 1:
            h = np.maximum(h, 0.0)
    return _two_or_more(h)


def _linear(x, a, params):
    return _two_or_more(x @ a["coef"].T + a["intercept"])


def _pnn(x, a, params):
    train, codes = a["train_x"], a["train_y"].astype(int)
    width = float(params["sigma"]) * np.sqrt(train.shape[1])
    d2 = ((x[:, None, :] - train[None, :, :]) ** 2).sum(-1) / (2 * width ** 2)
    out = np.empty((len(x), int(codes.max()) + 1))
    for c in range(out.shape[1]):
        members = -d2[:, codes == c]
        m = members.max(axis=1, keepdims=True)
        out[:, c] = m[:, 0] + np.log(np.exp(members - m).sum(axis=1))
    return _softmax_rows(out)


def _weighted_voting(x, a, params):
    votes = a["a"] * (x - a["b"])
    v0, v1 = np.clip(votes, 0, None).sum(1), np.clip(-votes, 0, None).sum(1)
    p0 = (1 + (v0 - v1) / np.maximum(v0 + v1, 1e-12)) / 2
    return np.stack([p0, 1 - p0], axis=1)


_CLASSIFIERS = {"mlp": _mlp, "elastic-net": _linear, "pnn": _pnn, "weighted-voting": _weighted_voting}
_ARRAYS = {"mlp": ("layer0.weight", "layer0.bias"), "elastic-net": ("coef", "intercept"),
           "pnn": ("train_x", "train_y"), "weighted-voting": ("a", "b")}


def export_pipeline(model, genes: list[str], method: str, train_values: np.ndarray) -> ExpressionModel:
    """The arrays of a fitted expression ``Pipeline`` (preprocess -> select -> classify) as a model."""
    from leukodx.omics.preprocess import CountsPreprocessor, GolubPreprocessor

    if method not in EXPORTABLE:
        raise InvalidInputError(f"method {method!r} cannot be bundled (bundled methods: {', '.join(EXPORTABLE)})")
    pre, clf = model.named_steps["preprocess"], model.named_steps["classify"]
    idx = np.flatnonzero(pre.get_support())
    keep = np.arange(len(idx))
    if "select" in model.named_steps:
        keep = np.flatnonzero(model.named_steps["select"].get_support())
    used = idx[keep]
    arrays = {"mean": pre.mean_[keep], "scale": pre.scale_[keep],
              "train_median": np.median(train_values[:, used], axis=0)}
    if isinstance(pre, GolubPreprocessor):
        spec = {"kind": "microarray", "floor": pre.floor, "ceiling": pre.ceiling, "log": pre.log, "zscore": pre.zscore}
    elif isinstance(pre, CountsPreprocessor):
        spec = {"kind": "counts", "zscore": pre.zscore}
    else:
        raise InvalidInputError(f"preprocessing {type(pre).__name__} cannot be bundled")
    params: dict = {}
    if method == "mlp":
        for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
            arrays[f"layer{i}.weight"], arrays[f"layer{i}.bias"] = w, b
        params["layers"] = len(clf.coefs_)
        if clf.activation != "relu":
            raise InvalidInputError(f"MLP activation {clf.activation!r}: only relu MLPs are bundled")
    elif method == "elastic-net":
        arrays["coef"], arrays["intercept"] = clf.coef_, clf.intercept_
    elif method == "pnn":
        arrays["train_x"], arrays["train_y"] = clf.X_, clf.y_.astype(np.float64)
        params["sigma"] = clf.sigma
    else:
        arrays["a"], arrays["b"] = clf.a_, clf.b_
    return ExpressionModel(genes=[genes[i] for i in used], classes=[str(c) for c in clf.classes_], method=method,
                           preprocess=spec, arrays=arrays, params=params)


def train_expression_model(dataset: str = "golub", method: str = "mlp", n_genes: int = 50,
                           data_root: str | os.PathLike | None = None, name: str | None = None,
                           n_boot: int = 1000) -> ExpressionModel:
    """Fit ``method`` on the training samples, score leave-one-out and the independent set, as a model."""
    from sklearn.exceptions import ConvergenceWarning

    from leukodx.omics.evaluate import EXPRESSION_DATASETS, load_expression_dataset
    from leukodx.omics.protocols import leave_one_out

    if dataset not in EXPRESSION_DATASETS:
        raise InvalidInputError(f"{dataset}: unknown expression dataset (known: {', '.join(EXPRESSION_DATASETS)})")
    train, test, registry = load_expression_dataset(dataset, data_root, n_genes)
    if method not in registry or method not in EXPORTABLE:
        raise InvalidInputError(f"method {method!r}: bundled methods for {dataset} are "
                                f"{', '.join(m for m in EXPORTABLE if m in registry)}")
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        loocv = leave_one_out(registry[method], train)
        pipeline = registry[method]().fit(train.values, train.labels)
    model = export_pipeline(pipeline, train.genes, method, train.values)
    model.fit_reliability(train, train.labels)
    metrics: dict = {"loocv": {"errors": loocv["loocv_errors"], "n": loocv["n"],
                               "misclassified": loocv["loocv_misclassified"]}}
    if test is not None:
        proba, _, _ = model.predict_set(test)
        reference = pipeline.predict_proba(test.values)
        if not np.allclose(proba, reference, atol=1e-9):
            raise InvalidInputError(f"{method}: bundled arrays do not reproduce the fitted pipeline "
                                    f"(max difference {np.abs(proba - reference).max():.2e})")
        metrics["independent"] = independent_metrics(test.labels, proba, model.classes, n_boot)
    model.card = build_card(
        name or DEFAULT_MODEL, TASK, model.classes, genes=model.genes, method=method,
        pipeline={"preprocess": model.preprocess, "params": model.params},
        data={"dataset": dataset, "train_samples": len(train.samples),
              "independent_samples": len(test.samples) if test is not None else 0,
              "source": train.meta.get("source"), "genes_in_input": len(train.genes)},
        metrics=metrics,
        training={"method": method, "n_genes_selected": n_genes, "selection": "in-fold, inside the pipeline",
                  "seconds": round(time.perf_counter() - started, 1)},
        intended_use=f"Research use: {' / '.join(model.classes)} call for samples profiled like {dataset}. "
                     "Not a medical device.",
        limits=["Trained on one public cohort; other platforms or normalizations change the value scale.",
                "Genes missing from an input are filled with the training median."])
    return model


def refit_expression_reliability(model: str | os.PathLike = DEFAULT_MODEL, data_root=None) -> dict:
    """``leukodx reliability fit`` for an expression bundle: OOD statistics from the training samples
    of the dataset its card names (weights untouched); returns the new card."""
    from leukodx._versions import provenance
    from leukodx.models.bundle import resolve_bundle
    from leukodx.models.reliability import attach_reliability
    from leukodx.omics.evaluate import EXPRESSION_DATASETS, load_expression_dataset

    bundle = ExpressionModel.load(model)
    directory = resolve_bundle(model, TASK)
    dataset = bundle.card.get("data", {}).get("dataset")
    if dataset not in EXPRESSION_DATASETS:
        raise InvalidInputError(f"{directory}: its card names no expression dataset ({dataset!r}) to refit from")
    train, _, _ = load_expression_dataset(dataset, data_root, len(bundle.genes))
    bundle.fit_reliability(train, train.labels)
    bundle.reliability.fitted_on = {**(bundle.reliability.fitted_on or {}), "refit": "weights unchanged",
                                    "provenance": provenance()}
    return attach_reliability(directory, bundle.card, bundle.reliability)


def independent_metrics(labels: np.ndarray, proba: np.ndarray, classes: list[str], n_boot: int = 1000) -> dict:
    """Accuracy (Wilson 95% CI) and, for two classes, AUROC (bootstrap 95% CI) on a held-out set."""
    y = np.array([classes.index(str(c)) for c in labels])
    correct = proba.argmax(axis=1) == y
    out = {"n": int(len(y)), "correct": int(correct.sum()),
           "accuracy": {"value": float(correct.mean()), "ci95": list(wilson_interval(int(correct.sum()), len(y)))}}
    if len(classes) == 2 and 0 < y.sum() < len(y):
        out["auroc"] = bootstrap_estimate(lambda idx: auroc(y[idx] == 1, proba[idx, 1]), len(y), n_boot)
    return out


def write_predictions(path: str | os.PathLike, samples: list[str], proba: np.ndarray, classes: list[str],
                      ood_scores: np.ndarray | None = None, reliability: Reliability | None = None) -> None:
    """One row per sample: call, its probability, OOD score and flag (empty when the bundle has no
    statistics), every class probability (CSV, written atomically)."""
    from leukodx import _atomic
    from leukodx._csv import csv_text

    def line(i: int, s: str, p: np.ndarray) -> list:
        ood = ["", ""] if ood_scores is None else [f"{ood_scores[i]:.3f}", int(reliability.is_ood(ood_scores[i:i + 1])[0])]
        return [s, classes[int(p.argmax())], f"{p.max():.4f}", *ood] + [f"{v:.4f}" for v in p]

    _atomic.write_text(path, csv_text(["sample", "prediction", "probability", "ood_score", "ood"]
                                      + [f"p_{c}" for c in classes],
                                      (line(i, s, p) for i, (s, p) in enumerate(zip(samples, proba)))))
