"""A patient's call from their single cells: APL vs other AML as multiple-instance learning.

Every cell of the patient goes through the white-cell model; the patient is the bag of its cells'
calibrated probabilities and penultimate features. The bag becomes a fixed vector: per class, the
mean probability and the fraction of cells whose top class it is (the aggregation DeepAPL, Sidhom et
al. 2021, compares itself with, and one a hematologist can read: it says which cell types moved the
call); and, where the model was fitted with them, the mean features of the patient's leukemic-looking
cells, each cell weighted by its probability of being a blast or an immature granulocyte (the class
that holds promyelocytes): what those cells look like, not only how many there are (APL's abnormal
promyelocytes differ from other AML's blasts in granules and nuclei, which the cell types do not
name). An L2 logistic regression, its strength chosen by inner cross-validation, turns the vector
into a probability.

The default model (``method: instance``) instead scores each leukemic-looking cell, DeepAPL-style:
every cell of a training patient carries that patient's diagnosis, weighted by its probability of
being a blast or an immature granulocyte (each patient's weights summing to one, each diagnosis to
half), and an L2 logistic regression on the cells' penultimate features learns which of them look
like APL. A patient's score is the weighted mean of their cells' log-odds, calibrated to a probability
by a one-feature logistic regression fitted on the patients' out-of-fold scores. It names the cells that
moved the call. (``method: bag``, the earlier design, is still loaded and fitted for comparison.)

The model is a NumPy bundle (``task: patient-classification``) that names the cell model it was
fitted on, with that model's weights sha256: a patient model is refused with another cell model.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from leukodx.errors import InvalidInputError

TASK = "patient-classification"
DEFAULT_APL_MODEL = "deepapl-apl"
#: a bag feature this many standard deviations from the fitting cohort's mean puts the case outside it
#: (the 82 discovery patients reach 7.5 at most; curated healthy-cell sets 20-40): no probability is given
MAX_COHORT_Z = 10.0


#: the cell classes whose features the patient's embedding pools (weights: their summed probability)
LEUKEMIC_CLASSES = ("blast", "immature_granulocyte")
EMBEDDING_PREFIX = "leukemic_embedding_"


def bag_features(proba: np.ndarray, classes: list[str], embedding: np.ndarray | None = None
                 ) -> tuple[np.ndarray, list[str]]:
    """(cells, classes) probabilities of one patient, and optionally their (cells, D) penultimate
    features -> (features,) vector and the feature names (see the module doc)."""
    proba = _checked_proba(proba, classes)
    top = np.bincount(proba.argmax(1), minlength=len(classes)) / len(proba)
    names = [f"mean_p_{c}" for c in classes] + [f"fraction_{c}" for c in classes]
    x = np.concatenate([proba.mean(0), top])
    if embedding is None:
        return x, names
    embedding = np.asarray(embedding, dtype=np.float64)
    if embedding.ndim != 2 or len(embedding) != len(proba):
        raise InvalidInputError(f"a patient's cell features must be one row per cell ({len(proba)} cells)")
    weight = leukemic_weights(proba, classes)
    pooled = (weight @ embedding) / weight.sum() if weight.sum() > 0 else embedding.mean(0)
    return np.concatenate([x, pooled]), names + [f"{EMBEDDING_PREFIX}{i}" for i in range(embedding.shape[1])]


def _checked_proba(proba: np.ndarray, classes: list[str]) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(classes) or len(proba) == 0:
        raise InvalidInputError(f"a patient needs at least one cell's probabilities over {len(classes)} classes")
    return proba


def leukemic_weights(proba: np.ndarray, classes: list[str]) -> np.ndarray:
    """Each cell's weight in the patient's call: its summed probability of the leukemic classes (all
    ones where the cell model has none of them)."""
    from leukodx.data.vocabulary import normalize_label

    leukemic = [i for i, c in enumerate(classes) if normalize_label(c) in LEUKEMIC_CLASSES]
    return np.asarray(proba, dtype=np.float64)[:, leukemic].sum(1) if leukemic else np.ones(len(proba))


def _shares(weight: np.ndarray) -> np.ndarray:
    """Weights normalized to sum to one (equal shares where all are zero)."""
    total = weight.sum()
    return weight / total if total > 0 else np.full(len(weight), 1.0 / len(weight))


def _weighted_mean(values: np.ndarray, weight: np.ndarray) -> float:
    return float(_shares(weight) @ values)


#: the cell-level regression's L2 strength, fixed beforehand (strong: ~12,000 cells share 82 labels). On an earlier
#: cell model C = 0.001-0.1 gave the same patient CV AUROC; on the shipped one 0.893 / 0.880 / 0.868 for C = 0.001 /
#: 0.01 / 0.1 (20 repeats). It is not re-tuned on those patients: the CV figure would no longer be out-of-sample
INSTANCE_C = 0.01


def fit_instance(bags: list[np.ndarray], embeddings: list[np.ndarray], y: np.ndarray, classes: list[str],
                 seed: int = 0) -> dict[str, np.ndarray]:
    """The cell-level regression of the instance model (see the module doc) on patients' cells."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        raise InvalidInputError("a patient model needs patients of both classes")
    x = np.concatenate(embeddings).astype(np.float64)
    cell_y = np.concatenate([np.full(len(e), label) for e, label in zip(embeddings, y)])
    per_class = np.bincount(y, minlength=2).astype(np.float64)
    weight = []
    for bag, label in zip(bags, y):
        weight.append(_shares(leukemic_weights(bag, classes)) * len(y) / (2 * per_class[label]))
    weight = np.concatenate(weight) * len(x) / len(y)  # summing to about the number of cells, as unweighted
    # standardized over the cells as weighted: a cell of weight 0 has no say in any of the fit
    mean = weight @ x / weight.sum()
    scale = np.sqrt(weight @ (x - mean) ** 2 / weight.sum())
    scale[scale < 1e-9] = 1.0
    lr = LogisticRegression(C=INSTANCE_C, max_iter=2000, random_state=seed)
    lr.fit((x - mean) / scale, cell_y, sample_weight=weight)
    return {"cell_mean": mean, "cell_scale": scale, "cell_coef": lr.coef_[0].astype(np.float64),
            "cell_intercept": lr.intercept_.astype(np.float64)}


