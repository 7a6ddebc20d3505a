"""Adapting a trained network to another site.

- **AdaBN, without labels** (Li et al. 2016, "Revisiting batch normalization for practical domain
  adaptation"): a network's batch-norm layers normalize with the training site's feature
  statistics; recomputing them on the target site's unlabelled images removes much of a site
  shift. The weights are not changed.
- **Few-shot fine-tuning** (``few_shot_fit``), with k labelled cells per class: AdaBN on the
  target images first, then every weight fine-tuned with those batch-norm statistics held fixed,
  so the few cells move the weights, never the statistics.
- **Class-prior re-estimation, without labels** (``reestimate_prior``; Saerens et al. 2002, "Adjusting
  the outputs of a classifier to new a priori probabilities"): a lab's cells come in other proportions
  than the training cells did (mostly neutrophils and lymphocytes, few basophils); EM on the unlabelled
  batch's calibrated probabilities estimates those proportions and re-weights every cell's probabilities.
- **Scale selection, without labels** (``select_zoom``): another lab's optics or crop size show its cells
  larger or smaller in the frame than the training cells were; of a grid of magnifications, the one at
  which the network's calibrated predictions on the unlabelled batch carry the most information about
  each image (H(mean p) - mean H(p), the mutual information between image and predicted class, as in
  Krause et al. 2010, "Discriminative clustering by regularized information maximization"): confident on
  each cell without calling every cell the same.
- **Self-training on the lab's unlabelled cells** (``self_train``; pseudo-labelling, Lee 2013): the
  few-shot network calls the unlabelled cells, and is fine-tuned again on the labelled cells and its most
  confident calls, drawn in the class proportions the unlabelled cells have (``pseudo_labels``).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch

from leukodx.errors import InvalidInputError
from leukodx.preprocessing.transforms import Preprocess, normalize_batch

if TYPE_CHECKING:
    from leukodx.models.site_stats import SiteRecognizer
    from leukodx.training.trainer import FitResult, TrainConfig


def reestimate_prior(proba: np.ndarray, train_prior: np.ndarray, max_iter: int = 100,
                     tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(the probabilities re-weighted to the batch's own class proportions, those proportions), by EM from
    calibrated probabilities (N, C) of one batch and the class proportions the model was trained on. A class
    the model was not trained on (proportion 0) has nothing to re-weight: its probabilities are kept, and the
    other classes share the rest."""
    proba = np.asarray(proba, dtype=np.float64)
    train_prior = np.asarray(train_prior, dtype=np.float64)
    trained = train_prior > 0
    base = train_prior[trained] / train_prior[trained].sum()
    part = proba[:, trained]
    mass = part.sum(axis=1, keepdims=True)
    prior, weighted = base, part
    adjusted = proba.copy()
    for _ in range(max_iter):
        weighted = part * (prior / base)
        weighted *= mass / np.clip(weighted.sum(axis=1, keepdims=True), 1e-300, None)
        new = weighted.mean(axis=0)
        new /= max(float(new.sum()), 1e-300)
        done = float(np.abs(new - prior).max()) < tol
        prior = new
        if done:
            break
    adjusted[:, trained] = weighted
    full = np.zeros_like(train_prior)
    full[trained] = prior
    return adjusted, full


#: the magnifications ``select_zoom`` tries (``Preprocess.zoom``): from cells shown 2.5 times larger than the
#: training cells (brought down by 0.4) to cells shown half as large (brought up by 2)
ZOOM_GRID = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0)
#: zooms whose information is within this many nats of the best tie (the tie goes to the zoom nearest 1)
ZOOM_TIE = 1e-4


def prediction_information(proba: np.ndarray) -> float:
    """H(mean p) - mean H(p) in nats: the mutual information between an image of the batch and the class
    predicted for it. High when each prediction is confident and the predictions do not all agree."""
    proba = np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1.0)
    mean = proba.mean(axis=0)
    return float(-(mean * np.log(mean)).sum() + (proba * np.log(proba)).sum(axis=1).mean())


def select_zoom(proba_at: Callable[[Preprocess], np.ndarray], preprocess: Preprocess,
                zooms: Iterable[float] = ZOOM_GRID) -> tuple[float, dict[str, float]]:
    """(the zoom of ``zooms`` at which a network reads one site's unlabelled images with the most
    ``prediction_information``, each zoom's score). ``proba_at(pre)`` gives the network's calibrated
    probabilities of the site's images decoded with ``pre``; ``preprocess`` is the network's own, which each
    tried zoom replaces. Scores within 1e-4 nats of each other tie, and a tie goes to the zoom nearest 1."""
    scores = {}
    for zoom in zooms:
        proba = proba_at(replace(preprocess, zoom=float(zoom)))
        if len(proba) == 0:
            raise InvalidInputError("no images to measure the scale on")
        scores[f"{float(zoom):g}"] = prediction_information(proba)
    top = max(scores.values())
    best = min((z for z, v in scores.items() if v >= top - ZOOM_TIE), key=lambda z: abs(np.log(float(z))))
    return float(best), scores


