"""``leukodx train``: dataset + saved split + config -> a calibrated, evaluated model bundle."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from leukodx.data.cache import cached_arrays
from leukodx.data.folder import ImageIndex, limit_per_class
from leukodx.data.registry import dataset_info, list_datasets, load_dataset
from leukodx.data.splits import apply_split, bundled_split_path, load_split, make_split, save_split
from leukodx._hashing import sha256_file
from leukodx.errors import InvalidInputError
from leukodx.evaluation.metrics import classification_metrics
from leukodx._versions import provenance
from leukodx.models.architectures import network_from_card
from leukodx.models.bundle import load_network, save_bundle
from leukodx.models.card import build_card
from leukodx.preprocessing.transforms import Preprocess
from leukodx.models.reliability import DEFAULT_STYLE_SOURCE, attach_reliability, save_reliability
from leukodx.models.site_stats import save_site_statistics
from leukodx.training.adaptation import (adapt_batchnorm, fit_site_recognizer, site_statistics,
                                         with_batchnorm_statistics)
from leukodx.training.calibration import fit_network_reliability, softmax
from leukodx.training.trainer import TrainConfig, device, fit, predict_logits

DEFAULT_ABSTAIN = 0.6


def resolve_split(index: ImageIndex, split_path: str | os.PathLike | None, seed: int) -> tuple[dict, str, Path | None]:
    """The split to use (the file given, else the bundled one, else a new seeded split), how to
    name it in a card, and the file it came from."""
    if split_path:
        return load_split(split_path), str(split_path), Path(split_path)
    bundled = bundled_split_path(index.name)
    if bundled.exists():
        return load_split(bundled), f"leukodx/data/splits/{bundled.name}", bundled
    return make_split(index, seed=seed), "generated", None


def _training_record(config: TrainConfig, result, started: float) -> dict:
    """The card's ``training`` entry: config, rounds, best round, time, device and threads, history."""
    return {"config": config.as_dict(), "epochs_run": len(result.history), "best_epoch": result.best_epoch,
            "seconds": round(result.seconds, 1), "wall_seconds_with_decoding": round(time.time() - started, 1),
            "device": str(device()), "threads": torch.get_num_threads(), "history": result.history,
            **({"head_refit": result.head_refit} if result.head_refit else {})}


def _val_summary(labels: np.ndarray, result, classes: list[str]) -> dict:
    """Calibrated validation figures for the card (the split used to pick the round and the temperature)."""
    m = classification_metrics(labels, softmax(result.val_logits, result.temperature), classes, n_boot=200,
                               auroc_boot=0)
    return {k: m[k] for k in ("accuracy", "macro_f1", "ece", "n")}


