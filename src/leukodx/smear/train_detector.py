"""Training the cell detector from scratch on a detection dataset's train split, selecting the
epoch on val by mean AP@0.5, and choosing per-class score thresholds for counting on val.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from leukodx._hashing import sha256_json
from leukodx.data.registry import load_fields
from leukodx.errors import InvalidInputError
from leukodx.models.card import build_card
from leukodx.preprocessing.augment import Augment, augment_batch
from leukodx.smear.detector import CellDetector, DetectorConfig
from leukodx.smear.detector_net import build_detector, tile_tensor
from leukodx.smear.metrics import coco_average_precision, count_errors
from leukodx.training.engine import Engine


@dataclass(frozen=True)
class DetectorTraining:
    epochs: int = 40
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    eval_every: int = 2
    seed: int = 0
    max_images: int | None = None  # cap on train/val images (CI trains tiny detectors)
    augment: str = "scale-stain"   # a key of DETECTOR_AUGMENTS


#: "flip": flips and mild brightness / contrast (one lab, one magnification: the first bccd-frcnn);
#: "scale-stain": also magnification (a field resized by a log-uniform factor, mosaics of four
#: fields when shrunk, so a shrunken field is never padded with blank glass) and another lab's
#: staining (the cell classifier's "stain" colour jitter: stain densities, hue, grey images)
DETECTOR_AUGMENTS = {
    "flip": {"scale": (1.0, 1.0), "colour": None},
    "scale-stain": {"scale": (0.55, 1.8), "colour": Augment(flip=False, rotate=0.0, translate=0.0, scale=(1.0, 1.0),
                                                             color=0.2, stain=0.1, hue=0.04, grayscale=0.1)},
}
#: a box cut by a crop is kept when at least this share of it is still in the field
MIN_VISIBLE = 0.4


def _flip(rgb: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal and vertical flips: smear fields have no preferred orientation."""
    h, w = rgb.shape[:2]
    boxes = boxes.copy()
    if rng.random() < 0.5:
        rgb = rgb[:, ::-1]
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        rgb = rgb[::-1]
        boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    return np.ascontiguousarray(rgb), boxes


