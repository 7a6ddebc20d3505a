"""Training the cell detector from scratch on a detection dataset's train split, selecting the
epoch on val by mean AP@0.5, and choosing per-class score thresholds for counting on val.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from leukodx._hashing import sha256_json
from leukodx.data.images import read_image
from leukodx.errors import InvalidInputError
from leukodx.models.card import build_card
from leukodx.smear.detector import CellDetector, DetectorConfig, build_detector, tile_tensor
from leukodx.smear.metrics import coco_average_precision, count_errors


@dataclass(frozen=True)
class DetectorTraining:
    epochs: int = 40
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    eval_every: int = 2
    seed: int = 0
    max_images: int | None = None  # cap on train/val images (CI trains tiny detectors)


def load_fields(index, ids: list[int]) -> tuple[list[np.ndarray], list[dict]]:
    """Images and their valid boxes (degenerate boxes, e.g. zero width, are dropped)."""
    images, targets = [], []
    for i in ids:
        rec = index.records[i]
        rgb = read_image(index.root / rec["path"])
        boxes = np.asarray(rec["boxes"], dtype=np.float32).reshape(-1, 4)
        valid = (boxes[:, 2] > boxes[:, 0] + 1) & (boxes[:, 3] > boxes[:, 1] + 1)
        images.append(rgb)
        targets.append({"boxes": boxes[valid], "labels": np.asarray(rec["labels"])[valid].astype(int),
                        "id": rec.get("id", str(i))})
    return images, targets


def _augment(rgb: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flips and mild brightness/contrast change: smear fields have no preferred orientation."""
    h, w = rgb.shape[:2]
    boxes = boxes.copy()
    if rng.random() < 0.5:
        rgb = rgb[:, ::-1]
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        rgb = rgb[::-1]
        boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    x = rgb.astype(np.float32)
    x = (x - x.mean()) * rng.uniform(0.85, 1.15) + x.mean() + rng.uniform(-15, 15)
    return np.clip(x, 0, 255).astype(np.uint8), boxes


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


def train_detector(index, config: DetectorConfig, training: DetectorTraining, log=print) -> tuple[CellDetector, dict]:
    """Train on ``index.splits['train']``, select on ``'val'``; returns the detector and its card."""
    for split in ("train", "val"):
        if not index.splits.get(split):
            raise InvalidInputError(f"{index.name}: no {split!r} split to train a detector on")
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
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
    best = {"map50": -1.0, "epoch": -1, "state": None}
    history = []
    started = time.perf_counter()
    for epoch in range(training.epochs):
        net.train()
        order = rng.permutation(len(train_images))
        losses = []
        for s in range(0, len(order), training.batch_size):
            batch = order[s:s + training.batch_size]
            xs, ys = [], []
            for i in batch:
                rgb, boxes = _augment(train_images[i], train_targets[i]["boxes"], rng)
                xs.append(tile_tensor(rgb))
                ys.append({"boxes": torch.from_numpy(boxes).float(),
                           "labels": torch.from_numpy(train_targets[i]["labels"] + 1).long()})
            loss = sum(net(xs, ys).values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "seconds": round(time.perf_counter() - started, 1)}
        if (epoch + 1) % training.eval_every == 0 or epoch == training.epochs - 1:
            ap = coco_average_precision(val_targets, predict_fields(detector, val_images), list(config.classes))
            scores = [v for v in ap["ap50"].values() if v is not None]
            row["val_ap50"] = ap["ap50"]
            row["val_map50"] = float(np.mean(scores)) if scores else 0.0
            if row["val_map50"] > best["map50"]:
                best = {"map50": row["val_map50"], "epoch": epoch,
                        "state": {k: v.detach().clone() for k, v in net.state_dict().items()}}
        history.append(row)
        log(f"epoch {epoch}: loss {row['train_loss']:.3f}" + (f", val mAP@0.5 {row['val_map50']:.3f}" if "val_map50" in row else ""))
    net.load_state_dict(best["state"])
    net.eval()
    val_predictions = predict_fields(detector, val_images)
    thresholds = choose_count_thresholds(val_targets, val_predictions, list(config.classes))
    val_ap = coco_average_precision(val_targets, val_predictions, list(config.classes))
    card = build_card(
        "detector", "detection", list(config.classes),
        intended_use="Research use: find red cells, white cells and platelets in Wright-Giemsa smear fields at "
                     "BCCD's magnification (about 640x480 px per field). Not a medical device.",
        data={"dataset": index.name, "train": len(train_ids), "val": len(val_ids),
              "train_ids": [t["id"] for t in train_targets], "val_ids": [t["id"] for t in val_targets],
              "split_sha256": sha256_json({"train": [t["id"] for t in train_targets],
                                           "val": [t["id"] for t in val_targets]})},
        training={**training.__dict__, "best_epoch": best["epoch"], "history": history,
                  "seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads(),
                  "pretrained": "none: trained from scratch"},
        metrics={"val": val_ap}, detector=config.as_dict(), count_thresholds=thresholds,
        limits=["Trained on one detection set (one lab, one magnification); other magnifications and stains are not validated."])
    detector.card = card
    return detector, card
