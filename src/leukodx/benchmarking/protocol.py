"""One protocol for every recipe: same split, same budget, same metrics, same cross-dataset test.

For a recipe on a dataset:
1. the saved split (bundled for ``pbc`` / ``all-aria``, else a seeded stratified one);
2. k-fold cross-validation on train+val (stratified; each fold's early stopping and calibration
   use a slice of its own training folds, never the scored fold): mean +- sd of the metrics;
3. one model trained on train, early-stopped and calibrated on val, scored once on test with
   bootstrap 95% CIs; parameters, FLOPs, training seconds, inference ms per image;
4. the same model on every cross-dataset target, over the classes both share (probabilities
   restricted to the shared classes and renormalized).
Each run is one JSON file; a rerun with the same configuration skips it (resumable suites).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from leukodx import _atomic
from leukodx._versions import provenance, versions
from leukodx.data.cache import cached_arrays
from leukodx.data.folder import ImageIndex, limit_per_class
from leukodx.data.labelmap import align_classes
from leukodx.data.registry import load_dataset
from leukodx.data.splits import apply_split, bundled_split_path, load_split, make_split
from leukodx.errors import InvalidInputError
from leukodx.evaluation.metrics import classification_metrics
from leukodx.zoo.estimators import timed_predict
from leukodx.zoo.recipes import Budget, Recipe

FOLD_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "ece")


def _image_index(dataset: str, data_root) -> ImageIndex:
    index = load_dataset(dataset, data_root)
    if not isinstance(index, ImageIndex):
        raise InvalidInputError(f"{dataset}: not an image-classification dataset")
    return index


def dataset_sides(dataset: str, data_root=None, seed: int = 0) -> tuple[ImageIndex, dict[str, ImageIndex], str]:
    index = _image_index(dataset, data_root)
    path = bundled_split_path(index.name)
    split, origin = (load_split(path), f"bundled {path.name}") if path.exists() else (make_split(index, seed=seed), "seeded")
    return index, apply_split(index, split), origin


def _arrays(index: ImageIndex, pre) -> np.ndarray:
    return cached_arrays(index, pre) if len(index) else np.zeros((0, pre.size, pre.size, 3), np.uint8)


def _slim(metrics: dict) -> dict:
    return {k: metrics[k] for k in (*FOLD_METRICS, "weighted_f1", "n", "confusion_matrix", "per_class") if k in metrics}


def _inner_split(y: np.ndarray, seed: int, fraction: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    n_val = max(int(round(fraction * len(y))), len(np.unique(y)))
    return train_test_split(rows, test_size=n_val, random_state=seed, stratify=stratify)


def config_key(recipe: Recipe, budget: Budget, dataset: str, seed: int, augment: str | None, stain: str | None,
               cross: list[str], pretrained: str | None) -> str:
    """The cache key of one run: its configuration and the code that computes it (``source_digest``),
    so a resumed suite never mixes results made by older code with new ones."""
    from leukodx._versions import source_digest

    spec = {"recipe": recipe.name, "budget": budget.__dict__, "dataset": dataset, "seed": seed,
            "augment": augment or recipe.augment, "stain": stain or recipe.stain, "cross": sorted(cross),
            "pretrained": pretrained, "code": source_digest()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def result_path(out_dir: Path, dataset: str, recipe: Recipe, budget: Budget, augment: str | None, stain: str | None) -> Path:
    tag = budget.name
    if augment:
        tag += f"__aug-{augment}"
    if stain:
        tag += f"__stain-{stain}"
    return Path(out_dir) / dataset / f"{recipe.name}__{tag}.json"


def run_recipe(recipe: Recipe, dataset: str, budget: Budget, out_dir: str | os.PathLike, *, cross: list[str] = (),
               seed: int = 0, augment: str | None = None, stain: str | None = None, pretrained: str | None = None,
               data_root=None, skip_cv: bool = False, force: bool = False, log=print) -> dict:
    """Run (or reuse) one recipe on one dataset under the protocol; returns the result dict."""
    cross = list(cross)
    key = config_key(recipe, budget, dataset, seed, augment, stain, cross, pretrained) + ("-nocv" if skip_cv else "")
    path = result_path(Path(out_dir), dataset, recipe, budget, augment, stain)
    if path.exists() and not force:
        previous = json.loads(path.read_text())
        if previous.get("config_key") == key:
            log(f"{recipe.name} on {dataset} ({budget.name}): done before, reusing {path}")
            return previous
    started = time.perf_counter()
    index, sides, split_origin = dataset_sides(dataset, data_root, seed)
    classes = index.classes
    pool = limit_per_class(index.subset(sorted(np.flatnonzero(np.isin(index.paths, sides["train"].paths + sides["val"].paths)))),
                budget.per_class, seed)
    train = limit_per_class(sides["train"], budget.per_class and int(np.ceil(budget.per_class * 0.85)), seed)
    val = limit_per_class(sides["val"], budget.per_class and max(2, int(np.ceil(budget.per_class * 0.15))), seed)
    test = limit_per_class(sides["test"], budget.test_per_class, seed)
    pre = recipe.train_config(budget, seed, augment, stain).preprocess

    folds = []
    if not skip_cv:
        from sklearn.model_selection import StratifiedKFold

        x_pool, y_pool = _arrays(pool, pre), pool.labels
        splitter = StratifiedKFold(budget.folds, shuffle=True, random_state=seed)
        for k, (tr, te) in enumerate(splitter.split(x_pool, y_pool)):
            fit_rows, stop_rows = _inner_split(y_pool[tr], seed + k)
            t0 = time.perf_counter()
            est = recipe.build(budget, seed + k, augment, stain, pretrained).fit(
                x_pool[tr][fit_rows], y_pool[tr][fit_rows], x_pool[tr][stop_rows], y_pool[tr][stop_rows], len(classes))
            metrics = classification_metrics(y_pool[te], est.predict_proba(x_pool[te]), classes, n_boot=2, auroc_boot=0)
            folds.append({k2: metrics[k2]["value"] for k2 in FOLD_METRICS} | {"n": int(len(te)),
                                                                                "seconds": round(time.perf_counter() - t0, 1)})
            log(f"{recipe.name} on {dataset}: fold {k + 1}/{budget.folds} macro-F1 {folds[-1]['macro_f1']:.4f}")

    x_train, x_val, x_test = _arrays(train, pre), _arrays(val, pre), _arrays(test, pre)
    t0 = time.perf_counter()
    est = recipe.build(budget, seed, augment, stain, pretrained).fit(x_train, train.labels, x_val, val.labels,
                                                                     len(classes))
    train_seconds = time.perf_counter() - t0
    proba, ms_per_image = timed_predict(est, x_test)
    test_metrics = _slim(classification_metrics(test.labels, proba, classes))
    result = {
        "recipe": recipe.name, "paper": recipe.paper, "method": recipe.method, "claimed": recipe.claimed,
        "claim_context": recipe.claim_context, "reading": recipe.reading, "kind": recipe.kind,
        "architecture": recipe.arch or list(recipe.backbones), "dataset": dataset, "classes": classes,
        "budget": budget.__dict__, "seed": seed, "augment": augment or recipe.augment, "stain": stain or recipe.stain,
        "pretrained": pretrained or "none (trained from scratch here)", "split": split_origin,
        "ablation": bool(augment or stain),
        "n_train": len(train), "n_val": len(val), "n_test": len(test), "n_pool_cv": len(pool),
        "cv": {"folds": folds, **({m: {"mean": float(np.mean([f[m] for f in folds])),
                                       "sd": float(np.std([f[m] for f in folds]))} for m in FOLD_METRICS}
                                  if folds else {})},
        "test": test_metrics, "params": est.n_params, "flops_per_image": est.flops(),
        "train_seconds": round(train_seconds, 1), "inference_ms_per_image": round(ms_per_image, 3),
        "epochs_run": est.epochs_run_, "best_epoch": est.best_epoch_,
        "feature_head": getattr(est, "chosen_", None), "feature_head_candidates": getattr(est, "candidates_", None),
        "cross_dataset": {t: cross_dataset(est, classes, t, pre, data_root, budget) for t in cross},
        "seconds": round(time.perf_counter() - started, 1), "config_key": key, "versions": versions(), "provenance": provenance(),
    }
    _atomic.write_json(path, result)
    log(f"{recipe.name} on {dataset}: test macro-F1 {test_metrics['macro_f1']['value']:.4f}; {path}")
    return result


def cross_dataset(est, source_classes: list[str], target: str, pre, data_root, budget: Budget) -> dict:
    """The trained model on every image of ``target`` over the classes both datasets share."""
    index = _image_index(target, data_root)
    mapping = align_classes(source_classes, index.classes)
    if not len(mapping):
        return {"error": f"no class shared with {target}"}
    source_idx = sorted(mapping.source_to_target)
    target_to_new = {mapping.source_to_target[s]: i for i, s in enumerate(source_idx)}
    keep = [i for i, y in enumerate(index.labels) if int(y) in target_to_new]
    subset = limit_per_class(index.subset(keep), budget.test_per_class, 0)
    y = np.array([target_to_new[int(v)] for v in subset.labels])
    proba = est.predict_proba(_arrays(subset, pre))[:, source_idx]
    proba = proba / np.clip(proba.sum(1, keepdims=True), 1e-12, None)
    names = [source_classes[s] for s in source_idx]
    metrics = classification_metrics(y, proba, names)
    return {"shared_classes": names, "n": int(len(y)), **{k: metrics[k] for k in ("accuracy", "balanced_accuracy",
                                                                                  "macro_f1", "per_class")}}
