"""Leave-one-site-out: train on every site but one, test on the one left out, beside the in-site test.

Sites are the single-cell image sets from different labs and scanners (``pbc`` Barcelona,
``deepapl`` Johns Hopkins, ``wbc-seg-1`` Jiangxi, ``wbc-seg-2`` CellaVision images), relabelled onto
the shared vocabulary's top level and restricted to the five leukocyte types they all have. Each
*variant* is one training recipe (input size, scale normalization, colour handling, test-time
batch-norm adaptation); the protocol is the same for all of them, so a variant is judged by what
it does on the sites it never saw.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from leukodx import _atomic
from leukodx._versions import provenance
from leukodx.data.cache import cached_arrays
from leukodx.data.folder import ImageIndex, limit_per_class
from leukodx.data import sites
from leukodx.errors import InvalidInputError
from leukodx.evaluation.metrics import classification_metrics
from leukodx.models.reliability import LEGACY_STYLE_SOURCE, SHRINKAGE
from leukodx.preprocessing.augment import augment_preset
from leukodx.preprocessing.transforms import TTA_VIEWS, Preprocess, nucleus_fractions, site_zoom
from leukodx.training.adaptation import SELF_TRAIN_EPOCHS

SITES = sites.CELL_SITES
SHARED = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")


@dataclass(frozen=True)
class Variant:
    """One training recipe under the leave-one-site-out protocol."""

    name: str
    arch: str = "regnetx_002"
    size: int = 64
    resize: str = "resize"          # 'cell-crop': scale normalization around the nucleus
    stain: str = "none"             # 'reinhard': colour standardization at train and test time
    augment: str = "all"
    adabn: bool = False             # re-estimate batch-norm statistics on the left-out site (no labels)
    #: one site per training batch, and batch norm adapted to every test site (in-site ones too)
    site_batches: bool = False
    #: the left-out site's images zoomed so that its median nucleus fills the frame as the training cells' did
    #: (``site_zoom``, measured on its unlabelled images)
    scale_match: bool = False
    #: the left-out site's images zoomed by the magnification at which the fold's network reads them with the most
    #: information (``select_zoom``, on its unlabelled images; with ``adabn``, batch norm adapted to them at each
    #: zoom tried); the few-shot curve starts from that zoom too
    scale_select: bool = False
    #: the few-shot curve also self-trained on the left-out site's unlabelled cells (``self_train``)
    self_train: bool = False
    self_train_epochs: int = SELF_TRAIN_EPOCHS
    #: the last layer re-fitted on the training cells' features after training (``TrainConfig.refit_head``)
    refit_head: str = "none"
    #: every test cell's call (left-out, in-site, few-shot) averaged over its 8 flips and quarter turns
    #: (``predict --tta``); the fold also records the left-out site read once (``left_out_single_view``)
    tta: bool = False
    #: networks trained per fold (seeds ``seed``, ``seed + 1``, ...) whose logits are averaged, one temperature
    #: fitted on the average (a deep ensemble; Lakshminarayanan et al. 2017); few-shot fits tune each member
    members: int = 1
    epochs: int = 8
    lr: float = 3e-3
    per_class: int = 150            # training images per class per site
    val_per_class: int = 30
    test_per_class: int = 200       # test images per class per site (left-out and in-site)
    seed: int = 0

    def preprocess(self) -> Preprocess:
        return Preprocess(size=self.size, resize=self.resize, stain=self.stain)


VARIANTS = {v.name: v for v in (
    Variant("baseline"),
    Variant("cell-crop", resize="cell-crop"),
    Variant("cell-crop+reinhard", resize="cell-crop", stain="reinhard"),
    Variant("cell-crop+adabn", resize="cell-crop", adabn=True),
    Variant("cell-crop+reinhard+adabn", resize="cell-crop", stain="reinhard", adabn=True),
    # normalization layers: GroupNorm instead of batch norm, same network otherwise
    Variant("cell-crop+groupnorm", arch="regnetx_002_gn", resize="cell-crop"),
    # stain, hue and grey-image augmentation (another lab's look, drawn at training time)
    Variant("cell-crop+stain-aug", resize="cell-crop", augment="stain"),
    Variant("cell-crop+stain-aug+groupnorm", arch="regnetx_002_gn", resize="cell-crop", augment="stain"),
    Variant("cell-crop+reinhard+stain-aug", resize="cell-crop", stain="reinhard", augment="stain"),
    # the image's own black and white points mapped onto one reference (a yellow glass, pale nuclei)
    Variant("cell-crop+levels", resize="cell-crop", stain="levels"),
    Variant("cell-crop+levels+adabn", resize="cell-crop", stain="levels", adabn=True),
    # domain-specific batch norm: trained on one-site batches, so AdaBN at a new site is what training did
    Variant("cell-crop+site-bn", resize="cell-crop", adabn=True, site_batches=True),
    Variant("cell-crop+stain-aug+site-bn", resize="cell-crop", augment="stain", adabn=True, site_batches=True),
    # the screening budget above leaves the networks under-trained (in-site accuracy 0.5-0.75); the
    # finalists again with 20 epochs and up to 500 cells per class per site
    Variant("baseline-large", epochs=20, per_class=500, val_per_class=60),
    Variant("cell-crop+stain-aug-large", resize="cell-crop", augment="stain", epochs=20, per_class=500,
            val_per_class=60),
    # the finalist at 96 px: granules (eosinophil against neutrophil) are barely resolved at 64
    Variant("cell-crop+stain-aug-96-large", size=96, resize="cell-crop", augment="stain", epochs=20, per_class=500,
            val_per_class=60),
    # the finalist with twice the cells per class and site (is it still data-starved?)
    Variant("cell-crop+stain-aug-1000", resize="cell-crop", augment="stain", epochs=20, per_class=1000,
            val_per_class=60),
    # the finalist trained as it is used: one-site batches, batch norm adapted at every test site
    Variant("cell-crop+stain-aug+site-bn-large", resize="cell-crop", augment="stain", adabn=True, site_batches=True,
            epochs=20, per_class=500, val_per_class=60),
    # the finalist's augmentation without the nucleus crop (which of the two costs the CellaVision sites?),
    # and with magnification x0.8-1.6 instead of the crop (Jiangxi's and wbc-seg-2's cells fill more of
    # the frame than the CellaVision crops')
    Variant("stain-aug-large", augment="stain", epochs=20, per_class=500, val_per_class=60),
    Variant("scale-stain-aug-large", augment="scale-stain", epochs=20, per_class=500, val_per_class=60),
    # the shipped recipe (stain-aug-large) trained as it would be used at a new lab: one-site batches, batch
    # norm adapted at every test site (the site-bn arm of the nucleus-crop finalist, on the whole image)
    Variant("stain-aug+site-bn-large", augment="stain", adabn=True, site_batches=True, epochs=20, per_class=500,
            val_per_class=60),
    # the shipped recipe at 96 px (CellaVision crops are 144-360 px; granules and nucleoli are barely resolved at 64)
    Variant("stain-aug-96-large", size=96, augment="stain", epochs=20, per_class=500, val_per_class=60),
    # the two best zero-shot arms together: magnification x0.8-1.6 and one-site batches with batch norm adapted
    # at every test site
    Variant("scale-stain-aug+site-bn-large", augment="scale-stain", adabn=True, site_batches=True, epochs=20,
            per_class=500, val_per_class=60),
    # plain training (the best zero-shot on the CellaVision sites) on one-site batches with batch norm adapted
    # at every test site: stain augmentation cost pbc (0.761 -> 0.566) where site batches lifted it
    Variant("site-bn-large", adabn=True, site_batches=True, epochs=20, per_class=500, val_per_class=60),
    # the same with each image's black and white points mapped onto one reference (Jiangxi's yellow glass removed)
    Variant("levels+site-bn-large", stain="levels", adabn=True, site_batches=True, epochs=20, per_class=500,
            val_per_class=60),
    # the shipped recipe with the left-out site brought to the training cells' scale: its median nucleus size in
    # the frame measured on its own unlabelled cells (CellaVision's pbc crops show smaller cells than the others)
    Variant("stain-aug+scale-match-large", augment="stain", scale_match=True, epochs=20, per_class=500,
            val_per_class=60),
    # the shipped recipe with MixStyle after the first three stages (domain generalization by mixing the training
    # images' feature styles across the sites of a batch); the same network at inference
    Variant("mixstyle+stain-aug-large", arch="regnetx_002_mixstyle", augment="stain", epochs=20, per_class=500,
            val_per_class=60),
    # the shipped recipe on the images' luminance only: no lab's stain colour reaches the network
    Variant("grey+stain-aug-large", arch="regnetx_002_grey", augment="stain", epochs=20, per_class=500,
            val_per_class=60),
    # the shipped recipe on a network of twice the compute (RegNetX-400MF): is in-site and few-shot accuracy
    # limited by the network's capacity?
    Variant("stain-aug-x004-large", arch="regnetx_004", augment="stain", epochs=20, per_class=500, val_per_class=60),
    # the shipped recipe with the left-out site's magnification chosen by the fold's own network on the site's
    # unlabelled images (the nucleus-size measure of scale-match misreads deepapl's nuclei, and so Jiangxi's scale)
    Variant("stain-aug+scale-select-large", augment="stain", scale_select=True, epochs=20, per_class=500,
            val_per_class=60),
    # the same scale selection on the arm with the best zero-shot and few-shot CellaVision figures (levels colour
    # standardization, one-site batches, batch norm adapted at every test site), whose worst sites were the two
    # whose cells show larger in the frame (Jiangxi, wbc-seg-2)
    Variant("levels+site-bn+scale-select-large", stain="levels", adabn=True, site_batches=True, scale_select=True,
            epochs=20, per_class=500, val_per_class=60),
    # the scale selection on the arm trained with magnification x0.8-1.6 (the best worst site with test-time AdaBN):
    # the network has seen larger cells, the zoom brings the left-out site's to the sizes it has seen
    Variant("scale-stain-aug+scale-select-large", augment="scale-stain", scale_select=True, epochs=20, per_class=500,
            val_per_class=60),
    # the arm with the best few-shot worst site (stain-aug+scale-select-large; the same networks), its few-shot fits
    # also self-trained on the left-out site's unlabelled cells: does what a lab has in plenty, unlabelled cells,
    # add to its k labelled ones?
    Variant("stain-aug+scale-select+self-train-large", augment="stain", scale_select=True, self_train=True,
            epochs=20, per_class=500, val_per_class=60),
    # the shipped recipe with its last layer re-fitted on the training cells' features without augmentation: it
    # lifted the shipped model's pbc test (ad hoc); does a head fitted to clean training-site cells cost the
    # left-out site?
    Variant("stain-aug+refit-head-large", augment="stain", refit_head="clean", epochs=20, per_class=500,
            val_per_class=60),
    # the same head fitted on the training cells as they are and one augmented copy of each: the clean head cost
    # every left-out site (zero-shot, AdaBN, k = 10); does keeping the augmented cells in its data keep them?
    Variant("stain-aug+refit-head-mixed-large", augment="stain", refit_head="clean+augmented", epochs=20,
            per_class=500, val_per_class=60),
    # the shipped recipe with every test cell's call averaged over its 8 flips and quarter turns (predict --tta):
    # it lifted the shipped model's in-site tests by about a point; does it lift a left-out site, zero-shot and
    # after 10 labelled cells per class?
    Variant("stain-aug+tta-large", augment="stain", tta=True, epochs=20, per_class=500, val_per_class=60),
    # three networks of the shipped recipe (seeds 0-2) with their logits averaged: ensembles were among the review's
    # methods, and averaged networks are reported to hold up better under dataset shift (Ovadia et al. 2019)
    Variant("stain-aug+ensemble3-large", augment="stain", members=3, epochs=20, per_class=500, val_per_class=60),
)}
QUICK = {"epochs": 1, "per_class": 6, "val_per_class": 3, "test_per_class": 4, "size": 32, "self_train_epochs": 1}


def _shared_only(common: ImageIndex) -> ImageIndex:
    """``common`` (on the vocabulary's top level) restricted to the five shared types, in SHARED order."""
    keep = [i for i, y in enumerate(common.labels) if common.classes[y] in SHARED]
    sub = common.subset(keep)
    sub.labels = np.asarray([SHARED.index(common.classes[y]) for y in sub.labels], dtype=int)
    sub.classes = list(SHARED)
    return sub


def site_sides(site: str, data_root=None) -> dict[str, ImageIndex]:
    """train / val / test of one site on the shared classes, from its saved split."""
    return {name: _shared_only(side) for name, side in sites.site_sides(site, data_root, coarse=True).items()}


def _arrays(index: ImageIndex, pre: Preprocess) -> np.ndarray:
    return cached_arrays(index, pre) if len(index) else np.zeros((0, pre.size, pre.size, 3), np.uint8)


#: unlabelled cells of the left-out site that ``self_train`` may pseudo-label: drawn from its train and val sides
#: without their labels (its test side is never among them)
SELF_TRAIN_POOL = 2000


def unlabelled_pool(sides: dict[str, ImageIndex], seed: int) -> list[ImageIndex]:
    """The left-out site's cells ``self_train`` may pseudo-label: up to ``SELF_TRAIN_POOL`` of its train and val
    sides (one part each), drawn at random without reading their labels."""
    parts = [sides["train"], sides["val"]]
    draw = np.random.default_rng(seed).permutation(sum(len(p) for p in parts))[:SELF_TRAIN_POOL]
    chosen = [np.sort(draw[draw < len(parts[0])]), np.sort(draw[draw >= len(parts[0])]) - len(parts[0])]
    return [part.subset(list(idx)) for part, idx in zip(parts, chosen)]


def _prior(labels: np.ndarray) -> np.ndarray:
    """The class proportions a network trained on ``labels`` assumes: the training loss weighs each class by its
    inverse frequency (``TrainConfig.imbalance`` 'weights'), so every class it saw counts the same."""
    seen = np.bincount(labels, minlength=len(SHARED)) > 0
    return seen / seen.sum()


def _stack(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([a for a, _ in parts]), np.concatenate([y for _, y in parts])


def _proba(net, arrays: np.ndarray, pre: Preprocess, temperature: float, adabn: bool, tta: bool = False
           ) -> np.ndarray:
    """Calibrated probabilities of one site's cells (batch norm first adapted to them with ``adabn``; with
    ``tta``, each cell's logits averaged over its 8 flips and quarter turns)."""
    from leukodx.training.adaptation import adapt_batchnorm
    from leukodx.training.calibration import softmax
    from leukodx.training.trainer import predict_logits

    model = adapt_batchnorm(net, arrays, pre) if adabn else net
    return softmax(predict_logits(model, arrays, pre, views=TTA_VIEWS if tta else 1), temperature)


class LogitMean(torch.nn.Module):
    """Networks whose logits are averaged: a deep ensemble as one network (batch-norm adaptation and
    ``predict_logits`` treat it as any other)."""

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def _ensemble(results: list, x_va: np.ndarray, y_va: np.ndarray, pre: Preprocess):
    """The fit result of ``results``' networks averaged: their ``LogitMean``, one temperature fitted on its
    validation logits."""
    from leukodx.training.calibration import fit_temperature
    from leukodx.training.trainer import predict_logits

    net = LogitMean([r.net for r in results]).eval()
    val_logits = predict_logits(net, x_va, pre)
    return replace(results[0], net=net, temperature=fit_temperature(val_logits, y_va), val_logits=val_logits,
                   history=[], head_refit=None)


def _few_shot(net, x: np.ndarray, y: np.ndarray, config, workdir: Path):
    """``few_shot_fit`` of ``net``; an ensemble's members each tuned the same way (the result's network is their
    ``LogitMean``, the rest the first member's fit)."""
    from leukodx.training.adaptation import few_shot_fit

    if not isinstance(net, LogitMean):
        return few_shot_fit(net, x, y, len(SHARED), config, workdir)
    tuned = [_few_shot(m, x, y, config, workdir / f"member-{i}") for i, m in enumerate(net.members)]
    return replace(tuned[0], net=LogitMean([t.net for t in tuned]))


def _reweighted(proba: np.ndarray, train_prior: np.ndarray) -> np.ndarray:
    """``proba`` re-weighted to the site's own class proportions (``reestimate_prior``, no labels used)."""
    from leukodx.training.adaptation import reestimate_prior

    return reestimate_prior(proba, train_prior)[0]


def _scores(net, arrays: np.ndarray, labels: np.ndarray, pre: Preprocess, temperature: float, adabn: bool,
            n_boot: int, tta: bool = False) -> dict:
    return _metrics(labels, _proba(net, arrays, pre, temperature, adabn, tta), n_boot)


def _metrics(labels: np.ndarray, proba: np.ndarray, n_boot: int) -> dict:
    m = classification_metrics(labels, proba, list(SHARED), n_boot=n_boot, auroc_boot=min(200, n_boot))
    return {key: m[key] for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "ece", "n",
                                    "confusion_matrix")}


def run_loso(variant: Variant, sites: tuple[str, ...] = SITES, data_root=None, n_boot: int = 1000,
             log=print, adapt_k: tuple[int, ...] = (), reliability: bool = False) -> dict:
    """Every fold of the protocol for one variant: per left-out site, its scores and the in-site ones.

    With ``adapt_k``, each fold's model is also fine-tuned on k labelled cells per class of the left-out
    site (its train side; ``leukodx adapt``'s recipe) and scored on that site's test side: the few-shot
    learning curve, k = 0 being the fold's model as trained. Which k cells a lab labels moves the result by
    more than the bootstrap CI over test cells shows, so each k is run on ``FEW_SHOT_DRAWS`` draws of them.

    With ``reliability``, each fold's model also gets its OOD and conformal statistics (fitted on the
    fold's training and validation cells, as ``leukodx train`` does) and is scored on how well they
    tell the left-out site from the in-site test cells (``evaluation.reliability``).
    """
    from leukodx.training.adaptation import adapt_batchnorm, select_zoom
    from leukodx.training.trainer import TrainConfig, fit

    if len(sites) < 2:
        raise InvalidInputError("leave-one-site-out needs at least two sites")
    if variant.members < 1 or (variant.members > 1 and (variant.site_batches or reliability or variant.self_train)):
        raise InvalidInputError(f"{variant.name}: an ensemble ({variant.members} members) is run without site "
                                "batches, reliability statistics or self-training")
    pre = variant.preprocess()
    started = time.perf_counter()
    sides = {s: site_sides(s, data_root) for s in sites}

    pres = dict.fromkeys(sites, pre)  # a left-out site's own zoom under scale_match and scale_select

    def take(site: str, side: str, cap: int, draw: int = 0) -> tuple[np.ndarray, np.ndarray]:
        sub = limit_per_class(sides[site][side], cap, variant.seed + draw)
        return _arrays(sub, pres[site]), sub.labels

    folds = {}
    for held in sites:
        t0 = time.perf_counter()
        train_sites = [s for s in sites if s != held]
        train_parts = [take(s, "train", variant.per_class) for s in train_sites]
        x_tr, y_tr = _stack(train_parts)
        train_groups = np.concatenate([np.full(len(y), i) for i, (_, y) in enumerate(train_parts)])
        val_parts = [take(s, "val", variant.val_per_class) for s in train_sites]
        x_va, y_va = _stack(val_parts)
        val_groups = np.concatenate([np.full(len(y), i) for i, (_, y) in enumerate(val_parts)])
        config = TrainConfig(arch=variant.arch, epochs=variant.epochs, batch_size=64, lr=variant.lr,
                             patience=variant.epochs, seed=variant.seed, preprocess=pre,
                             augment=augment_preset(variant.augment), site_batches=variant.site_batches,
                             refit_head=variant.refit_head)
        import tempfile

        with tempfile.TemporaryDirectory() as work:
            results = [fit(x_tr, y_tr, x_va, y_va, len(SHARED), replace(config, seed=variant.seed + m),
                           Path(work) / f"member-{m}", show_progress=False, groups=train_groups,
                           val_groups=val_groups) for m in range(variant.members)]
        result = results[0] if len(results) == 1 else _ensemble(results, x_va, y_va, pre)
        if variant.scale_match:
            reference = nucleus_fractions(list(x_tr))
            unlabelled = nucleus_fractions(list(_stack([take(held, side, variant.test_per_class)
                                                        for side in ("train", "val", "test")])[0]))
            pres[held] = replace(pre, zoom=site_zoom(reference, unlabelled))
        zoom_scores = None
        if variant.scale_select:
            def proba_at(p: Preprocess) -> np.ndarray:
                unlabelled = np.concatenate([_arrays(limit_per_class(sides[held][side], variant.test_per_class,
                                                                     variant.seed), p)
                                             for side in ("train", "val", "test")])
                return _proba(result.net, unlabelled, p, result.temperature, variant.adabn)

            zoom, zoom_scores = select_zoom(proba_at, pre)
            pres[held] = replace(pre, zoom=zoom)
        # the left-out site: every side (it was never trained on), capped per class
        held_parts = [take(held, side, variant.test_per_class) for side in ("train", "val", "test")]
        x_held, y_held = _stack(held_parts)
        in_site = {s: _scores(result.net, *take(s, "test", variant.test_per_class), pre, result.temperature,
                              variant.site_batches, n_boot, variant.tta) for s in train_sites}
        unlabelled = (np.concatenate([_arrays(part, pres[held]) for part in unlabelled_pool(sides[held], variant.seed)])
                      if variant.self_train and adapt_k else None)
        curve = (_learning_curve(result, variant, pre, take, held, adapt_k, n_boot, _prior(y_tr), unlabelled)
                 if adapt_k else None)
        held_proba = _proba(result.net, x_held, pre, result.temperature, variant.adabn, variant.tta)
        # a site-batch network used without any site's own statistics: batch norm pooled over every training cell
        pooled = adapt_batchnorm(result.net, x_tr, pre) if variant.site_batches else None
        folds[held] = {
            "train_sites": train_sites, "n_train": int(len(y_tr)), "n_val": int(len(y_va)),
            "left_out": _metrics(y_held, held_proba, n_boot),
            # the same with the class proportions re-estimated on the left-out site (no labels used)
            "left_out_prior": _metrics(y_held, _reweighted(held_proba, _prior(y_tr)), n_boot),
            # the same network with test-time batch-norm adaptation on the left-out site (no labels used)
            **({} if variant.adabn or "_gn" in variant.arch else {
                "left_out_adabn": _scores(result.net, x_held, y_held, pre, result.temperature, True, n_boot,
                                          variant.tta)}),
            **({"left_out_single_view": _scores(result.net, x_held, y_held, pre, result.temperature, variant.adabn,
                                                n_boot)} if variant.tta else {}),
            **({} if pooled is None else {
                "left_out_pooled": _scores(pooled, x_held, y_held, pre, result.temperature, False, n_boot),
                "in_site_pooled": {s: _scores(pooled, *take(s, "test", variant.test_per_class), pre,
                                              result.temperature, False, n_boot) for s in train_sites}}),
            **({"head_refit": result.head_refit} if result.head_refit else {}),
            **({"member_best_epochs": [r.best_epoch for r in results]} if len(results) > 1 else {}),
            "in_site": in_site, "best_epoch": result.best_epoch, "seconds": round(time.perf_counter() - t0, 1),
            **({"learning_curve": curve} if curve else {}),
            **({"zoom": pres[held].zoom} if variant.scale_match or variant.scale_select else {}),
            **({"zoom_information": zoom_scores} if zoom_scores else {}),
            **({} if unlabelled is None else {"n_unlabelled": int(len(unlabelled))}),
            **({"reliability": _reliability(result, pre, variant.seed, (x_tr, y_tr), (x_va, y_va),
                                            (train_groups, val_groups),
                                            _stack([take(s, "test", variant.test_per_class) for s in train_sites]),
                                            {held: (x_held, y_held)})} if reliability else {}),
        }
        acc = folds[held]["left_out"]["accuracy"]
        in_text = ", ".join(f"{s} {v['accuracy']['value']:.3f}" for s, v in in_site.items())
        log(f"{variant.name}: left out {held}: accuracy {acc['value']:.3f} {acc['ci95']}; in-site {in_text}")
        pres[held] = pre
    return {"protocol": "leave-one-site-out", "variant": asdict(variant), "sites": list(sites),
            "classes": list(SHARED), "folds": folds, "seconds": round(time.perf_counter() - started, 1),
            "provenance": provenance()}


#: the OOD score's settings compared with the shipped ones on every fold (OOD AUROC only): where the style is
#: read, and how much its within-site covariance is shrunk before whitening
RELIABILITY_ABLATIONS = {
    "style at the quarter-side layer": {"style_source": LEGACY_STYLE_SOURCE},
    "style whitened without shrinkage": {"style_shrinkage": SHRINKAGE},
}


def _reliability(result, pre: Preprocess, seed: int, train: tuple, val: tuple, groups: tuple, in_site: tuple,
                 others: dict[str, tuple]) -> dict:
    from leukodx.evaluation.reliability import ood_auroc, reliability_figures
    from leukodx.models.reliability import DEFAULT_STYLE_SOURCE
    from leukodx.training.calibration import fit_network_reliability, network_outputs, softmax

    outputs: dict = {}

    def scored(x: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
        key = (id(x), source)
        if key not in outputs:
            outputs[key] = network_outputs(result.net, x, pre, style_source=source)
        return outputs[key]

    def fitted(**options):
        return fit_network_reliability(result.net, pre, result.temperature, *train, *val, seed=seed, groups=groups[0],
                                       val_groups=groups[1], **options)

    rel = fitted()

    def part(x: np.ndarray, y: np.ndarray) -> dict:
        logits, features = scored(x, DEFAULT_STYLE_SOURCE)
        return {"ood": rel.ood_scores(features), "proba": softmax(logits, result.temperature), "labels": y}

    figures = reliability_figures(rel, part(*in_site), {name: part(*xy) for name, xy in others.items()})
    figures["ablations"] = {}
    for label, options in RELIABILITY_ABLATIONS.items():
        source = options.get("style_source", DEFAULT_STYLE_SOURCE)
        alt = fitted(**options)
        in_scores = alt.ood_scores(scored(in_site[0], source)[1])
        figures["ablations"][label] = {**options, "ood_auroc": {
            name: ood_auroc(in_scores, alt.ood_scores(scored(xy[0], source)[1])) for name, xy in others.items()}}
    return figures


#: draws of the k labelled cells per k of the few-shot learning curve (the seed's draw first, then the next seeds')
FEW_SHOT_DRAWS = 3


def _learning_curve(result, variant: Variant, pre: Preprocess, take, held: str, ks: tuple[int, ...],
                    n_boot: int, train_prior: np.ndarray, unlabelled: np.ndarray | None = None,
                    draws: int = FEW_SHOT_DRAWS) -> dict:
    """Per k: the first draw's scores (as before draws were added), and every draw's accuracy with their
    mean, min and max under ``"draws"``; with ``unlabelled`` (the site's unlabelled cells), every draw's
    accuracy self-trained on them too (``self_train``)."""
    import tempfile

    from leukodx.inference.adapt import fine_tune_config
    from leukodx.training.adaptation import self_train

    x_test, y_test = take(held, "test", variant.test_per_class)
    curve = {"0": {"n_adaptation": 0, **_scores(result.net, x_test, y_test, pre, result.temperature,
                                                  variant.adabn, n_boot, variant.tta)}}
    with tempfile.TemporaryDirectory() as work:
        for k in ks:
            runs, prior_runs, self_trained = [], [], []
            for draw in range(draws):
                x_k, y_k = take(held, "train", k, draw)
                config = fine_tune_config(variant.arch, pre, len(y_k), seed=variant.seed)
                tuned = _few_shot(result.net, x_k, y_k, config, Path(work) / f"k{k}-{draw}")
                proba = _proba(tuned.net, x_test, pre, result.temperature, False, variant.tta)
                runs.append({"n_adaptation": int(len(y_k)), **_metrics(y_test, proba, n_boot)})
                # tuned from the fold's network, balanced over the classes the site has: the fold's prior
                prior_runs.append(float(np.mean(_reweighted(proba, train_prior).argmax(1) == y_test)))
                if unlabelled is not None:
                    net = self_train(result.net, x_k, y_k, unlabelled, len(SHARED), config,
                                     Path(work) / f"self-k{k}-{draw}", first=tuned,
                                     epochs=variant.self_train_epochs).net
                    self_trained.append(float(np.mean(_proba(net, x_test, pre, result.temperature, False,
                                                             variant.tta).argmax(1)
                                                      == y_test)))
            accuracy = [r["accuracy"]["value"] for r in runs]
            curve[str(k)] = {**runs[0], "draws": {
                "seeds": [variant.seed + draw for draw in range(draws)], "accuracy": accuracy,
                "mean": float(np.mean(accuracy)), "min": float(np.min(accuracy)), "max": float(np.max(accuracy))},
                # every draw's accuracy with the test cells' class proportions re-estimated (no labels used)
                "prior_accuracy": prior_runs,
                # every draw's accuracy self-trained on the site's unlabelled cells
                **({"self_trained_accuracy": self_trained} if self_trained else {})}
    return curve


def quick(variant: Variant) -> Variant:
    return replace(variant, name=f"{variant.name} (quick)", **QUICK)


def _pooled_text(result: dict, sites: list[str]) -> str:
    """A site-batch variant's left-out accuracies per site and mean in-site accuracy with pooled statistics."""
    folds = [result["folds"][s] for s in sites if s in result["folds"]]
    if not folds or any("left_out_pooled" not in f for f in folds):
        return "-"
    in_site = [v["accuracy"]["value"] for f in folds for v in f["in_site_pooled"].values()]
    return " / ".join(f"{f['left_out_pooled']['accuracy']['value']:.3f}" for f in folds) + f"; {np.mean(in_site):.3f}"


def write_table(results: list[dict], path: str | Path) -> str:
    """LOSO.md: one row per variant, left-out accuracy [95% CI] per site, and the mean in-site accuracy."""
    if not results:
        raise InvalidInputError("no leave-one-site-out results to tabulate")
    sites = results[0]["sites"]
    lines = ["# Leave-one-site-out", "",
             "Each column: trained on the other sites, tested on this one (the five shared leukocyte types, "
             "accuracy [95% bootstrap CI], n images). In-site: mean test accuracy on the training sites' own "
             "test splits in the same folds. Written by `leukodx benchmark --protocol loso`.", "",
             "| variant | budget | " + " | ".join(f"left out: {s}" for s in sites)
             + " | worst left-out | mean in-site | worst left-out, test-time AdaBN"
             " | worst left-out, class proportions re-estimated | site-batch network without site statistics: "
             "left-out per site; mean in-site |",
             "|---|---|" + "---|" * (len(sites) + 5)]
    for r in results:
        cells, worst, in_site = [], 1.0, []
        for s in sites:
            fold = r["folds"].get(s)
            if not fold:
                cells.append("-")
                continue
            a = fold["left_out"]["accuracy"]
            worst = min(worst, a["value"])
            cells.append(f"{a['value']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] (n={fold['left_out']['n']})")
            in_site += [v["accuracy"]["value"] for v in fold["in_site"].values()]
        adabn = [f["left_out_adabn"]["accuracy"]["value"] for f in r["folds"].values() if "left_out_adabn" in f]
        adabn_text = f"{min(adabn):.3f}" if len(adabn) == len(r["folds"]) else "-"
        prior = [f["left_out_prior"]["accuracy"]["value"] for f in r["folds"].values() if "left_out_prior" in f]
        prior_text = f"{min(prior):.3f}" if len(prior) == len(r["folds"]) else "-"
        pooled_text = _pooled_text(r, sites)
        v = r["variant"]
        budget = f"{v['epochs']} ep, {v['per_class']}/class/site, {v['size']} px"
        lines.append(f"| {v['name']} | {budget} | " + " | ".join(cells)
                     + f" | {worst:.3f} | {np.mean(in_site):.3f} | {adabn_text} | {prior_text}"
                     + f" | {pooled_text} |")
    curves = [r for r in results if any("learning_curve" in f for f in r["folds"].values())]
    for r in curves:
        ks = list(next(f for f in r["folds"].values() if "learning_curve" in f)["learning_curve"])
        lines += ["", f"## Few-shot adaptation, {r['variant']['name']}: k labelled cells per class of the left-out site",
                  "", "Fine-tuned from the fold's model (`leukodx adapt`'s recipe) on k cells per class of the "
                  "left-out site's train side, scored on its test side; k = 0 is the fold's model. Where several "
                  "draws of the k cells were run: the first draw's accuracy [95% CI], then the mean and the range "
                  "over the draws.", "",
                  "| k per class | " + " | ".join(f"left out: {s}" for s in sites) + " |", "|---|" + "---|" * len(sites)]
        for k in ks:
            cells = []
            for s in sites:
                c = r["folds"].get(s, {}).get("learning_curve", {}).get(k)
                d = None if c is None else c.get("draws")
                spread = "" if d is None else (f"; {len(d['accuracy'])} draws: mean {d['mean']:.3f}, "
                                               f"{d['min']:.3f}-{d['max']:.3f}")
                if c is not None and "prior_accuracy" in c:
                    spread += f"; proportions re-estimated: mean {np.mean(c['prior_accuracy']):.3f}"
                if c is not None and "self_trained_accuracy" in c:
                    spread += f"; self-trained on unlabelled cells: mean {np.mean(c['self_trained_accuracy']):.3f}"
                cells.append("-" if c is None else f"{c['accuracy']['value']:.3f} [{c['accuracy']['ci95'][0]:.3f}, "
                             f"{c['accuracy']['ci95'][1]:.3f}] (n={c['n']}, {c['n_adaptation']} tuned on{spread})")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    v = results[0]["variant"]
    lines += ["", f"Every fold trains from scratch (seed {v['seed']}); left-out sites are capped at "
                  f"{v['test_per_class']} images per class per split side. AdaBN column: the same networks with "
                  "batch-norm statistics re-estimated on the left-out site's unlabelled images. Class proportions "
                  "re-estimated: each cell's probabilities re-weighted to the left-out site's own class "
                  "proportions, estimated by EM on its unlabelled cells (Saerens et al. 2002); in the few-shot "
                  "tables, the mean over the draws. Self-trained: each draw's fit tuned again on its k cells and "
                  f"the left-out site's unlabelled cells it calls most confidently (of up to {SELF_TRAIN_POOL} "
                  "cells of the site's train and val sides, labels unread). Site-batch networks (site-bn: one site "
                  "per training batch) are scored with each test site's own batch-norm statistics; the last column "
                  "scores the same network with statistics pooled over every training cell, as it runs where a site "
                  "has none."]
    text = "\n".join(lines) + "\n"
    _atomic.write_text(path, text)
    return text


def run_suite(names: list[str] | None, out_dir: str | Path, quick_run: bool = False, data_root=None,
              force: bool = False, log=print, adapt_k: tuple[int, ...] = ()) -> tuple[list[dict], Path]:
    """Run (or reuse) every named variant; one JSON per variant in ``out_dir`` and LOSO.md beside it.

    A variant's result is reused only when its configuration and the code (``source_digest``) match.
    """
    from leukodx._versions import source_digest

    out_dir = Path(out_dir)
    names = names or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise InvalidInputError(f"--variant {unknown[0]!r}: expected one of {', '.join(VARIANTS)}")
    results = []
    for name in names:
        variant = quick(VARIANTS[name]) if quick_run else VARIANTS[name]
        path = out_dir / f"{name}{'__quick' if quick_run else ''}{'__adapt' if adapt_k else ''}.json"
        key = {"variant": asdict(variant), "code": source_digest(), "adapt_k": list(adapt_k)}
        if path.exists() and not force:
            previous = json.loads(path.read_text())
            if previous.get("cache_key") == key:
                log(f"{name}: done before with this code, reusing {path}")
                results.append(previous)
                continue
        result = run_loso(variant, data_root=data_root, n_boot=200 if quick_run else 1000, log=log, adapt_k=adapt_k)
        result["cache_key"] = key
        _atomic.write_json(path, result)
        results.append(result)
    return results, rewrite_table(out_dir, quick_run, results)


def rewrite_table(out_dir: str | Path, quick_run: bool = False, latest: list[dict] = ()) -> Path:
    """LOSO.md (or LOSO-quick.md) beside ``out_dir``, from every result file in it and ``latest``."""
    out_dir = Path(out_dir)
    found = _every_result(out_dir, quick_run, list(latest))
    if not found:
        raise InvalidInputError(f"{out_dir}: no leave-one-site-out result files")
    table = out_dir.parent / ("LOSO-quick.md" if quick_run else "LOSO.md")
    write_table(found, table)
    return table


def _every_result(out_dir: Path, quick_run: bool, latest: list[dict]) -> list[dict]:
    """Every variant's latest result file in ``out_dir`` (the one with a learning curve when both
    exist), in VARIANTS order, so the table shows every variant ever run, not only this call's."""
    found: dict[str, dict] = {}
    for path in sorted(out_dir.glob("*.json")):
        if ("__quick" in path.stem) != quick_run:
            continue
        result = json.loads(path.read_text())
        name = result["variant"]["name"].removesuffix(" (quick)")
        if name not in found or "__adapt" in path.stem:
            found[name] = result
    for result in latest:
        name = result["variant"]["name"].removesuffix(" (quick)")
        if name not in found or not any("learning_curve" in f for f in found[name]["folds"].values()):
            found[name] = result
    return [found[n] for n in VARIANTS if n in found]