def instance_cell_logits(arrays: dict, embedding: np.ndarray) -> np.ndarray:
    z = (np.asarray(embedding, dtype=np.float64) - arrays["cell_mean"]) / arrays["cell_scale"]
    return z @ arrays["cell_coef"] + arrays["cell_intercept"][0]


def instance_score(arrays: dict, proba: np.ndarray, embedding: np.ndarray, classes: list[str]) -> float:
    """A patient's uncalibrated score: the weighted mean of their cells' log-odds."""
    return _weighted_mean(instance_cell_logits(arrays, embedding), leukemic_weights(proba, classes))


def fit_platt(score: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(slope, intercept) mapping out-of-fold scores to probabilities (one-feature logistic regression)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e4, max_iter=1000).fit(np.asarray(score)[:, None], y)
    return np.asarray([lr.coef_[0, 0], lr.intercept_[0]], dtype=np.float64)


@dataclass
class PatientModel:
    """Probability of ``positive`` for a patient from their cells' probabilities under ``cell_model``."""

    classes: list[str]              # [negative, positive]
    cell_model: str
    cell_model_sha256: str
    cell_classes: list[str]
    arrays: dict[str, np.ndarray]   # mean, scale, coef, intercept
    card: dict = field(default_factory=dict)

    @property
    def positive(self) -> str:
        return self.classes[1]

    @property
    def method(self) -> str:
        """``instance`` (cell-level regression, pooled log-odds) or ``bag`` (one vector per patient)."""
        return "instance" if "cell_coef" in self.arrays else "bag"

    @property
    def embedding_width(self) -> int:
        """How many penultimate features per cell the model reads (0: none): the instance model's cell
        regression's, or those pooled after the bag model's 2 x classes cell-mix features."""
        if self.method == "instance":
            return len(np.ravel(self.arrays["cell_coef"]))
        return len(np.ravel(self.arrays["coef"])) - 2 * len(self.cell_classes)

    @property
    def uses_embedding(self) -> bool:
        """Whether the model reads the cells' penultimate features as well as their probabilities."""
        return self.embedding_width > 0

    def _check_embedding(self, cell_proba: np.ndarray, cell_embedding: np.ndarray | None) -> None:
        if self.uses_embedding and cell_embedding is None:
            raise InvalidInputError(f"{self.card.get('name', 'patient model')} reads the cells' features as well as "
                                    "their probabilities; none were given")
        if self.uses_embedding and np.shape(cell_embedding) != (len(cell_proba), self.embedding_width):
            raise InvalidInputError(f"{self.card.get('name', 'patient model')} expects {self.embedding_width} "
                                    f"features for each of the {len(cell_proba)} cells, got "
                                    f"{'x'.join(map(str, np.shape(cell_embedding)))}")

    def features(self, cell_proba: np.ndarray, cell_embedding: np.ndarray | None = None
                 ) -> tuple[np.ndarray, list[str]]:
        """The bag model's patient vector."""
        self._check_embedding(cell_proba, cell_embedding)
        x, names = bag_features(cell_proba, self.cell_classes, cell_embedding if self.uses_embedding else None)
        if len(x) != len(self.arrays["coef"]):
            raise InvalidInputError(f"{self.card.get('name', 'patient model')} expects {len(self.arrays['coef'])} "
                                    f"bag features, the cells give {len(x)}")
        return x, names

    def instance_logits(self, cell_embedding: np.ndarray) -> np.ndarray:
        """The instance model's APL log-odds of each cell from its features alone: a case can be scored a
        chunk of cells at a time and keep one number per cell (``logit(..., cell_logits=)``)."""
        cell_embedding = np.asarray(cell_embedding)
        if self.method != "instance" or cell_embedding.ndim != 2 or cell_embedding.shape[1] != self.embedding_width:
            raise InvalidInputError(f"{self.card.get('name', 'patient model')}: per-cell log-odds need an instance "
                                    f"model and {self.embedding_width} features per cell")
        return instance_cell_logits(self.arrays, cell_embedding)

    def cell_logits(self, cell_proba: np.ndarray, cell_embedding: np.ndarray | None = None,
                    cell_logits: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The instance model's per-cell APL log-odds (from the features, or as ``instance_logits`` gave
        them) and each cell's weight in the patient's score."""
        cell_proba = _checked_proba(cell_proba, self.cell_classes)
        if cell_logits is None:
            self._check_embedding(cell_proba, cell_embedding)
            cell_logits = instance_cell_logits(self.arrays, cell_embedding)
        elif np.shape(cell_logits) != (len(cell_proba),):
            raise InvalidInputError(f"{self.card.get('name', 'patient model')}: {np.size(cell_logits)} cell log-odds "
                                    f"for {len(cell_proba)} cells")
        return np.asarray(cell_logits, dtype=np.float64), leukemic_weights(cell_proba, self.cell_classes)

    def logit(self, cell_proba: np.ndarray, cell_embedding: np.ndarray | None = None,
              cell_logits: np.ndarray | None = None) -> float:
        """The patient's calibrated log-odds of ``positive``."""
        if self.method == "instance":
            score = _weighted_mean(*self.cell_logits(cell_proba, cell_embedding, cell_logits))
            slope, intercept = self.arrays["platt"]
            return float(slope * score + intercept)
        x, _ = self.features(cell_proba, cell_embedding)
        return float(logistic_logit(self.arrays, x[None])[0])

    def probability(self, cell_proba: np.ndarray, cell_embedding: np.ndarray | None = None,
                    cell_logits: np.ndarray | None = None) -> float:
        return float(_sigmoid(self.logit(cell_proba, cell_embedding, cell_logits)))

    def outside_cohort(self, cell_proba: np.ndarray) -> str | None:
        """Why this case's cell mix lies outside the patients the model was fitted on, or None.

        The model was fitted on AML and APL patients only; a probability for a case unlike all of them
        (a healthy smear, a curated set of cell types) would be an extrapolation, so none is given.
        Judged on the cell mix (the probability features)."""
        x, names = bag_features(cell_proba, self.cell_classes)
        z = np.abs((x - self.arrays["mean"][:len(x)]) / self.arrays["scale"][:len(x)])
        worst = int(np.argmax(z))
        if z[worst] > MAX_COHORT_Z:
            return (f"this case's cell mix is outside the {self.card.get('data', {}).get('patients', 'fitting')} "
                    f"AML/APL patients the model was fitted on ({names[worst]} = {x[worst]:.3f}, "
                    f"{z[worst]:.0f} SD from their mean); the APL probability applies to AML patients only")
        return None

    def check_cell_model(self, card: dict) -> None:
        """Refuse to run on cells typed by another model than the one this model was fitted on."""
        if card.get("sha256") != self.cell_model_sha256 or list(card.get("classes", [])) != self.cell_classes:
            raise InvalidInputError(f"{self.card.get('name', 'patient model')} was fitted on cell model "
                                    f"{self.cell_model}; cells typed by {card.get('name')} cannot be used")

    def contributions(self, cell_proba: np.ndarray, top: int = 3, cell_embedding: np.ndarray | None = None,
                      cell_logits: np.ndarray | None = None) -> list[dict]:
        """What moved this patient's call most. Bag model: the features (standardized value x weight);
        the pooled features of the leukemic-looking cells count as one ("leukemic_cell_morphology", no
        value). Instance model: the cells whose weighted log-odds pulled the score furthest from the
        average fitting cell (``cell``: the cell's index, ``value``: its weight)."""
        if self.method == "instance":
            logits, weight = self.cell_logits(cell_proba, cell_embedding, cell_logits)
            pull = self.arrays["platt"][0] * _shares(weight) * (logits - self.arrays["cell_intercept"][0])
            order = np.argsort(-np.abs(pull), kind="stable")[:top]
            return [{"feature": f"cell {int(i)}", "cell": int(i), "value": round(float(weight[i]), 3),
                     "log_odds": round(float(pull[i]), 3)} for i in order]
        x, names = self.features(cell_proba, cell_embedding)
        z = (x - self.arrays["mean"]) / self.arrays["scale"] * self.arrays["coef"]
        k = len(z) - self.embedding_width
        items = [{"feature": names[i], "value": round(float(x[i]), 4), "log_odds": round(float(z[i]), 3)}
                 for i in range(k)]
        if len(z) > k:
            items.append({"feature": "leukemic_cell_morphology", "value": None,
                          "log_odds": round(float(z[k:].sum()), 3)})
        return sorted(items, key=lambda item: -abs(item["log_odds"]))[:top]

    def save(self, directory: str | os.PathLike) -> dict:
        from leukodx.models.bundle import save_arrays

        return save_arrays(directory, self.arrays, self.card)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike = DEFAULT_APL_MODEL) -> "PatientModel":
        from leukodx.models.bundle import interpreting, load_arrays

        card, arrays, directory = load_arrays(name_or_path, TASK)
        with interpreting(directory):
            model = cls(classes=list(card["classes"]), cell_model=card["cell_model"],
                        cell_model_sha256=card["cell_model_sha256"], cell_classes=list(card["cell_classes"]),
                        arrays=arrays, card=card)
            uniform = np.full((2, len(model.cell_classes)), 1.0 / max(1, len(model.cell_classes)))
            # arrays that do not fit together fail here
            model.probability(uniform, np.zeros((2, model.embedding_width)) if model.uses_embedding else None)
            return model


