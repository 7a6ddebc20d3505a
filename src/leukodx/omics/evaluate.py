"""``leukodx expression evaluate``: every method under one protocol, the best chosen by LOOCV alone."""

from __future__ import annotations

import os
import time
import warnings

from sklearn.exceptions import ConvergenceWarning

from leukodx._versions import versions
from leukodx.errors import InvalidInputError
from leukodx.omics.classifiers import expression_methods
from leukodx.omics.io import read_ball_rnaseq, read_golub
from leukodx.omics.preprocess import CountsPreprocessor, GolubPreprocessor
from leukodx.omics.protocols import leave_one_out, selected_genes, train_test

EXPRESSION_DATASETS = ("golub", "ball-rnaseq")


def _best(methods: dict) -> str:
    """Fewest leave-one-out errors; ties go to the method listed first (simplest first)."""
    return min(methods, key=lambda name: (methods[name]["loocv_errors"], list(methods).index(name)))


def load_expression_dataset(dataset: str, data_root: str | os.PathLike | None = None, n_genes: int = 50):
    """(training set, independent set or None, method registry) of a registered expression dataset."""
    if dataset not in EXPRESSION_DATASETS:
        raise InvalidInputError(f"{dataset}: unknown expression dataset (known: {', '.join(EXPRESSION_DATASETS)})")
    if not isinstance(n_genes, int) or n_genes < 1:
        raise InvalidInputError(f"--n-genes {n_genes}: at least 1 gene must be kept")
    if dataset == "golub":
        train, test = read_golub(data_root)
        return train, test, expression_methods(GolubPreprocessor, n_genes, binary=True)
    return read_ball_rnaseq(data_root), None, expression_methods(CountsPreprocessor, n_genes, binary=False)


def evaluate_expression(dataset: str, data_root: str | os.PathLike | None = None, n_genes: int = 50,
                        methods: list[str] | None = None, progress=None) -> dict:
    train, test, registry = load_expression_dataset(dataset, data_root, n_genes)
    chosen = methods or list(registry)
    unknown = [m for m in chosen if m not in registry]
    if unknown:
        raise InvalidInputError(f"method {unknown[0]!r}: expected one of {', '.join(registry)}")
    results = {}
    for name in chosen:
        started = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            entry = leave_one_out(registry[name], train)
            if test is not None:
                held, model = train_test(registry[name], train, test)
                entry.update(held)
                entry["selected_genes"] = selected_genes(model, train)
        entry["seconds"] = round(time.time() - started, 1)
        results[name] = entry
        if progress:
            progress(name, entry)
    out = {
        "dataset": dataset,
        "n_train": len(train.samples), "n_independent": len(test.samples) if test is not None else 0,
        "classes": train.classes, "n_genes_selected": n_genes,
        "methods": results,
        "best": _best(results),
        "best_rule": "fewest leave-one-out errors on the training samples; ties to the first listed method; "
                     "the independent set plays no part",
        "versions": versions(),
    }
    if dataset == "ball-rnaseq":
        out["caveat"] = ("20 samples, 5 per subtype, from one test set: leave-one-out here says whether the "
                         "subtypes separate, not how a classifier would do on new patients")
    return out
