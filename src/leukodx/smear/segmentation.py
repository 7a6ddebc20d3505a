"""Nucleus and cytoplasm segmentation of single white-cell images: a U-Net from
segmentation_models_pytorch (timm encoder, trained from scratch), its training, and its bundle.

Masks have three labels: 0 background, 1 cytoplasm, 2 nucleus (wbc-seg stores them as black,
grey and white). A prediction is made at ``size`` px and resized back to the input's size.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from leukodx import _atomic, stats
from leukodx._hashing import sha256_file
from leukodx.data.images import read_image
from leukodx.errors import InvalidInputError
from leukodx.models.card import build_card
from leukodx.models.bundle import interpreting, load_network, save_bundle
from leukodx.smear.metrics import dice_iou

STRUCTURES = ("background", "cytoplasm", "nucleus")
SPLIT_FILE = Path(__file__).resolve().parents[1] / "data" / "splits" / "wbc-seg-segmentation.json"
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class SegmenterConfig:
    architecture: str = "Unet"               # any segmentation_models_pytorch architecture (Unet, UnetPlusPlus, DeepLabV3Plus...)
    encoder: str = "tu-resnet10t"
    decoder_channels: tuple[int, ...] = (64, 32, 24, 16, 8)
    size: int = 128

    @classmethod
    def from_dict(cls, d: dict) -> "SegmenterConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "decoder_channels" in known:
            known["decoder_channels"] = tuple(known["decoder_channels"])
        return cls(**known)


def _smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise InvalidInputError("segmentation needs segmentation-models-pytorch: pip install 'leukodx[smear]'") from None
    return smp


def build_segmenter(config: SegmenterConfig) -> nn.Module:
    smp = _smp()

    kwargs = dict(encoder_name=config.encoder, encoder_weights=None, in_channels=3, classes=len(STRUCTURES))
    if config.architecture in ("Unet", "UnetPlusPlus"):
        kwargs["decoder_channels"] = config.decoder_channels
    try:
        cls = getattr(smp, config.architecture)
    except AttributeError:
        raise InvalidInputError(f"segmentation architecture {config.architecture!r}: not in segmentation_models_pytorch") from None
    return cls(**kwargs)


def to_input(rgb: np.ndarray, size: int) -> np.ndarray:
    im = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    x = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (x - np.asarray(MEAN, np.float32)[:, None, None]) / np.asarray(STD, np.float32)[:, None, None]


def mask_labels(mask_image: np.ndarray) -> np.ndarray:
    """wbc-seg's grey-level mask -> 0 background, 1 cytoplasm, 2 nucleus."""
    m = mask_image if mask_image.ndim == 2 else mask_image[..., 0]
    return np.digitize(m, [64, 192]).astype(np.int64)


@dataclass
class Segmenter:
    net: nn.Module
    config: SegmenterConfig
    card: dict = field(default_factory=dict)
    #: per-image OOD statistics of the encoder's deepest features (``leukodx.models.reliability``)
    reliability: object = None
    #: where the network runs ('cpu' or 'cuda'; ``load_segmenter(device=...)``)
    device: str = "cpu"

    @property
    def name(self) -> str:
        return self.card.get("name", "segmenter")

    def predict(self, images: list[np.ndarray], batch: int = 16) -> list[np.ndarray]:
        """One (H, W) label mask per RGB image, at the image's own size."""
        return self.predict_with_features(images, batch)[0]

    def predict_with_features(self, images: list[np.ndarray], batch: int = 16) -> tuple[list[np.ndarray], np.ndarray]:
        """Masks, and each image's encoder features (the deepest map averaged; taken from the same pass)."""
        out, features = [], []
        self.net.eval()
        seen: list[torch.Tensor] = []
        hook = self.net.encoder.register_forward_hook(lambda m, i, o: seen.append(o[-1].mean(dim=(2, 3))))
        try:
            for s in range(0, len(images), batch):
                chunk = images[s:s + batch]
                x = torch.from_numpy(np.stack([to_input(im, self.config.size) for im in chunk])).to(self.device)
                with torch.inference_mode():
                    logits = self.net(x).cpu()
                features.append(seen[-1].cpu().numpy().astype(np.float64))
                for im, lg in zip(chunk, logits):
                    out.append(_upsampled_labels(lg, im.shape[:2]))
        finally:
            hook.remove()
        return out, (np.concatenate(features) if features else np.zeros((0, 0)))


