"""Evaluation protocols for expression classifiers: leave-one-out and train -> independent test."""

from __future__ import annotations

import numpy as np

from leukodx.omics.io import ExpressionSet


def leave_one_out(build, data: ExpressionSet) -> dict:
    """Refit the whole pipeline without each sample in turn; errors listed by sample id."""
    predictions = []
    for i in range(len(data.samples)):
        keep = np.arange(len(data.samples)) != i
        model = build().fit(data.values[keep], data.labels[keep])
        predictions.append(model.predict(data.values[i:i + 1])[0])
    predictions = np.asarray(predictions)
    wrong = np.flatnonzero(predictions != data.labels)
    return {"loocv_errors": int(len(wrong)), "n": len(data.samples),
            "loocv_misclassified": [{"sample": data.samples[i], "true": str(data.labels[i]),
                                     "predicted": str(predictions[i])} for i in wrong]}


def train_test(build, train: ExpressionSet, test: ExpressionSet) -> tuple[dict, object]:
    model = build().fit(train.values, train.labels)
    pred = model.predict(test.values)
    proba = model.predict_proba(test.values)
    wrong = np.flatnonzero(pred != test.labels)
    return {"independent_correct": int(len(test.samples) - len(wrong)), "independent_n": len(test.samples),
            "independent_misclassified": [
                {"sample": test.samples[i], "true": str(test.labels[i]), "predicted": str(pred[i]),
                 "probability": round(float(proba[i].max()), 4)} for i in wrong]}, model


def selected_genes(model, data: ExpressionSet, limit: int = 50) -> list[dict]:
    """The probes a fitted pipeline ended up using, with their names where the data has them."""
    mask = model.named_steps["preprocess"].get_support()
    idx = np.flatnonzero(mask)
    if "select" in model.named_steps:
        idx = idx[model.named_steps["select"].get_support()]
    names = data.gene_names or data.genes
    return [{"id": data.genes[i], "name": names[i]} for i in idx[:limit]]