def _resize(rgb: np.ndarray, boxes: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = rgb.shape[:2]
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    out = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    return out, boxes * np.array([size[0] / w, size[1] / h, size[0] / w, size[1] / h], dtype=np.float32)


def rescaled_field(images: list[np.ndarray], targets: list[dict], i: int, factor: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Field ``i`` as if seen at ``factor`` times its magnification, cut back to its own size.

    Enlarged: a random crop. Shrunk: a 2 x 2 mosaic of field ``i`` and three random others, all
    shrunk, then cropped, so every pixel is real smear and every cell on it is labelled. Boxes are
    clipped to the crop; those with less than ``MIN_VISIBLE`` of their area left are dropped.
    Returns (rgb, boxes, labels).
    """
    h, w = images[i].shape[:2]
    picks = [i] if factor >= 1.0 else [i, *rng.choice(len(images), size=3)]
    parts = [_flip(images[j], targets[j]["boxes"].astype(np.float32), rng) for j in picks]
    parts = [_resize(rgb, boxes, factor) for rgb, boxes in parts]
    labels = [targets[j]["labels"] for j in picks]
    if factor >= 1.0:
        canvas, boxes, labels = parts[0][0], parts[0][1], labels[0]
    else:
        sh, sw = parts[0][0].shape[:2]
        canvas = np.zeros((2 * sh, 2 * sw, 3), dtype=np.uint8)
        placed = []
        for k, (rgb, b) in enumerate(parts):
            oy, ox = (k // 2) * sh, (k % 2) * sw
            canvas[oy:oy + rgb.shape[0], ox:ox + rgb.shape[1]] = rgb[:sh, :sw]
            placed.append(b + np.array([ox, oy, ox, oy], dtype=np.float32))
        boxes, labels = np.concatenate(placed), np.concatenate(labels)
    ch, cw = canvas.shape[:2]
    if ch < h or cw < w:  # rounding left the canvas a pixel short: stretch it
        canvas, boxes = _resize(canvas, boxes, max(h / ch, w / cw))
        ch, cw = canvas.shape[:2]
    y0, x0 = int(rng.integers(0, ch - h + 1)), int(rng.integers(0, cw - w + 1))
    crop = canvas[y0:y0 + h, x0:x0 + w]
    shifted = boxes - np.array([x0, y0, x0, y0], dtype=np.float32)
    clipped = np.clip(shifted, 0, [w, h, w, h]).astype(np.float32)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    keep = (area(clipped) >= MIN_VISIBLE * np.maximum(area(shifted), 1e-6)) & (area(clipped) >= 16)
    return np.ascontiguousarray(crop), clipped[keep], labels[keep]


def augmented_field(images: list[np.ndarray], targets: list[dict], i: int, augment: str, rng: np.random.Generator,
                    generator: torch.Generator) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """One training field under ``DETECTOR_AUGMENTS[augment]``: (tensor, boxes, labels)."""
    spec = DETECTOR_AUGMENTS[augment]
    lo, hi = spec["scale"]
    factor = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else 1.0
    rgb, boxes, labels = rescaled_field(images, targets, i, factor, rng)
    x = tile_tensor(rgb)
    if spec["colour"] is None:
        x = ((x - x.mean()) * float(rng.uniform(0.85, 1.15)) + x.mean() + float(rng.uniform(-15, 15)) / 255).clamp(0, 1)
    else:
        x = augment_batch(x[None], spec["colour"], generator)[0]
    return x, boxes, labels


def _augment_record(name: str) -> dict:
    spec = DETECTOR_AUGMENTS[name]
    return {"name": name, "scale": list(spec["scale"]),
            "colour": spec["colour"].as_dict() if spec["colour"] is not None else "brightness/contrast +-15%"}


def predict_fields(detector: CellDetector, images: list[np.ndarray]) -> list[dict]:
    return [detector.detect(rgb) for rgb in images]


def choose_count_thresholds(targets: list[dict], predictions: list[dict], classes: list[str]) -> dict[str, float]:
    """Per class, the score threshold whose per-field count has the lowest MAE on these fields."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    chosen = {}
    for k, c in enumerate(classes):
        truth = [int((t["labels"] == k).sum()) for t in targets]
        maes = [count_errors(truth, [int(((p["labels"] == k) & (p["scores"] >= th)).sum()) for p in predictions])["mae"]
                for th in grid]
        chosen[c] = float(grid[int(np.argmin(maes))])
    return chosen


def train_detector(index, config: DetectorConfig, training: DetectorTraining, workdir: str | Path | None = None,
                   resume: bool = False, show_progress: bool = False) -> tuple[CellDetector, dict]:
    """Train on ``index.splits['train']``, select on ``'val'``; returns the detector and its card.

    The loop is the shared training engine: one round = one epoch, validation (mean AP@0.5) every
    ``eval_every`` epochs, checkpoints in ``workdir`` from which ``resume=True`` continues.
    """
    for split in ("train", "val"):
        if not index.splits.get(split):
            raise InvalidInputError(f"{index.name}: no {split!r} split to train a detector on")
    if training.augment not in DETECTOR_AUGMENTS:
        raise InvalidInputError(f"detector augmentation {training.augment!r}: expected one of {', '.join(DETECTOR_AUGMENTS)}")
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    colour_generator = torch.Generator().manual_seed(training.seed)
    train_ids = index.splits["train"][:training.max_images]
    val_ids = index.splits["val"][:training.max_images]
    train_images, train_targets = load_fields(index, train_ids)
    val_images, val_targets = load_fields(index, val_ids)
    if any(im.shape[:2] != config.tile for im in train_images):
        raise InvalidInputError(f"{index.name}: training fields must be {config.tile[1]}x{config.tile[0]} (the tile size)")

    net = build_detector(config)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=training.lr, weight_decay=training.weight_decay)
    steps_per_epoch = int(np.ceil(len(train_images) / training.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=training.lr, pct_start=0.15,
                                                   total_steps=max(8, training.epochs * steps_per_epoch))
    detector = CellDetector(net, config)

    def train_round(epoch: int, advance) -> dict:
        net.train()
        order = rng.permutation(len(train_images))
        losses = []
        for s in range(0, len(order), training.batch_size):
            batch = order[s:s + training.batch_size]
            xs, ys = [], []
            for i in batch:
                x, boxes, labels = augmented_field(train_images, train_targets, i, training.augment, rng,
                                                   colour_generator)
                xs.append(x)
                ys.append({"boxes": torch.from_numpy(boxes).float().reshape(-1, 4),
                           "labels": torch.from_numpy(labels + 1).long()})
            loss = sum(net(xs, ys).values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            advance(f"epoch {epoch + 1}/{training.epochs} loss {np.mean(losses):.3f}")
        return {"epoch": epoch, "train_loss": float(np.mean(losses))}

    def validate(epoch: int) -> dict:
        ap = coco_average_precision(val_targets, predict_fields(detector, val_images), list(config.classes))
        scores = [v for v in ap["ap50"].values() if v is not None]
        return {"val_ap50": ap["ap50"], "val_map50": float(np.mean(scores)) if scores else 0.0}

    engine = Engine(net=net, optimizer=optimizer, scheduler=schedule, train_round=train_round, validate=validate,
                    is_better=lambda rec, best: rec["val_map50"] > best.get("val_map50", -1.0),
                    rounds=training.epochs, steps_per_round=steps_per_epoch, eval_every=training.eval_every,
                    workdir=Path(workdir) if workdir else None, config={**training.__dict__, **config.as_dict()},
                    generators={"augment": rng, "colour": colour_generator}, show_progress=show_progress, label="train-detector")
    outcome = engine.fit(resume=resume)
    history = [{k: v for k, v in h.items() if k != "round"} for h in outcome.history]
    val_predictions = predict_fields(detector, val_images)
    thresholds = choose_count_thresholds(val_targets, val_predictions, list(config.classes))
    val_ap = coco_average_precision(val_targets, val_predictions, list(config.classes))
    card = build_card(
        "detector", "detection", list(config.classes),
        intended_use="Research use: find red cells, white cells and platelets in Wright-Giemsa smear fields brought "
                     "to BCCD's magnification (about 103 px per red cell; the pipeline measures each field's scale). "
                     "Not a medical device.",
        data={"dataset": index.name, "train": len(train_ids), "val": len(val_ids),
              "train_ids": [t["id"] for t in train_targets], "val_ids": [t["id"] for t in val_targets],
              "split_sha256": sha256_json({"train": [t["id"] for t in train_targets],
                                           "val": [t["id"] for t in val_targets]})},
        training={**training.__dict__, "augment_spec": _augment_record(training.augment), "best_epoch": outcome.best["epoch"], "history": history,
                  "seconds": round(outcome.seconds, 1), "threads": torch.get_num_threads(),
                  "pretrained": "none: trained from scratch"},
        metrics={"val": val_ap}, detector=config.as_dict(), count_thresholds=thresholds,
        limits=["Trained on one detection set (one lab, one stain, one camera). "
                + ("Magnification and stain are varied by augmentation only; " if training.augment != "flip"
                   else "Other magnifications and stains are not validated; ")
                + "see benchmarks/results/detector_shift.md for its figures on resized and restained fields."])
    detector.card = card
    return detector, card


def train_detector_bundle(output: str | Path, config: DetectorConfig, training: DetectorTraining,
                          dataset: str = "bccd", name: str | None = None, data_root=None, resume: bool = False,
                          show_progress: bool = True) -> dict:
    """``leukodx train-detector``: train, score the test split, write the bundle; returns its card."""
    from leukodx.data.registry import load_dataset
    from leukodx.smear.detector import refit_detector_reliability, save_detector
    from leukodx.smear.evaluate import evaluate_detector

    output = Path(output)
    index = load_dataset(dataset, data_root)
    if getattr(index, "records", None) is None:
        raise InvalidInputError(f"{dataset}: not a detection dataset (no boxes)")
    if tuple(index.classes) != tuple(config.classes):
        config = DetectorConfig(**{**config.as_dict(), "classes": tuple(index.classes)})
    detector, card = train_detector(index, config, training, workdir=output / "work", resume=resume,
                                    show_progress=show_progress)
    card["name"] = name or output.name
    card["metrics"]["test"] = evaluate_detector(detector, index, "test", max_images=training.max_images)
    save_detector(output, detector.net, config, card)
    return refit_detector_reliability(output, data_root, fitted_on={"at": "training"})