#: masks are interpolated from the logits up to this side; beyond it the label map is enlarged by
#: nearest neighbour (the network saw ``size`` px: no detail is lost, and a 10,000^2 image does not
#: need 3 x 4 bytes of logits per pixel)
UPSAMPLE_CAP = 1024


def _upsampled_labels(logits: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    scale = min(1.0, UPSAMPLE_CAP / max(h, w))
    inner = (max(1, round(h * scale)), max(1, round(w * scale)))
    up = torch.nn.functional.interpolate(logits[None], size=inner, mode="bilinear", align_corners=False)
    labels = up[0].argmax(0).numpy().astype(np.uint8)
    if inner != (h, w):
        labels = np.asarray(Image.fromarray(labels).resize((w, h), Image.Resampling.NEAREST))
    return labels


def _mask_png(labels: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.array([0, 128, 255], dtype=np.uint8)[labels]).save(buf, format="PNG")
    return buf.getvalue()


# --- data --------------------------------------------------------------------------------------

def wbc_seg_items(dataset: str, data_root=None) -> list[dict]:
    """Every image of a wbc-seg set with its mask path: ``{"id", "image", "mask"}``."""
    from leukodx.data.registry import load_dataset

    index = load_dataset(dataset, data_root)
    masks = getattr(index, "meta", {}).get("masks")
    if not masks:
        raise InvalidInputError(f"{dataset}: has no masks to segment")
    return [{"id": p, "image": index.root / p, "mask": index.root / m} for p, m in zip(index.paths, masks)]


def segmentation_split(items: list[dict], seed: int = 0, path: Path = SPLIT_FILE) -> dict[str, list[str]]:
    """The saved 70/15/15 split of one set's image ids (made once per set, then always read)."""
    ids = sorted(item["id"] for item in items)
    saved = json.loads(path.read_text()) if path.exists() else {}
    group = ids[0].split("/")[0]
    if group in saved:
        split = saved[group]
        if sorted(sum(split.values(), [])) != ids:
            raise InvalidInputError(f"{path}: the saved split of {group} no longer matches its images; "
                                    "the dataset changed")
        return split
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_val = n_test = int(round(0.15 * len(ids)))
    split = {"train": sorted(order[n_val + n_test:]), "val": sorted(order[:n_val]), "test": sorted(order[n_val:n_val + n_test])}
    saved[group] = split
    _atomic.write_json(path, saved)
    return split


def load_pairs(items: list[dict]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    for item in items:
        images.append(read_image(item["image"]))
        labels.append(mask_labels(np.asarray(Image.open(item["mask"]))))
    return images, labels


# --- training ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmenterTraining:
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    eval_every: int = 50
    seed: int = 0


def _augment_batch(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, 90-degree turns, and per-image colour changes (the two sets differ mostly in colour)."""
    k = int(rng.integers(4))
    x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (1, 2))
    if rng.random() < 0.5:
        x, y = x.flip(3), y.flip(2)
    n = x.shape[0]
    gain = torch.from_numpy(rng.uniform(0.75, 1.25, (n, 3, 1, 1)).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(-0.5, 0.5, (n, 3, 1, 1)).astype(np.float32))
    contrast = torch.from_numpy(rng.uniform(0.7, 1.3, (n, 1, 1, 1)).astype(np.float32))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast * gain + mean + shift, y


def _resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST), dtype=np.int64)


def score_masks(truth: list[np.ndarray], predicted: list[np.ndarray], bootstrap: int = 0, seed: int = 0) -> dict:
    """Mean Dice and IoU per structure (nucleus, cytoplasm, whole cell) over images, optional CIs."""
    per = {"nucleus": [], "cytoplasm": [], "cell": []}
    for t, p in zip(truth, predicted):
        per["nucleus"].append(dice_iou(t == 2, p == 2))
        per["cytoplasm"].append(dice_iou(t == 1, p == 1))
        per["cell"].append(dice_iou(t > 0, p > 0))
    result = {"n_images": len(truth)}
    for name, pairs in per.items():
        d = np.array([v[0] for v in pairs])
        j = np.array([v[1] for v in pairs])
        entry = {"dice": float(d.mean()) if d.size else None, "iou": float(j.mean()) if j.size else None}
        if bootstrap and d.size:
            entry["dice_estimate"] = stats.bootstrap_estimate(lambda idx: d[idx].mean(), d.size, bootstrap, seed)
        result[name] = entry
    return result


def train_segmenter(train_items: list[dict], val_items: list[dict], config: SegmenterConfig = SegmenterConfig(),
                    training: SegmenterTraining = SegmenterTraining(), workdir: str | os.PathLike | None = None,
                    resume: bool = False, show_progress: bool = False) -> tuple[Segmenter, dict]:
    """Train from scratch on ``train_items``; keep the step with the best val nucleus Dice.

    The loop is the shared training engine: one round = ``eval_every`` steps, then validation;
    checkpoints in ``workdir`` from which ``resume=True`` continues.
    """
    smp = _smp()
    from leukodx.training.engine import Engine

    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    images, labels = load_pairs(train_items)
    val_images, val_labels = load_pairs(val_items)
    x_all = torch.from_numpy(np.stack([to_input(im, config.size) for im in images]))
    y_all = torch.from_numpy(np.stack([_resize_labels(lb, config.size) for lb in labels]))
    net = build_segmenter(config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=training.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=training.lr, total_steps=max(8, training.steps),
                                                   pct_start=0.15)
    dice_loss = smp.losses.DiceLoss("multiclass")
    seg = Segmenter(net, config)
    rounds = -(-training.steps // training.eval_every)

    def train_round(r: int, advance) -> dict:
        losses = []
        last = min(training.steps, (r + 1) * training.eval_every)
        for _ in range(r * training.eval_every, last):
            net.train()
            pick = rng.integers(0, len(x_all), min(training.batch_size, len(x_all)))
            x, y = _augment_batch(x_all[pick], y_all[pick], rng)
            logits = net(x)
            loss = nn.functional.cross_entropy(logits, y) + dice_loss(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            advance(f"step {last}/{training.steps} loss {np.mean(losses):.3f}")
        return {"step": last, "train_loss": float(np.mean(losses))}

    def validate(r: int) -> dict:
        scores = score_masks(val_labels, seg.predict(val_images))
        return {"val_nucleus_dice": scores["nucleus"]["dice"], "val_cytoplasm_dice": scores["cytoplasm"]["dice"]}

    engine = Engine(net=net, optimizer=optimizer, scheduler=schedule, train_round=train_round, validate=validate,
                    is_better=lambda rec, best: rec["val_nucleus_dice"] > best.get("val_nucleus_dice", -1.0),
                    rounds=rounds, steps_per_round=training.eval_every,
                    workdir=Path(workdir) if workdir else None, config={**asdict(training), **asdict(config)},
                    generators={"batches": rng}, show_progress=show_progress, label="train-segmenter")
    outcome = engine.fit(resume=resume)
    history = [{k: v for k, v in h.items() if k != "round"} for h in outcome.history]
    card = build_card(
        "segmenter", "segmentation", list(STRUCTURES), structures=list(STRUCTURES), segmenter=asdict(config),
        intended_use="Research use: nucleus / cytoplasm masks of one white cell centred in an image. "
                     "Not a medical device.",
        data={"train": [i["id"] for i in train_items], "val": [i["id"] for i in val_items],
              "split_file": str(SPLIT_FILE.relative_to(SPLIT_FILE.parents[3])) if SPLIT_FILE.exists() else None,
              "split_sha256": sha256_file(SPLIT_FILE) if SPLIT_FILE.exists() else None},
        training={**asdict(training), "best_step": outcome.best["step"], "history": history,
                  "seconds": round(outcome.seconds, 1), "pretrained": "none: trained from scratch"},
        metrics={"val": score_masks(val_labels, seg.predict(val_images))},
        limits=["Masks are for one white cell centred in the image; other scanners and stains are not validated."])
    seg.card = card
    return seg, card


# --- bundles -----------------------------------------------------------------------------------

def save_segmenter(directory: str | os.PathLike, seg: Segmenter, card: dict) -> dict:
    return save_bundle(directory, seg.net, {**card, "task": "segmentation", "segmenter": asdict(seg.config)})


def load_segmenter(name_or_path: str | os.PathLike = "wbc-seg-unet", device: str = "auto") -> Segmenter:
    """A bundled segmenter by name or a folder; the weights' sha256 is checked against the card.
    ``device``: auto (a CUDA GPU when present) | cpu | cuda (``leukodx.models.device``)."""
    from leukodx.models.device import resolve_device
    from leukodx.models.reliability import load_reliability

    where = resolve_device(device)
    net, card, directory = load_network(name_or_path, "segmentation",
                                        lambda card: build_segmenter(SegmenterConfig.from_dict(card["segmenter"])))
    with interpreting(directory):
        return Segmenter(net.to(where), SegmenterConfig.from_dict(card["segmenter"]), card,
                         load_reliability(directory, card), device=where)


def refit_segmenter_reliability(name_or_path: str | os.PathLike = "wbc-seg-unet", data_root=None,
                                fitted_on: dict | None = None) -> dict:
    """Per-image OOD statistics of a segmenter from the saved train / val splits of the sets its card
    names (``leukodx reliability fit``, and the end of ``train-segmenter``), written into its bundle."""
    from leukodx._versions import provenance
    from leukodx.models.bundle import resolve_bundle
    from leukodx.models.reliability import attach_reliability, fit_unlabelled

    seg = load_segmenter(name_or_path)
    directory = resolve_bundle(name_or_path, "segmentation")
    datasets = seg.card.get("data", {}).get("datasets") or []
    if not datasets:
        raise InvalidInputError(f"{directory}: its card names no training sets to refit from")
    parts = [split_items(ds, data_root) for ds in datasets]
    train, _ = load_pairs([it for p in parts for it in p["train"]])
    val, _ = load_pairs([it for p in parts for it in p["val"]])
    f_train, f_val = seg.predict_with_features(train)[1], seg.predict_with_features(val)[1]
    rel = fit_unlabelled(f_train, f_val, {"train_images": len(train), "val_images": len(val),
                                          **(fitted_on or {"refit": "weights unchanged", "provenance": provenance()})})
    return attach_reliability(directory, seg.card, rel)


# --- evaluation and batch use --------------------------------------------------------------------

def split_items(dataset: str, data_root=None) -> dict[str, list[dict]]:
    """The saved split of one wbc-seg set as item lists (``all`` holds every image)."""
    items = wbc_seg_items(dataset, data_root)
    split = segmentation_split(items)
    by_id = {item["id"]: item for item in items}
    return {**{name: [by_id[i] for i in ids] for name, ids in split.items()}, "all": items}


def evaluate_segmenter(seg: Segmenter, dataset: str, split: str = "test", data_root=None,
                       max_images: int | None = None, bootstrap: int = 0) -> dict:
    """Dice / IoU per structure on one split of one wbc-seg set."""
    parts = split_items(dataset, data_root)
    if split not in parts:
        raise InvalidInputError(f"{dataset}: no split {split!r} (known: {', '.join(parts)})")
    images, labels = load_pairs(parts[split][:max_images])
    result = score_masks(labels, seg.predict(images), bootstrap)
    trained_on = seg.card.get("data", {}).get("datasets", [])
    return {"dataset": dataset, "split": split, "model": seg.name, "model_sha256": seg.card.get("sha256"),
            "trained_on": trained_on, "within_dataset": dataset in trained_on, **result}


AREA_COLUMNS = ["input", "mask", "nucleus_px", "cytoplasm_px", "nucleus_to_cell", "ood_score", "ood"]


def segment_files(inputs, out_dir: str | os.PathLike, seg: Segmenter) -> tuple[int, list[dict], dict]:
    """Masks (PNG, wbc-seg's grey levels, at each image's own size) and nucleus / cytoplasm areas
    (areas.csv: each image's mask file, areas, OOD score and flag) for every readable image; returns
    (count, errors, the batch's shift verdict).

    Inputs sharing a stem (good.jpg, good.bmp) get distinct masks (good.mask.png, good-2.mask.png).
    An image is decoded at no more than a few times the network's input size (a 10,000^2 scan costs
    megabytes, not gigabytes); areas are counted on the reduced mask and scaled to the full image.
    If interrupted, areas.csv holds the images finished so far."""
    from leukodx._batch import run_batch
    from leukodx._csv import csv_text_dicts
    from leukodx.data.images import collect_images, image_size
    from leukodx.errors import Interrupted
    from leukodx.models.reliability import shift_verdict

    out_dir = Path(out_dir)
    paths, errors = collect_images(inputs)
    names = _atomic.OutputNames(reserved=("areas",))

    def one(path) -> dict:
        width, height = image_size(path)
        rgb = read_image(path, max_side=4 * seg.config.size)
        masks, features = seg.predict_with_features([rgb])
        small = masks[0]
        score = float(seg.reliability.ood_scores(features)[0]) if seg.reliability is not None else None
        area_scale = (width * height) / small.size
        nucleus = int(round((small == 2).sum() * area_scale))
        cytoplasm = int(round((small == 1).sum() * area_scale))
        labels = small if small.shape == (height, width) else \
            np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST))
        mask_name = f"{names.stem_for(path)}.mask.png"
        _atomic.write_bytes(out_dir / mask_name, _mask_png(labels))
        return {"input": str(path), "mask": mask_name, "nucleus_px": nucleus, "cytoplasm_px": cytoplasm,
                "nucleus_to_cell": round(nucleus / max(1, nucleus + cytoplasm), 4),
                "ood_score": "" if score is None else round(score, 3),
                "ood": "" if score is None else int(score > seg.reliability.threshold)}

    def write_areas(rows: list[dict]) -> None:
        if rows:
            _atomic.write_text(out_dir / "areas.csv", csv_text_dicts(AREA_COLUMNS, rows))

    try:
        rows, failed = run_batch(paths, one, "images", key="input")
    except Interrupted as stop:
        write_areas(stop.partial[0])
        stop.written_to = str(out_dir)
        raise
    errors += failed
    write_areas(rows)
    if seg.reliability is None:
        shift = {"flagged": None, "score": None, "reason": "OOD check unavailable: the segmenter's bundle has no "
                                                          "reliability statistics (leukodx reliability fit)"}
    else:
        shift = shift_verdict(sum(r["ood"] for r in rows), len(rows), seg.reliability.false_alarm, unit="images",
                              advice="Check the masks by eye before using the areas.",
                              scores=[float(r["ood_score"]) for r in rows], reference=seg.reliability.reference)
    return len(rows), errors, shift


def train_segmenter_bundle(output: str | os.PathLike, datasets: list[str], config: SegmenterConfig,
                           training: SegmenterTraining, name: str | None = None, max_images: int | None = None,
                           data_root=None, resume: bool = False, show_progress: bool = True) -> dict:
    """``leukodx train-segmenter``: train on the pooled saved train splits, score both sets' test
    splits, write the bundle; returns its card."""
    output = Path(output)
    train_items, val_items = [], []
    for ds in datasets:
        parts = split_items(ds, data_root)
        train_items += parts["train"][:max_images]
        val_items += parts["val"][:max_images]
    seg, card = train_segmenter(train_items, val_items, config, training, workdir=output / "work", resume=resume,
                                show_progress=show_progress)
    card["name"] = name or output.name
    card["data"]["datasets"] = list(datasets)
    card["metrics"]["test"] = {ds: evaluate_segmenter(seg, ds, "test", data_root, max_images=max_images)
                               for ds in ("wbc-seg-1", "wbc-seg-2")}
    save_segmenter(output, seg, card)
    return refit_segmenter_reliability(output, data_root, fitted_on={"at": "training"})