def train_from_dataset(dataset: str, out_dir: str | os.PathLike, config: TrainConfig, *, name: str | None = None,
                       split_path: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
                       max_per_class: int | None = None, resume: bool = False, show_progress: bool = True,
                       intended_use: str | None = None) -> dict:
    """Train, calibrate on val, evaluate on test with bootstrap CIs, write the bundle; returns its card."""
    started = time.time()
    out_dir = Path(out_dir)
    index = load_dataset(dataset, data_root)
    if not isinstance(index, ImageIndex):
        raise InvalidInputError(f"{dataset}: not an image-classification dataset")
    split, split_origin, split_file = resolve_split(index, split_path, config.seed)
    sides = apply_split(index, split)
    for side in ("train", "val", "test"):
        if side not in sides:
            raise InvalidInputError(f"split for {dataset} has no '{side}' list")
    train = limit_per_class(sides["train"], max_per_class, config.seed)
    val = limit_per_class(sides["val"], max_per_class and max(2, max_per_class // 3), config.seed)
    test = limit_per_class(sides["test"], max_per_class and max(2, max_per_class // 3), config.seed)
    used = ImageIndex(name=index.name, root=index.root, paths=train.paths + val.paths + test.paths,
                      labels=np.concatenate([train.labels, val.labels, test.labels]), classes=index.classes)
    arrays = cached_arrays(used, config.preprocess)
    n_tr, n_va = len(train), len(val)
    x_tr, x_va, x_te = arrays[:n_tr], arrays[n_tr:n_tr + n_va], arrays[n_tr + n_va:]

    if split_file is None:
        split_file = out_dir / "split.json"
        save_split(split, split_file)
        split_origin = str(split_file)
    result = fit(x_tr, train.labels, x_va, val.labels, len(index.classes), config, out_dir / "work",
                 resume=resume, show_progress=show_progress)
    test_proba = softmax(predict_logits(result.net, x_te, config.preprocess), result.temperature)
    test_metrics = classification_metrics(test.labels, test_proba, index.classes)

    info = dataset_info(dataset) if dataset in list_datasets() else None
    card = build_card(
        name or out_dir.name, "image-classification", list(index.classes),
        input_kind=info.input_kind if info else "cells", arch=config.arch, input_size=config.preprocess.size,
        preprocess=config.preprocess.as_dict(), temperature=result.temperature, abstain_below=DEFAULT_ABSTAIN,
        data={
            "dataset": dataset,
            "dataset_fingerprint": index.fingerprint(),
            "split": split_origin,
            "split_sha256": sha256_file(split_file),
            "split_method": split.get("method"), "split_groups": split.get("group_method"),
            "counts": {"train": train.class_counts(), "val": val.class_counts(), "test": test.class_counts()},
            "max_per_class": max_per_class,
            "source": info.source if info else str(index.root),
            "license": info.license if info else None,
            "citation": info.citation if info else None,
        },
        training=_training_record(config, result, started),
        metrics={"split": "test", "test": test_metrics, "val": _val_summary(val.labels, result, index.classes)},
        intended_use=intended_use or f"Research use: classify images like those of {dataset} into "
                                     f"{', '.join(index.classes)}. Not a medical device.",
        limits=list(info.limits) if info else ["Trained on a user folder; see its provenance."],
    )
    return save_classifier(out_dir, result.net, card, config.preprocess, (x_tr, train.labels), (x_va, val.labels),
                           config.seed)


def save_classifier(out_dir: str | os.PathLike, net: torch.nn.Module, card: dict, preprocess, train: tuple,
                    val: tuple, seed: int = 0, groups: np.ndarray | None = None,
                    val_groups: np.ndarray | None = None) -> dict:
    """Write an image classifier's bundle with its reliability statistics (OOD and conformal,
    ``leukodx.models.reliability``) fitted on its training and validation arrays (``groups``: each
    training image's site, for multi-site models)."""
    rel = fit_network_reliability(net, preprocess, float(card.get("temperature", 1.0)), *train, *val, seed=seed,
                                  groups=groups, val_groups=val_groups)
    digest = save_reliability(out_dir, rel)
    return save_bundle(out_dir, net, {**card, "reliability": rel.card_entry(digest)})


def train_multisite(sites: list[str], out_dir: str | os.PathLike, config: TrainConfig, *, name: str | None = None,
                    data_root: str | os.PathLike | None = None, max_per_class: int | None = None,
                    min_class_count: int = 50, loso_result: str | os.PathLike | None = None,
                    resume: bool = False, show_progress: bool = True, log=print) -> dict:
    """One white-cell model over several sites: every site's saved split, labels on the vocabulary's top
    level, classes kept when the sites together have ``min_class_count`` training cells of them.

    The card lists each site's data (fingerprint, split sha256, counts, licence), the in-site test
    figures per site and pooled, and, from ``loso_result`` (a ``leukodx benchmark --protocol loso``
    file of the same recipe), the figures on each site when it was left out of training.
    """
    import json

    from leukodx.data.registry import dataset_info
    from leukodx.data.sites import site_sides, split_record
    from leukodx.data.vocabulary import common_classes

    started = time.time()
    out_dir = Path(out_dir)
    if len(set(sites)) != len(sites) or not sites:
        raise InvalidInputError(f"--dataset: give each site once (got {', '.join(sites) or 'none'})")
    per_site = {s: site_sides(s, data_root, coarse=True) for s in sites}
    totals: dict[str, int] = {}
    for sides in per_site.values():
        for c, n in limit_per_class(sides["train"], max_per_class, config.seed).class_counts().items():
            totals[c] = totals.get(c, 0) + n
    classes = [c for c in common_classes(coarse=True) if totals.get(c, 0) >= min_class_count]
    dropped = sorted(c for c, n in totals.items() if 0 < n < min_class_count)
    if len(classes) < 2:
        raise InvalidInputError(f"{', '.join(sites)}: fewer than two classes with {min_class_count} training cells")

    parts = {side: {s: site_arrays(per_site[s][side], classes, max_per_class if side == "train" else None,
                                   config.preprocess, config.seed) for s in sites}
             for side in ("train", "val", "test")}
    x_tr = np.concatenate([a for a, _, _ in parts["train"].values()])
    y_tr = np.concatenate([y for _, y, _ in parts["train"].values()])
    x_va = np.concatenate([a for a, _, _ in parts["val"].values()])
    y_va = np.concatenate([y for _, y, _ in parts["val"].values()])
    log(f"{len(classes)} classes ({', '.join(classes)}); {len(y_tr)} training and {len(y_va)} validation cells "
        f"from {', '.join(sites)}" + (f"; left out (too few cells): {', '.join(dropped)}" if dropped else ""))

    def sites_of(side: str) -> np.ndarray:
        return np.concatenate([np.full(len(y), i) for i, (_, y, _) in enumerate(parts[side].values())])

    result = fit(x_tr, y_tr, x_va, y_va, len(classes), config, out_dir / "work", resume=resume,
                 show_progress=show_progress, groups=sites_of("train"), val_groups=sites_of("val"))
    net, at_site, site_stats = result.net, {}, None
    if config.site_batches:  # each site's own statistics kept; the bundle's network gets them pooled over all
        site_stats = site_statistics(net, {s: parts["train"][s][0] for s in sites}, config.preprocess)
        at_site = {s: with_batchnorm_statistics(net, site_stats[s]) for s in sites}
        net = adapt_batchnorm(net, x_tr, config.preprocess)
        recognizer = fit_site_recognizer(net, config.preprocess, {s: parts["train"][s][0] for s in sites},
                                         {s: parts["val"][s][0] for s in sites}, DEFAULT_STYLE_SOURCE, config.seed)

    def counts(labels: np.ndarray) -> dict[str, int]:
        return {c: int(n) for c, n in zip(classes, np.bincount(labels, minlength=len(classes))) if n}

    test_by_site, pooled_y, pooled_p, data_sites, without_site = {}, [], [], [], {}
    for s in sites:
        x_te, y_te, _ = parts["test"][s]
        proba = softmax(predict_logits(at_site.get(s, net), x_te, config.preprocess), result.temperature)
        if at_site:  # the same test cells scored by the bundle's network, as where no --site is given
            pred = predict_logits(net, x_te, config.preprocess).argmax(1)
            without_site[s] = {"accuracy": float(np.mean(pred == y_te)) if len(y_te) else None, "n": int(len(y_te))}
        pooled_y.append(y_te)
        pooled_p.append(proba)
        # every class stays a possible answer: a site is scored on the full model, not on its own classes only
        test_by_site[s] = classification_metrics(y_te, proba, classes) if len(set(y_te.tolist())) > 1 else None
        info = dataset_info(s)
        data_sites.append({"dataset": s, "site": info.site, "scanner": info.scanner,
                           "dataset_fingerprint": per_site[s]["train"].meta["dataset_fingerprint"],
                           **split_record(s), "split_groups": "patients" if s == "deepapl" else "near-duplicates",
                           "counts": {side: counts(parts[side][s][1]) for side in ("train", "val", "test")},
                           "source": info.source, "license": info.license, "citation": info.citation})
        acc = test_by_site[s]["accuracy"]["value"] if test_by_site[s] else float("nan")
        log(f"{s} test: accuracy {acc:.3f} (n={len(y_te)})")
    pooled = classification_metrics(np.concatenate(pooled_y), np.concatenate(pooled_p), classes)
    metrics = {"split": "test", "test": pooled, "test_by_site": test_by_site,
               "val": _val_summary(y_va, result, classes),
               # a site-batch model's figures above use each site's own statistics (--site); without them:
               **({"test_by_site_without_site_statistics": without_site} if without_site else {})}
    if loso_result:
        metrics["leave_one_site_out"] = _loso_summary(json.loads(Path(loso_result).read_text()), loso_result)
    licences = sorted({d["license"] for d in data_sites if d["license"]})
    card = build_card(
        name or out_dir.name, "image-classification", classes, input_kind="cells", arch=config.arch,
        input_size=config.preprocess.size, preprocess=config.preprocess.as_dict(), temperature=result.temperature,
        abstain_below=DEFAULT_ABSTAIN,
        data={"dataset": "+".join(sites), "sites": data_sites, "vocabulary": "top level of leukodx's vocabulary",
              "max_per_class_per_site": max_per_class, "min_class_count": min_class_count,
              "classes_left_out": dropped, "license": "; ".join(licences)},
        training=_training_record(config, result, started),
        metrics=metrics,
        intended_use=("Research use: type single white cells (CellaVision-like crops, one cell centred) into "
                      f"{', '.join(classes)}. Not a medical device; not validated clinically."),
        limits=[f"Trained on {len(sites)} sites ({', '.join(sites)}); other labs, stains and scanners are "
                "measured only by leave-one-site-out (see metrics.leave_one_site_out).",
                "deepapl cells come from acute-leukemia patients (Johns Hopkins, licence: research use, "
                "copyright JHU 2020); pbc cells from healthy donors: a class seen at one site only is learned "
                "from that site's look.",
                *( [f"Classes with fewer than {min_class_count} training cells were left out: {', '.join(dropped)}."]
                   if dropped else [])],
    )
    if site_stats is not None:
        card["site_statistics"] = save_site_statistics(out_dir, site_stats, {s: len(parts["train"][s][1])
                                                                            for s in sites}, *recognizer)
    return save_classifier(out_dir, net, card, config.preprocess, (x_tr, y_tr), (x_va, y_va), config.seed,
                           groups=sites_of("train"), val_groups=sites_of("val"))


def site_arrays(index: ImageIndex, classes: list[str], cap: int | None, preprocess, seed: int
                ) -> tuple[np.ndarray, np.ndarray, ImageIndex]:
    """One site's side restricted to ``classes`` (at most ``cap`` per class): arrays, labels as
    positions in ``classes``, and the index used."""
    position = {c: i for i, c in enumerate(classes)}
    keep = [i for i, y in enumerate(index.labels) if index.classes[y] in position]
    sub = limit_per_class(index.subset(keep), cap, seed)
    labels = np.asarray([position[sub.classes[y]] for y in sub.labels], dtype=int)
    arrays = cached_arrays(sub, preprocess) if len(sub) else np.zeros((0, preprocess.size, preprocess.size, 3), np.uint8)
    return arrays, labels, sub


def card_images(card: dict, directory, sides=("train", "val", "test"), data_root: str | os.PathLike | None = None
                ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """The very images a classifier's card names, per side: preprocessed uint8 arrays, labels (the
    card's class positions) and, for a multi-site model, each image's site (else None). Training
    sides are capped as training capped them (same seed); test sides are whole."""
    from leukodx.data.sites import site_sides

    preprocess = Preprocess.from_dict(card["preprocess"])
    classes = list(card["classes"])
    data = card.get("data", {})
    cap = data.get("max_per_class_per_site") or data.get("max_per_class")
    seed = int(card.get("training", {}).get("config", {}).get("seed", 0))  # the draw of the capped cells
    out = {}
    if data.get("sites"):
        found = {s["dataset"]: site_sides(s["dataset"], data_root, coarse=True) for s in data["sites"]}
        for side in sides:
            parts = [site_arrays(v[side], classes, cap if side == "train" else None, preprocess, seed)
                     for v in found.values()]
            out[side] = (np.concatenate([a for a, _, _ in parts]), np.concatenate([y for _, y, _ in parts]),
                         np.concatenate([np.full(len(y), i) for i, (_, y, _) in enumerate(parts)]))
        return out
    dataset = data.get("dataset")
    if dataset not in list_datasets():
        raise InvalidInputError(f"{directory}: its card names no registered dataset ({dataset!r}) to take images from")
    index = load_dataset(dataset, data_root)
    split_file = bundled_split_path(dataset)
    if not split_file.exists() or sha256_file(split_file) != data.get("split_sha256"):
        raise InvalidInputError(f"{directory}: the saved split of {dataset} is not the one its card names "
                                f"(sha256 {str(data.get('split_sha256'))[:12]})")
    split_sides = apply_split(index, load_split(split_file))
    caps = {"train": cap, "val": cap and max(2, cap // 3), "test": None}  # as train_from_dataset capped them
    for side in sides:
        arrays, labels, _ = site_arrays(split_sides[side], classes, caps[side], preprocess, seed)
        out[side] = (arrays, labels, None)
    return out


def refit_reliability(model: str | os.PathLike, data_root: str | os.PathLike | None = None,
                      show_progress: bool = True) -> dict:
    """``leukodx reliability fit``: (re)fit a classifier bundle's reliability statistics from the very
    training and validation images its card names (its sites, or its dataset and saved split, whose
    sha256 must match), for bundles made before leukodx fitted them. Weights are not touched."""
    net, card, directory = load_network(model, "image-classification", network_from_card)
    preprocess = Preprocess.from_dict(card["preprocess"])
    seed = int(card.get("training", {}).get("config", {}).get("seed", 0))
    data = card_images(card, directory, ("train", "val"), data_root)
    train, val = data["train"][:2], data["val"][:2]
    groups, val_groups = data["train"][2], data["val"][2]
    rel = fit_network_reliability(net, preprocess, float(card.get("temperature", 1.0)), *train, *val, seed=seed,
                                  groups=groups, val_groups=val_groups,
                                  fitted_on={"refit": "weights unchanged", "provenance": provenance()})
    return attach_reliability(directory, card, rel)


def _loso_summary(result: dict, path) -> dict:
    """A card's leave-one-site-out entry: accuracy [CI] per left-out site, from a loso result file."""
    if result.get("protocol") != "leave-one-site-out":
        raise InvalidInputError(f"{path}: not a leave-one-site-out result")
    return {"file": str(path), "variant": result["variant"]["name"], "classes": result["classes"],
            "budget": {k: result["variant"][k] for k in ("arch", "size", "epochs", "per_class")},
            "git_commit": result.get("provenance", {}).get("git_commit"),
            "left_out": {site: {k: fold["left_out"][k] for k in ("accuracy", "macro_f1", "n")}
                         for site, fold in result["folds"].items()},
            "in_site": {site: {s: v["accuracy"] for s, v in fold["in_site"].items()}
                        for site, fold in result["folds"].items()},
            # a site-batch recipe's left-out figures above use the left-out site's own statistics (AdaBN on its
            # unlabelled cells); these, statistics pooled over the training cells: a lab that adapts nothing
            **({"left_out_pooled_statistics": {site: {k: fold["left_out_pooled"][k] for k in ("accuracy", "n")}
                                               for site, fold in result["folds"].items()}}
               if all("left_out_pooled" in fold for fold in result["folds"].values()) else {})}
