"""Per-cell leukemic-vs-healthy classifier: a small neural network on arcsinh-transformed markers.

Trained with scikit-learn's ``MLPClassifier`` (the review's flow paper, Adjouadi 2010, used a
feed-forward net too), then stored as plain arrays in safetensors with a JSON card, so loading
never unpickles anything. Inference is a NumPy forward pass: millions of events stream through
it without torch. The card also keeps, per marker, the range the training cells covered, so a
file whose cells fall outside it is flagged rather than silently scored.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from leukodx.cytometry.cells import CellTable
from leukodx.cytometry.transforms import Transform
from leukodx.errors import InvalidInputError
from leukodx.models.bundle import interpreting, load_arrays, save_arrays
from leukodx.models.card import build_card
from leukodx.stats import auroc

TASK = "flow-cell-classification"
DEFAULT_MODEL = "ddpr-leukemic-cell"
HIDDEN_GRID = ((32,), (64, 32))
ALPHA_GRID = (1e-3, 1e-1)


@dataclass
class CellClassifier:
    """P(leukemic) for single cells given raw marker intensities in ``markers`` order."""

    markers: list[str]
    transform: Transform
    mean: np.ndarray
    scale: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    train_low: np.ndarray            # 0.5th percentile per marker, transformed scale
    train_high: np.ndarray           # 99.5th percentile
    threshold: float = 0.5
    card: dict = field(default_factory=dict)

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        """P(leukemic) per row of raw intensities (columns in ``self.markers`` order)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.markers):
            raise InvalidInputError(f"expected (cells, {len(self.markers)}) values, got {values.shape}")
        h = (self.transform(values) - self.mean) / self.scale
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        logit = (h @ self.weights[-1] + self.biases[-1])[:, 0]
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))

    def outside_training_range(self, values: np.ndarray) -> np.ndarray:
        """Per marker, how many rows fall outside the range the training cells covered."""
        t = self.transform(np.asarray(values, dtype=np.float64))
        return ((t < self.train_low) | (t > self.train_high)).sum(axis=0)

    # -- persistence -----------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> dict:
        """Write the bundle (the one leukodx bundle format: safetensors arrays + card)."""
        tensors = {"mean": self.mean, "scale": self.scale, "train_low": self.train_low, "train_high": self.train_high}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            tensors[f"layer{i}.weight"] = w
            tensors[f"layer{i}.bias"] = b
        card = {**self.card, "task": TASK, "markers": self.markers, "transform": self.transform.to_dict(),
                "threshold": self.threshold, "layers": len(self.weights)}
        self.card = save_arrays(directory, tensors, card)
        return self.card

    @classmethod
    def load(cls, name_or_path: str | os.PathLike = DEFAULT_MODEL) -> "CellClassifier":
        card, tensors, directory = load_arrays(name_or_path, TASK)
        with interpreting(directory):
            n = int(card["layers"])
            model = cls(markers=list(card["markers"]), transform=Transform.from_dict(card["transform"]),
                        mean=tensors["mean"], scale=tensors["scale"],
                        weights=[tensors[f"layer{i}.weight"] for i in range(n)],
                        biases=[tensors[f"layer{i}.bias"] for i in range(n)],
                        train_low=tensors["train_low"], train_high=tensors["train_high"],
                        threshold=float(card["threshold"]), card=card)
            # one forward pass: array shapes that do not chain fail here, not on a user's file
            model.predict_proba(np.zeros((1, len(model.markers))))
            model.outside_training_range(np.zeros((1, len(model.markers))))
            return model


def _mlp(hidden: tuple[int, ...], alpha: float, seed: int):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=hidden, alpha=alpha, max_iter=300, random_state=seed)