def fit_logistic(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Standardize, then L2 logistic regression with C chosen by inner stratified CV (AUROC)."""
    from sklearn.linear_model import LogisticRegressionCV

    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-9] = 1.0
    folds = int(min(5, np.bincount(y).min()))
    if folds < 2:
        raise InvalidInputError("a patient model needs at least two patients of each class")
    lr = LogisticRegressionCV(Cs=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0], cv=folds, scoring="roc_auc",
                              max_iter=5000, random_state=seed)
    with warnings.catch_warnings():  # sklearn 1.8's notice about renaming fitted attributes, not news
        warnings.simplefilter("ignore", FutureWarning)
        lr.fit((x - mean) / scale, y)
        chosen = float(np.ravel(lr.C_)[0])
    return {"mean": mean, "scale": scale, "coef": lr.coef_[0].astype(np.float64),
            "intercept": lr.intercept_.astype(np.float64), "C": np.asarray([chosen], dtype=np.float64)}


def logistic_logit(arrays: dict, x: np.ndarray) -> np.ndarray:
    return (x - arrays["mean"]) / arrays["scale"] @ arrays["coef"] + arrays["intercept"][0]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def predict_logistic(arrays: dict, x: np.ndarray) -> np.ndarray:
    return _sigmoid(logistic_logit(arrays, x))


def cross_validate(x: np.ndarray | None, y: np.ndarray, repeats: int = 20, n_splits: int = 5, seed: int = 0,
                   fit_score=None) -> dict:
    """Repeated stratified k-fold over patients (all of a patient's cells in one fold): the out-of-fold
    score of each patient averaged over repeats (``oof``) and per repeat (``oof_repeats``, one model's
    scores, as a new patient gets), and each repeat's AUROC. By default the bag model on
    ``x`` (one row per patient); ``fit_score(train, test)`` -> the scores of patients ``test`` under a
    model fitted on patients ``train`` (indices) puts any other patient model through the same folds."""
    from sklearn.model_selection import StratifiedKFold

    from leukodx._progress import track
    from leukodx.stats import auroc

    if fit_score is None:
        def fit_score(train, test):
            return predict_logistic(fit_logistic(x[train], y[train], seed), x[test])
    oof = np.zeros((repeats, len(y)))
    per_repeat = []
    for r in track(range(repeats), "CV repeats", total=repeats):
        for train, test in StratifiedKFold(n_splits, shuffle=True, random_state=seed + r).split(np.zeros(len(y)), y):
            oof[r, test] = fit_score(train, test)
        per_repeat.append(auroc(y == 1, oof[r]))
    return {"oof": oof.mean(0), "oof_repeats": oof, "per_repeat_auroc": per_repeat}


def instance_cross_validate(data: dict, classes: list[str], repeats: int = 20, seed: int = 0) -> dict:
    """``cross_validate`` for the instance model over ``apl_dataset``'s bags."""
    bags = [data["bags"][p] for p in data["patients"]]
    embeddings = [data["embeddings"][p] for p in data["patients"]]
    y = data["y"]

    def fit_score(train, test):
        arrays = fit_instance([bags[i] for i in train], [embeddings[i] for i in train], y[train], classes, seed)
        return np.asarray([instance_score(arrays, bags[i], embeddings[i], classes) for i in test])

    return cross_validate(None, y, repeats=repeats, seed=seed, fit_score=fit_score)


def patient_auroc(y: np.ndarray, score: np.ndarray, rows: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUROC of ``score`` for ``y`` (1 = APL) over the patients ``rows``, bootstrap CI over patients."""
    from leukodx.stats import auroc, bootstrap_estimate

    rows = np.asarray(rows)

    def stat(idx: np.ndarray) -> float:
        return auroc(y[rows][idx] == 1, score[rows][idx])

    return {**bootstrap_estimate(stat, len(rows), n_boot, seed), "n_patients": int(len(rows)),
            "n_apl": int(y[rows].sum())}


def cell_outputs_by_patient(clf, index, cells_per_patient: int | None = None
                            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every cell of every patient through ``clf`` (or the first ``cells_per_patient`` of each, for
    quick checks): patient id -> (cells, classes) probabilities, and patient id -> (cells, D)
    penultimate features."""
    from leukodx._progress import track

    if index.groups is None:
        raise InvalidInputError(f"{index.name}: no patient ids; a patient model needs them")
    if cells_per_patient:
        seen: dict[str, int] = {}
        keep = []
        for i, g in enumerate(index.groups):
            seen[g] = seen.get(g, 0) + 1
            if seen[g] <= cells_per_patient:
                keep.append(i)
        index = index.subset(keep)
    proba: dict[str, list[np.ndarray]] = {}
    embedding: dict[str, list[np.ndarray]] = {}
    paths = index.abspaths()
    batch = 256
    for start in track(range(0, len(paths), batch), "cells", total=(len(paths) + batch - 1) // batch):
        _, arrays, errors = clf.load_inputs(paths[start:start + batch])
        if errors:  # a bag missing cells would be a different patient: refuse rather than skip
            raise InvalidInputError(f"{errors[0]['error']} ({len(errors)} unreadable cell image(s))")
        scored = clf.score_arrays(arrays)
        for g, p, e in zip(index.groups[start:start + batch], scored.proba, scored.embedding):
            proba.setdefault(str(g), []).append(p)
            embedding.setdefault(str(g), []).append(e.astype(np.float32))
    return {g: np.stack(v) for g, v in proba.items()}, {g: np.stack(v) for g, v in embedding.items()}


def apl_dataset(clf, data_root=None, cells_per_patient: int | None = None) -> dict:
    """deepapl's discovery patients as bags: features under ``clf``, labels (APL = 1), and which
    patients were outside ``clf``'s training data (only those give an unbiased figure)."""
    from leukodx.data.registry import load_dataset

    index = load_dataset("deepapl", data_root)
    diagnosis = index.meta.get("diagnosis") or {}
    if not diagnosis:
        raise InvalidInputError(f"{index.root}: patients.csv with each patient's diagnosis is missing")
    bags, embeddings = cell_outputs_by_patient(clf, index, cells_per_patient)
    patients = sorted(p for p in bags if diagnosis.get(p) in ("APL", "AML"))
    feats = [bag_features(bags[p], clf.classes, embeddings[p]) for p in patients]
    trained_on = _cell_model_training_patients(clf.card)
    return {"patients": patients, "x": np.stack([f for f, _ in feats]), "feature_names": feats[0][1],
            "y": np.asarray([diagnosis[p] == "APL" for p in patients], dtype=int), "bags": bags,
            "embeddings": embeddings, "unseen": np.asarray([p not in trained_on for p in patients]),
            "n_cells": {p: int(len(bags[p])) for p in patients}, "fingerprint": index.fingerprint()}


def _cell_model_training_patients(card: dict) -> set[str]:
    """deepapl patients whose cells trained the cell model (its train and val sides), from its card."""
    from leukodx.data.splits import bundled_split_path, load_split

    sites = [s["dataset"] for s in card.get("data", {}).get("sites", [])] or [card.get("data", {}).get("dataset")]
    if "deepapl" not in sites:
        return set()
    patients = load_split(bundled_split_path("deepapl")).get("patients", {})
    return set(patients.get("train", [])) | set(patients.get("val", []))


METHODS = ("instance", "bag")


def train_apl_model(clf, data_root=None, repeats: int = 20, seed: int = 0, name: str = DEFAULT_APL_MODEL,
                    n_boot: int = 1000, cells_per_patient: int | None = None, method: str = "instance"
                    ) -> tuple["PatientModel", dict]:
    """Fit the APL-vs-AML patient model (``method``: see the module doc) on every discovery patient;
    figures by repeated patient CV."""
    from leukodx._hashing import sha256_file
    from leukodx.data.registry import dataset_info
    from leukodx.data.splits import bundled_split_path
    from leukodx.models.card import build_card

    if method not in METHODS:
        raise InvalidInputError(f"unknown patient-model method {method!r}; choose one of {', '.join(METHODS)}")
    data = apl_dataset(clf, data_root, cells_per_patient)
    x, y, unseen = data["x"], data["y"], data["unseen"]
    if method == "instance":
        cv = instance_cross_validate(data, list(clf.classes), repeats=repeats, seed=seed)
    else:
        cv = cross_validate(x, y, repeats=repeats, seed=seed)
    oof = cv["oof"]

    everyone = np.arange(len(y))
    metrics = {
        "protocol": f"{repeats} x stratified 5-fold cross-validation over patients (all of a patient's cells "
                    "in one fold); out-of-fold probabilities averaged over repeats; bootstrap over patients",
        "auroc_all_patients": patient_auroc(y, oof, everyone, n_boot, seed),
        "auroc_unseen_patients": patient_auroc(y, oof, everyone[unseen], n_boot, seed),
        "per_repeat_auroc": {"mean": float(np.mean(cv["per_repeat_auroc"])),
                             "min": float(np.min(cv["per_repeat_auroc"])),
                             "max": float(np.max(cv["per_repeat_auroc"]))},
        "note": ("The cell model saw the cell-type labels (not the diagnosis) of its training patients; "
                 "'unseen' counts only the patients outside its training and validation sides."),
    }
    mix = 2 * len(clf.classes)
    if method == "instance":
        arrays = fit_instance([data["bags"][p] for p in data["patients"]],
                              [data["embeddings"][p] for p in data["patients"]], y, list(clf.classes), seed)
        # the cell mix's spread over the cohort, for outside_cohort; the probability from the out-of-fold scores
        # of single models (averaged over repeats they spread less than one model's score for a new patient)
        scale = x[:, :mix].std(0)
        platt = fit_platt(cv["oof_repeats"].ravel(), np.tile(y, len(cv["oof_repeats"])))
        arrays.update(mean=x[:, :mix].mean(0), scale=np.where(scale < 1e-9, 1.0, scale), platt=platt)
        training = {"method": method, "C": INSTANCE_C,
                    "calibration": "Platt scaling on every repeat's out-of-fold scores"}
        features = [f"per cell: the cell model's {arrays['cell_coef'].size} penultimate features, standardized; "
                    f"weight P({' + '.join(LEUKEMIC_CLASSES)})"]
        how = ("instance-level logistic regression (L2) on leukemic-looking cells labelled with their patient's "
               "diagnosis; patient score = weighted mean of cell log-odds, Platt-calibrated")
    else:
        arrays = fit_logistic(x, y, seed)
        training = {"method": method, "C": float(arrays["C"][0])}
        features = [n for n in data["feature_names"] if not n.startswith(EMBEDDING_PREFIX)] + [
            f"{EMBEDDING_PREFIX}0..{len(data['feature_names']) - mix - 1}: the cell model's penultimate features, "
            f"averaged over the patient's cells weighted by P({' + '.join(LEUKEMIC_CLASSES)})"]
        how = "logistic regression (L2, C by inner CV) on bag features"
    info = dataset_info("deepapl")
    card = build_card(
        name, TASK, ["AML", "APL"], data={
            "dataset": "deepapl", "cohort": "discovery", "patients": int(len(y)), "apl": int(y.sum()),
            "cells": int(sum(data["n_cells"].values())), "dataset_fingerprint": data["fingerprint"],
            "split": "leukodx/data/splits/deepapl.json (names the patients the cell model never saw; the patient "
                     "model itself is fitted on every discovery patient and judged by patient CV)",
            "split_sha256": sha256_file(bundled_split_path("deepapl")), "source": info.source,
            "license": info.license, "citation": info.citation},
        metrics=metrics, training={"repeats": repeats, "seed": seed, **training},
        intended_use="Research use: the probability that an acute myeloid leukemia is APL, from a patient's "
                     "CellaVision-like single-cell images. Not a medical device: APL is confirmed by "
                     "t(15;17) / PML-RARA testing.",
        limits=["Fitted on 82 Johns Hopkins discovery patients (22 APL); the 24-patient validation cohort is "
                "held back. Other labs, stains and scanners are untested.",
                "Licence of the training cells: research use (copyright The Johns Hopkins University 2020).",
                "Valid only with the cell model it names (cell_model, cell_model_sha256)."],
        cell_model=clf.name, cell_model_sha256=clf.card.get("sha256"), cell_classes=list(clf.classes),
        cell_model_precision=clf.precision, features=features, method=how)
    model = PatientModel(classes=["AML", "APL"], cell_model=clf.name, cell_model_sha256=clf.card.get("sha256"),
                         cell_classes=list(clf.classes), arrays=arrays, card=card)
    return model, {"data": data, "cv": cv, "metrics": metrics}