def has_batchnorm(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def batchnorm_statistics(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every batch-norm layer's running mean and variance, by state-dict key (what AdaBN moves)."""
    return {f"{name}.{buffer}": getattr(m, buffer).detach().clone().cpu()
            for name, m in net.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for buffer in ("running_mean", "running_var")}


def with_batchnorm_statistics(net: torch.nn.Module, statistics: dict[str, torch.Tensor],
                              source: str = "batch-norm statistics") -> torch.nn.Module:
    """A copy of ``net`` that normalizes with ``statistics`` (``batchnorm_statistics`` of a network of the same
    architecture, e.g. one site's); every weight is unchanged."""
    own = batchnorm_statistics(net)
    if set(statistics) != set(own) or any(tuple(statistics[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise InvalidInputError(f"{source}: do not fit this network's batch-norm layers")
    adapted = copy.deepcopy(net)
    device = next(adapted.parameters()).device
    adapted.load_state_dict({k: v.to(device) for k, v in statistics.items()}, strict=False)
    return adapted.eval()


#: training cells per site the site recognizer is fitted on (drawn at random)
RECOGNIZER_CELLS_PER_SITE = 1000


def fit_site_recognizer(net: torch.nn.Module, preprocess: Preprocess, train_by_site: dict[str, np.ndarray],
                        val_by_site: dict[str, np.ndarray], style_source: str, seed: int = 0
                        ) -> tuple["SiteRecognizer", dict]:
    """The ``SiteRecognizer`` of ``net`` (the bundle's own network): fitted on up to ``RECOGNIZER_CELLS_PER_SITE``
    training cells per site, each site weighted the same; and the share of each site's validation cells it names
    right."""
    from sklearn.linear_model import LogisticRegression

    from leukodx.models.features import last_linear
    from leukodx.models.site_stats import SiteRecognizer
    from leukodx.training.calibration import network_outputs

    start = last_linear(net).in_features  # the features are the penultimate ones, then the style

    def style(arrays: np.ndarray) -> np.ndarray:
        return network_outputs(net, arrays, preprocess, style_source=style_source)[1][:, start:].astype(np.float64)

    rng = np.random.default_rng(seed)
    parts = []
    for i, arrays in enumerate(train_by_site.values()):
        pick = np.sort(rng.choice(len(arrays), size=min(RECOGNIZER_CELLS_PER_SITE, len(arrays)), replace=False))
        parts.append((style(arrays[pick]), np.full(len(pick), i)))
    x = np.concatenate([p for p, _ in parts])
    y = np.concatenate([g for _, g in parts])
    center, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    fitted = LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced").fit((x - center) / scale, y)
    recognizer = SiteRecognizer(center=center, scale=scale, coef=fitted.coef_, intercept=fitted.intercept_)
    if len(train_by_site) == 2:  # scikit-learn gives a two-class problem one row: site 1 against site 0
        recognizer.coef = np.concatenate([-fitted.coef_, fitted.coef_]) / 2
        recognizer.intercept = np.concatenate([-fitted.intercept_, fitted.intercept_]) / 2
    named = {site: float(np.mean(recognizer.sites(style(arrays)) == i)) if len(arrays) else None
             for i, (site, arrays) in enumerate(val_by_site.items())}
    return recognizer, {"cells_per_site": RECOGNIZER_CELLS_PER_SITE, "seed": seed,
                        "validation_named_right": named}


def site_statistics(net: torch.nn.Module, arrays_by_site: dict[str, np.ndarray],
                    preprocess: Preprocess) -> dict[str, dict[str, torch.Tensor]]:
    """Per site, the batch-norm statistics of ``net`` on that site's images (AdaBN on each): what a network
    trained with one site per batch normalizes with at that site."""
    return {site: batchnorm_statistics(adapt_batchnorm(net, arrays, preprocess))
            for site, arrays in arrays_by_site.items()}


@torch.no_grad()
def adapt_batchnorm(net: torch.nn.Module, arrays: np.ndarray | Iterable[np.ndarray], preprocess: Preprocess,
                    batch_size: int = 128) -> torch.nn.Module:
    """A copy of ``net`` whose batch-norm running statistics are those of ``arrays`` (the target
    site's images, (N, S, S, 3) uint8 after ``preprocess``, or an iterable of such chunks, read once:
    the batches are the same either way); every other weight is unchanged."""
    adapted = copy.deepcopy(net)
    bns = [m for m in adapted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    chunks = [arrays] if isinstance(arrays, np.ndarray) else arrays
    if not bns or (isinstance(arrays, np.ndarray) and len(arrays) == 0):
        return adapted.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every target batch
    adapted.eval()
    for m in bns:
        m.train()
    device = next(adapted.parameters()).device
    pending: list[np.ndarray] = []
    held = 0

    def step(batch: np.ndarray) -> None:
        adapted(torch.from_numpy(normalize_batch(batch, preprocess)).to(device))

    for part in chunks:
        pending.append(part)
        held += len(part)
        if held < batch_size:
            continue
        joined = np.concatenate(pending)
        cut = len(joined) - len(joined) % batch_size
        for s in range(0, cut, batch_size):
            step(joined[s:s + batch_size])
        pending, held = [joined[cut:]], len(joined) - cut
    if held:
        step(np.concatenate(pending))
    return adapted.eval()


def few_shot_fit(parent: torch.nn.Module, x: np.ndarray, y: np.ndarray, n_classes: int, config: "TrainConfig",
                 workdir: str | Path, show_progress: bool = False) -> "FitResult":
    """``parent`` fine-tuned on the labelled target images ``x`` (uint8, after ``config.preprocess``) with
    labels ``y``: batch-norm statistics re-estimated on ``x`` (AdaBN), then ``config``'s fine-tuning with
    them frozen, on the one training engine (validated on ``x`` itself: a few cells leave nothing else). No
    checkpoint is written: such a fit takes seconds, and writing the network and optimizer state after each of
    its epochs took about a fifth of the time of the LOSO test's quick learning curve."""
    from safetensors.torch import save_file

    from leukodx.training.trainer import fit

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = workdir / "adabn-parent.safetensors"
    adapted = adapt_batchnorm(parent, x, config.preprocess)
    save_file({k: v.contiguous() for k, v in adapted.state_dict().items()}, str(start))
    config = replace(config, pretrained=str(start), freeze_batchnorm=has_batchnorm(parent))
    return fit(x, y, x, y, n_classes, config, None, show_progress=show_progress)


#: ``self_train``'s settings: pseudo-labelled cells in all (shared by the classes in the unlabelled cells'
#: estimated proportions), the least calibrated confidence accepted, how many times the labelled cells count, and
#: the epochs of the second fit
SELF_TRAIN_CELLS = 500
SELF_TRAIN_THRESHOLD = 0.8
SELF_TRAIN_LABELLED_WEIGHT = 3
SELF_TRAIN_EPOCHS = 15


def pseudo_labels(proba: np.ndarray, labelled_prior: np.ndarray, cells: int = SELF_TRAIN_CELLS,
                  threshold: float = SELF_TRAIN_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(indices, classes) of the unlabelled cells to train on, from their calibrated probabilities (N, C) under a
    network trained in the class proportions ``labelled_prior``. The probabilities are first re-weighted to the
    cells' own proportions (``reestimate_prior``); each class then gets its share of ``cells``, its most confident
    calls at or above ``threshold``. Equal quotas would fill a rare class (a lab's basophils) with confident
    mistakes."""
    adjusted, prior = reestimate_prior(proba, labelled_prior)
    calls, confidence = adjusted.argmax(axis=1), adjusted.max(axis=1)
    keep = []
    for c, share in enumerate(prior):
        idx = np.flatnonzero((calls == c) & (confidence >= threshold))
        keep.append(idx[np.argsort(-confidence[idx], kind="stable")][:int(round(cells * share))])
    chosen = np.concatenate(keep).astype(int)
    return chosen, calls[chosen]


def self_train(parent: torch.nn.Module, x: np.ndarray, y: np.ndarray, unlabelled: np.ndarray, n_classes: int,
               config: "TrainConfig", workdir: str | Path, first: "FitResult | None" = None,
               cells: int = SELF_TRAIN_CELLS, threshold: float = SELF_TRAIN_THRESHOLD,
               epochs: int = SELF_TRAIN_EPOCHS) -> "FitResult":
    """``few_shot_fit`` on the labelled cells ``x``, ``y`` (or ``first``, that fit made before), then ``parent``
    fine-tuned again (``few_shot_fit``, ``epochs``) on them (counted ``SELF_TRAIN_LABELLED_WEIGHT``
    times) and the unlabelled cells (uint8, after ``config.preprocess``) that the first fit calls most confidently
    (``pseudo_labels`` with ``cells`` and ``threshold``)."""
    from leukodx.training.calibration import softmax
    from leukodx.training.trainer import predict_logits

    if first is None:
        first = few_shot_fit(parent, x, y, n_classes, config, Path(workdir) / "labelled")
    proba = softmax(predict_logits(first.net, unlabelled, config.preprocess), first.temperature)
    chosen, calls = pseudo_labels(proba, np.bincount(y, minlength=n_classes) / len(y), cells, threshold)
    x2 = np.concatenate([np.repeat(x, SELF_TRAIN_LABELLED_WEIGHT, axis=0), unlabelled[chosen]])
    y2 = np.concatenate([np.repeat(y, SELF_TRAIN_LABELLED_WEIGHT), calls])
    second = replace(config, epochs=epochs, patience=epochs)
    return few_shot_fit(parent, x2, y2, n_classes, second, Path(workdir) / "pseudo-labelled")