def cross_validated_auroc(x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...], alpha: float,
                          folds: int = 5, seed: int = 0) -> tuple[float, float, np.ndarray]:
    """Mean and sd of fold AUROCs, and the out-of-fold probabilities (x already transformed)."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    oof = np.zeros(len(y))
    scores = []
    for train, val in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        scaler = StandardScaler().fit(x[train])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the fold is still scored
            model = _mlp(hidden, alpha, seed).fit(scaler.transform(x[train]), y[train])
        oof[val] = model.predict_proba(scaler.transform(x[val]))[:, 1]
        scores.append(auroc(y[val] == 1, oof[val]))
    return float(np.mean(scores)), float(np.std(scores)), oof


def train_cell_classifier(table: CellTable, train_rows: np.ndarray, markers: list[str] | None = None,
                          transform: Transform = Transform("asinh", 5.0), seed: int = 0,
                          hidden: tuple[int, ...] | None = None, alpha: float | None = None,
                          progress=None) -> CellClassifier:
    """Fit on ``train_rows`` only; hidden sizes and L2 strength chosen by 5-fold CV AUROC on them
    unless given. The decision threshold is set where out-of-fold sensitivity = specificity."""
    from sklearn.metrics import roc_curve
    from sklearn.preprocessing import StandardScaler

    markers = list(markers or table.markers)
    missing = [m for m in markers if m not in table.markers]
    if missing:
        raise InvalidInputError(f"{table.source}: markers not in the table: {', '.join(missing)}")
    columns = [table.markers.index(m) for m in markers]
    x = transform(table.values[np.ix_(train_rows, columns)])
    y = table.labels[train_rows]
    started = time.perf_counter()
    grid = [(h, a) for h in (HIDDEN_GRID if hidden is None else (hidden,))
            for a in (ALPHA_GRID if alpha is None else (alpha,))]
    search = []
    for h, a in grid:
        mean_auc, sd_auc, oof = cross_validated_auroc(x, y, h, a, seed=seed)
        search.append({"hidden": list(h), "alpha": a, "cv_auroc_mean": mean_auc, "cv_auroc_sd": sd_auc, "_oof": oof})
        if progress:
            progress(f"hidden {h} alpha {a}: 5-fold AUROC {mean_auc:.4f} +- {sd_auc:.4f}")
    best = max(search, key=lambda s: s["cv_auroc_mean"])
    fpr, tpr, thresholds = roc_curve(y, best["_oof"])
    threshold = float(np.clip(thresholds[np.argmin(np.abs(tpr - (1 - fpr)))], 1e-6, 1 - 1e-6))
    scaler = StandardScaler().fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _mlp(tuple(best["hidden"]), best["alpha"], seed).fit(scaler.transform(x), y)
    oof_pred = best["_oof"] >= threshold
    card = build_card(
        DEFAULT_MODEL, TASK, ["healthy", "leukemic"], markers=markers, transform=transform.to_dict(),
        layers=len(model.coefs_), threshold=threshold,
        data={"table": str(table.source.name), "sha256": table.sha256, "train_cells": int(len(train_rows)),
              "samples": sorted(set(table.samples[train_rows].tolist()))},
        selection={"protocol": "5-fold stratified CV on the training cells", "grid": [
            {k: v for k, v in s.items() if k != "_oof"} for s in search],
            "chosen": {"hidden": best["hidden"], "alpha": best["alpha"]}},
        cv={"auroc_mean": best["cv_auroc_mean"], "auroc_sd": best["cv_auroc_sd"],
            "sensitivity_at_threshold": float(oof_pred[y == 1].mean()),
            "false_positive_rate_at_threshold": float(oof_pred[y == 0].mean())},
        training={"seed": seed, "seconds": round(time.perf_counter() - started, 1)},
        limits=["two samples (one BCP-ALL patient at diagnosis, one healthy donor): cell-level separation of "
                "these two samples, not a validated patient-level test"],
    )
    return CellClassifier(
        markers=markers, transform=transform, mean=scaler.mean_, scale=scaler.scale_,
        weights=[np.asarray(w) for w in model.coefs_], biases=[np.asarray(b) for b in model.intercepts_],
        train_low=np.percentile(x, 0.5, axis=0), train_high=np.percentile(x, 99.5, axis=0),
        threshold=threshold, card=card)
