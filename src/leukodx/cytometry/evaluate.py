"""Held-out evaluation of per-cell classifiers on the DDPR cells, with comparators.

Every method is cross-validated on the training cells (5 folds) and scored once on the saved
held-out cells; AUROC and accuracy carry percentile-bootstrap 95% intervals.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from leukodx.cytometry.cells import CellTable
from leukodx.cytometry.classifier import CellClassifier
from leukodx.cytometry.transforms import Transform
from leukodx.evaluation.metrics import classification_metrics
from leukodx.stats import auroc


def _comparators(seed: int) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "logistic-regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "gradient-boosting": HistGradientBoostingClassifier(random_state=seed),
    }


def _held_out(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict:
    metrics = classification_metrics(y, np.column_stack([1 - proba, proba]), ["healthy", "leukemic"])
    called = proba >= threshold
    return {"auroc": metrics["per_class"]["leukemic"]["auroc"], "accuracy": metrics["accuracy"],
            "balanced_accuracy": metrics["balanced_accuracy"], "ece": metrics["ece"], "threshold": threshold,
            "sensitivity": float(called[y == 1].mean()), "specificity": float(1 - called[y == 0].mean()),
            "n": int(len(y))}


def evaluate_cell_classifiers(table: CellTable, train: np.ndarray, test: np.ndarray, model: CellClassifier,
                              seed: int = 0, transform: Transform = Transform("asinh", 5.0)) -> dict:
    """The shipped model on the held-out cells, beside comparators trained the same way."""
    from sklearn.model_selection import StratifiedKFold

    columns = [table.markers.index(m) for m in model.markers]
    x_train, x_test = transform(table.values[np.ix_(train, columns)]), transform(table.values[np.ix_(test, columns)])
    y_train, y_test = table.labels[train], table.labels[test]
    started = time.perf_counter()
    methods = {"mlp (shipped)": {
        "cv_auroc_mean": model.card.get("cv", {}).get("auroc_mean"), "cv_auroc_sd": model.card.get("cv", {}).get("auroc_sd"),
        "held_out": _held_out(y_test, model.predict_proba(table.values[np.ix_(test, columns)]), model.threshold),
        "seconds": None}}
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    for name, estimator in _comparators(seed).items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fold_scores = []
            for tr, va in folds.split(x_train, y_train):
                p = estimator.fit(x_train[tr], y_train[tr]).predict_proba(x_train[va])[:, 1]
                fold_scores.append(auroc(y_train[va] == 1, p))
            proba = estimator.fit(x_train, y_train).predict_proba(x_test)[:, 1]
        methods[name] = {"cv_auroc_mean": float(np.mean(fold_scores)), "cv_auroc_sd": float(np.std(fold_scores)),
                         "held_out": _held_out(y_test, proba, 0.5), "seconds": round(time.perf_counter() - t0, 1)}
    return {"dataset": "ddpr-cells", "source_sha256": table.sha256, "markers": model.markers,
            "transform": transform.to_dict(), "train_cells": int(len(train)), "test_cells": int(len(test)),
            "methods": methods, "seconds": round(time.perf_counter() - started, 1),
            "limits": "; ".join(model.card.get("limits") or [])}
