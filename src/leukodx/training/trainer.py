"""The fit loop for image classifiers.

AdamW with a one-cycle learning rate, label smoothing, class-imbalance handling, early stopping
on validation macro-F1, mixed precision on a GPU, seeded batches and augmentation, a checkpoint
after every epoch from which ``resume=True`` continues.

``site_batches`` (multi-site training): every batch is drawn from one site, so each batch-norm
layer normalizes a site by that site's own statistics during training, as test-time adaptation
(AdaBN, ``training.adaptation``) does for a new lab: the network learns features that hold once
each site is normalized by itself (domain-specific batch normalization; Chang et al. 2019, CVPR).
Validation then adapts the batch norm to each validation site's images before scoring them.

``refit_head`` (classifier re-training, Kang et al. 2020, ICLR "Decoupling representation and
classifier"): once the best round is chosen, the last linear layer is replaced by an L2 multinomial
logistic regression on the frozen network's features of the training images, before the temperature is
fitted: ``"clean"``, the images as they are, without the augmentation the network learned under;
``"clean+augmented"``, those and one augmented copy of each. The stain, scale and flip augmentation that
makes the features hold up in another lab leaves a head fitted to augmented cells; on clean cells of the
training sites a re-fitted head separates look-alike classes (immature granulocytes and basophils at
``pbc``) better, and under leave-one-site-out it cost the left-out sites (``benchmarks/results/LOSO.md``).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from leukodx.errors import InvalidInputError
from leukodx.evaluation.metrics import _from_confusion, confusion
from leukodx.models.architectures import create_network
from leukodx.preprocessing.augment import Augment, augment_batch
from leukodx.preprocessing.transforms import Preprocess, dihedral_view
from leukodx.training.engine import Engine
from leukodx.training.calibration import fit_temperature

IMBALANCE_MODES = ("weights", "sampler", "none")
#: what the last layer is re-fitted on after training (``refit_head``): nothing, the training images as they are,
#: or those and one augmented copy of each
REFIT_HEAD_MODES = ("none", "clean", "clean+augmented")


@dataclass
class TrainConfig:
    arch: str = "regnetx_002"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 4e-3  # one-cycle peak
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    imbalance: str = "weights"
    patience: int = 6  # epochs without val macro-F1 gain before stopping
    seed: int = 0
    pretrained: str | None = None  # local .safetensors file
    site_batches: bool = False  # every batch from one site; validation adapted per site (needs groups)
    #: batch-norm layers keep their running statistics while the weights learn (few-shot fine-tuning after
    #: AdaBN: a batch of a dozen cells would otherwise overwrite the target site's statistics)
    freeze_batchnorm: bool = False
    #: the last linear layer re-fitted on the training images' features (``REFIT_HEAD_MODES``, ``refit_head``)
    refit_head: str = "none"
    preprocess: Preprocess = field(default_factory=Preprocess)
    augment: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        if self.imbalance not in IMBALANCE_MODES:
            raise InvalidInputError(f"imbalance {self.imbalance!r}: expected one of {IMBALANCE_MODES}")
        if self.refit_head not in REFIT_HEAD_MODES:
            raise InvalidInputError(f"refit head {self.refit_head!r}: expected one of {', '.join(REFIT_HEAD_MODES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise InvalidInputError("epochs and batch size must be at least 1")
        if self.site_batches and self.imbalance == "sampler":
            raise InvalidInputError("site batches and the class-balanced sampler cannot be combined: use "
                                    "imbalance 'weights'")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.as_dict()
        d["augment"] = self.augment.as_dict()
        return d


@dataclass
class FitResult:
    net: torch.nn.Module
    temperature: float
    history: list[dict]
    best_epoch: int
    seconds: float
    val_logits: np.ndarray
    #: what ``refit_head`` did (None: the head is the one trained)
    head_refit: dict | None = None


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_input(batch_uint8: np.ndarray | torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float in [0, 1] (normalization comes after augmenting)."""
    x = torch.as_tensor(batch_uint8)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def predict_logits(net: torch.nn.Module, arrays: np.ndarray, pre: Preprocess, batch_size: int = 256,
                   views: int = 1) -> np.ndarray:
    """Logits of uint8 arrays (N, S, S, 3); ``views`` > 1: averaged over each image's first ``views``
    flips and quarter turns (``dihedral_view``; ``Classifier.with_tta`` for a bundle)."""
    if views > 1:
        return np.mean([predict_logits(net, dihedral_view(arrays, i), pre, batch_size) for i in range(views)],
                       axis=0, dtype=np.float64).astype(np.float32)
    net.eval()
    dev = next(net.parameters()).device
    out = []
    for start in range(0, len(arrays), batch_size):
        x = normalize(to_input(arrays[start:start + batch_size], pre), pre).to(dev)
        out.append(net(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()
def penultimate_features(net: torch.nn.Module, arrays: np.ndarray, pre: Preprocess, batch_size: int = 256,
                         augment: Augment | None = None, generator: torch.Generator | None = None) -> np.ndarray:
    """Each image's input to the network's last linear layer, (N, D) float32 (with ``augment``, of an
    augmented copy of each image, drawn from ``generator``): the first part of the reliability features
    (``models.features.WithFeatures``, as ``calibration.network_outputs`` reads them, here on augmented
    copies too)."""
    from leukodx.models.features import WithFeatures

    wrapped = WithFeatures(net.eval())
    dev = next(net.parameters()).device
    width = wrapped.head.in_features
    seen = []
    for start in range(0, len(arrays), batch_size):
        x = to_input(arrays[start:start + batch_size], pre)
        features = wrapped(normalize(x if augment is None else augment_batch(x, augment, generator), pre).to(dev))[1]
        seen.append(features[:, :width].float().cpu().numpy())
    return np.concatenate(seen) if seen else np.zeros((0, width), dtype=np.float32)


#: inverse L2 strength of the re-fitted head, on standardized features
HEAD_REFIT_C = 1.0


def refit_head(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, n_classes: int, pre: Preprocess,
               groups: np.ndarray | None = None, augment: Augment | None = None, seed: int = 0) -> dict:
    """Replace ``net``'s last linear layer, in place, by an L2 multinomial logistic regression
    (scikit-learn, ``HEAD_REFIT_C``, standardized features folded back into the layer) on its features
    of ``x`` as they are (and, with ``augment``, of one augmented copy of each, seeded), and return what
    changed. With ``groups`` (site batches) each site's features come from the network with batch norm
    adapted to that site, as validation reads them. A class without training images keeps a zero row and
    a bias below every other class's."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from leukodx.models.features import last_linear
    from leukodx.training.adaptation import adapt_batchnorm

    generator = torch.Generator().manual_seed(seed)
    views = [None] if augment is None else [None, augment]
    groups = np.zeros(len(x), dtype=int) if groups is None else np.asarray(groups)
    sites = np.unique(groups)
    feats = np.zeros((len(views) * len(x), last_linear(net).in_features), dtype=np.float32)
    for g in sites:
        mine = np.flatnonzero(groups == g)
        reader = net if len(sites) == 1 else adapt_batchnorm(net, x[mine], pre)
        for v, view in enumerate(views):
            feats[v * len(x) + mine] = penultimate_features(reader, x[mine], pre, augment=view, generator=generator)
    y = np.tile(y, len(views))
    head = last_linear(net)
    if head.bias is None:
        raise InvalidInputError(f"refit_head: {type(net).__name__}'s last linear layer has no bias")
    trained = feats @ head.weight.detach().cpu().numpy().T + head.bias.detach().cpu().numpy()
    before = float(np.mean(trained.argmax(1) == y))
    scaler = StandardScaler().fit(feats)
    present = np.unique(y)
    if len(present) < 2:
        raise InvalidInputError("refit_head: the training images hold fewer than two classes")
    model = LogisticRegression(C=HEAD_REFIT_C, max_iter=2000).fit(scaler.transform(feats), y)
    coef, intercept = model.coef_, model.intercept_
    if len(present) == 2:  # scikit-learn keeps one row for two classes: the two classes' rows are its halves
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((n_classes, feats.shape[1]))
    bias = np.full(n_classes, float(intercept.min()) - 10.0)
    weight[present] = coef / scaler.scale_
    bias[present] = intercept - (coef / scaler.scale_) @ scaler.mean_
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    after = float(np.mean((feats @ weight.T + bias).argmax(1) == y))
    return {"method": "L2 multinomial logistic regression on standardized features, folded into the layer",
            "C": HEAD_REFIT_C, "images": int(len(x)), "views": "clean" if augment is None else "clean+augmented",
            "features": int(feats.shape[1]),
            "train_accuracy_trained_head": round(before, 4), "train_accuracy_refitted_head": round(after, 4)}


def _class_weights(y: np.ndarray, k: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=k).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (k * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def _n_site_batches(n: int, batch_size: int) -> int:
    """One-site batches from a site of ``n`` images: its last partial batch is dropped unless it is its only one."""
    return max(1, n // batch_size)


def _site_batches(groups: np.ndarray, batch_size: int) -> tuple[list[torch.Tensor], int]:
    """Each site's training indices, and how many one-site batches an epoch has."""
    sites = [torch.from_numpy(np.flatnonzero(groups == g)) for g in np.unique(groups)]
    return sites, sum(_n_site_batches(len(ix), batch_size) for ix in sites)


def _one_site_order(sites: list[torch.Tensor], batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """An epoch of one-site batches, in random order."""
    batches = []
    for ix in sites:
        ix = ix[torch.randperm(len(ix), generator=gen)]
        batches += [ix[k * batch_size:(k + 1) * batch_size] for k in range(_n_site_batches(len(ix), batch_size))]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def predict_logits_per_site(net: torch.nn.Module, arrays: np.ndarray, groups: np.ndarray, pre: Preprocess
                            ) -> np.ndarray:
    """``predict_logits`` with the batch norm adapted to each site's images first (AdaBN), in input order."""
    from leukodx.training.adaptation import adapt_batchnorm

    out = None
    for g in np.unique(groups):
        mine = np.flatnonzero(groups == g)
        logits = predict_logits(adapt_batchnorm(net, arrays[mine], pre), arrays[mine], pre)
        out = np.zeros((len(arrays), logits.shape[1]), dtype=logits.dtype) if out is None else out
        out[mine] = logits
    return out


def fit(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int,
        config: TrainConfig, workdir: str | Path | None, resume: bool = False, show_progress: bool = True,
        on_epoch_end: Callable[[dict], None] | None = None, groups: np.ndarray | None = None,
        val_groups: np.ndarray | None = None) -> FitResult:
    """Train on uint8 arrays (N, S, S, 3); returns the best-on-validation network, calibrated.

    The loop is the shared :class:`~leukodx.training.engine.Engine`; ``on_epoch_end`` receives each
    epoch's record after its checkpoint is written (``workdir`` None: no checkpoint, the best weights kept in
    memory, nothing to resume). ``groups`` / ``val_groups``: the site of each training / validation image,
    needed by ``config.site_batches``.
    """
    if len(x_train) == 0 or len(x_val) == 0:
        raise InvalidInputError("training and validation sets must both be non-empty")
    if config.site_batches and (groups is None or val_groups is None
                                or len(groups) != len(x_train) or len(val_groups) != len(x_val)):
        raise InvalidInputError("site batches need the site of every training and validation image")
    workdir = None if workdir is None else Path(workdir)
    dev = device()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    net = create_network(config.arch, n_classes, pretrained=config.pretrained or False).to(dev)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, len(x_train) // config.batch_size)
    if config.site_batches:
        site_index, steps = _site_batches(np.asarray(groups), config.batch_size)
    # OneCycleLR divides by zero when its warm-up phase is under one step (tiny smoke runs)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=max(8, config.epochs * steps),
                                                    pct_start=0.25)
    weights = _class_weights(y_train, n_classes).to(dev) if config.imbalance == "weights" else None
    sample_p = None
    if config.imbalance == "sampler":
        w = _class_weights(y_train, n_classes).numpy()[y_train]
        sample_p = torch.tensor(w / w.sum())
    use_amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    x_train_t = torch.from_numpy(np.ascontiguousarray(x_train))
    y_train_t = torch.from_numpy(y_train.astype(np.int64))

    def train_round(epoch: int, advance) -> dict:
        net.train()
        if config.freeze_batchnorm:
            for m in net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if config.site_batches:
            batches = _one_site_order(site_index, config.batch_size, gen)
        else:
            order = (torch.multinomial(sample_p, steps * config.batch_size, replacement=True, generator=gen)
                     if sample_p is not None else torch.randperm(len(x_train), generator=gen))
            batches = [order[s * config.batch_size:(s + 1) * config.batch_size] for s in range(steps)]
        total_loss = 0.0
        for s, idx in enumerate(batches):
            x = augment_batch(to_input(x_train_t[idx], config.preprocess), config.augment, gen)
            x = normalize(x, config.preprocess).to(dev)
            y = y_train_t[idx].to(dev)
            autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with autocast:
                loss = F.cross_entropy(net(x), y, weight=weights, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += float(loss.detach())
            advance(f"epoch {epoch + 1}/{config.epochs} loss {total_loss / (s + 1):.3f}")
        return {"epoch": epoch, "train_loss": total_loss / steps}

    def val_outputs() -> np.ndarray:
        if config.site_batches:
            return predict_logits_per_site(net, x_val, np.asarray(val_groups), config.preprocess)
        return predict_logits(net, x_val, config.preprocess)

    def validate(epoch: int) -> dict:
        val_logits = val_outputs()
        val_loss = float(F.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(y_val.astype(np.int64))))
        m = _from_confusion(confusion(y_val, val_logits.argmax(1), n_classes))
        return {"val_loss": val_loss, "val_accuracy": float(m["accuracy"]), "val_macro_f1": float(m["macro_f1"])}

    def is_better(record: dict, best: dict) -> bool:
        top = best.get("val_macro_f1", -1.0)
        return record["val_macro_f1"] > top or (record["val_macro_f1"] == top
                                                and record["val_loss"] < best.get("val_loss", float("inf")))

    class _EpochEnd:
        def on_round_end(self, engine, record):
            if on_epoch_end is not None:
                on_epoch_end(record)

    engine = Engine(net=net, optimizer=optimizer, scheduler=scheduler, train_round=train_round, validate=validate,
                    is_better=is_better, rounds=config.epochs, steps_per_round=steps, patience=config.patience,
                    workdir=workdir, config=config.as_dict(), generators={"batches": gen},
                    callbacks=[_EpochEnd()], show_progress=show_progress, label="train")
    outcome = engine.fit(resume=resume)
    history = [{k: v for k, v in h.items() if k != "round"} for h in outcome.history]
    val_logits, head_refit = val_outputs(), None
    if config.refit_head != "none":
        head_refit = refit_head(net, x_train, y_train, n_classes, config.preprocess,
                                np.asarray(groups) if config.site_batches else None,
                                config.augment if config.refit_head == "clean+augmented" else None, config.seed)
        head_refit["val_accuracy_trained_head"] = round(float(np.mean(val_logits.argmax(1) == y_val)), 4)
        val_logits = val_outputs()
        head_refit["val_accuracy_refitted_head"] = round(float(np.mean(val_logits.argmax(1) == y_val)), 4)
    temperature = fit_temperature(val_logits, y_val)
    return FitResult(net=net.cpu(), temperature=temperature, history=history, best_epoch=outcome.best["round"],
                     seconds=outcome.seconds, val_logits=val_logits, head_refit=head_refit)
