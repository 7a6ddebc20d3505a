"""Cell detector for smear fields: torchvision Faster R-CNN on a timm backbone with an FPN.

The detector sees fields at a fixed magnification, so a cell keeps the pixel size it had in
training (BCCD's 640 x 480 fields): a field up to ~4 Mpx goes through in one pass at that scale,
a larger one is cut into overlapping 640 x 480 tiles (``leukodx.smear.tiling``). ``input_scale``
shrinks the input before the network (0.5 halves compute; platelets stay ~20 px).

Weights are a safetensors file and a JSON card, like every leukodx model; no pickle is read.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from leukodx.models.bundle import interpreting, load_network, save_bundle
from leukodx.smear.tiling import DEFAULT_OVERLAP, iter_tile_batches, merge_tile_detections

DETECTION_CLASSES = ("RBC", "WBC", "Platelets")
#: fields up to this size (about 2,000 x 2,000 px) are detected in one pass; larger ones are tiled
WHOLE_FIELD_PIXELS = 4_200_000


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild the network; stored in the card."""

    backbone: str = "resnet18"           # any timm model with ``features_only`` support
    fpn_channels: int = 64
    classes: tuple[str, ...] = DETECTION_CLASSES
    tile: tuple[int, int] = (480, 640)    # (height, width) of one field at the training magnification
    input_scale: float = 0.5              # tile is resized by this before the network
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)  # in network pixels (after input_scale)
    max_detections: int = 300             # per tile: crowded fields hold far more than BCCD's ~30 cells
    score_threshold: float = 0.05         # kept for AP; the pipeline applies its own per-class thresholds

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("classes", "tile", "anchor_sizes"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def as_dict(self) -> dict:
        return asdict(self)


class TimmFPN(nn.Module):
    """A timm feature extractor (strides 4-32) with a torchvision feature pyramid on top."""

    def __init__(self, name: str, channels: int):
        super().__init__()
        import timm
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4), pretrained=False)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def build_detector(config: DetectorConfig) -> nn.Module:
    """A Faster R-CNN sized for CPU: small box head, fewer proposals, fixed input size."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    backbone = TimmFPN(config.backbone, config.fpn_channels)
    levels = len(config.anchor_sizes)
    anchors = AnchorGenerator(tuple((s,) for s in config.anchor_sizes), ((0.5, 1.0, 2.0),) * levels)
    side = int(round(min(config.tile) * config.input_scale))
    long_side = int(round(max(config.tile) * config.input_scale))
    return FasterRCNN(
        backbone, num_classes=None, min_size=side, max_size=long_side,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],
        rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(config.fpn_channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, len(config.classes) + 1),
        rpn_batch_size_per_image=128, box_batch_size_per_image=128,
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=config.max_detections * 2,
        box_detections_per_img=config.max_detections, box_score_thresh=config.score_threshold,
    )


def tile_tensor(tile_rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1], the form torchvision detectors take."""
    return torch.from_numpy(np.array(tile_rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)


@dataclass
class CellDetector:
    """A loaded detector: ``detect_tiles`` runs the network on full-size tiles."""

    net: nn.Module
    config: DetectorConfig
    card: dict = field(default_factory=dict)
    #: per-field OOD statistics of the backbone's deepest features (``leukodx.models.reliability``)
    reliability: object = None
    #: where the network runs ('cpu' or 'cuda'; ``load_detector(device=...)``)
    device: str = "cpu"

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    @property
    def name(self) -> str:
        return self.card.get("name", "detector")

    def detect_tiles(self, tiles: list[np.ndarray]) -> list[dict]:
        """Boxes (N, 4) xyxy in tile pixels, labels (N,) class indices, scores (N,) per tile, and
        ``features``: the backbone's deepest map averaged over the tile (for the OOD check; free,
        taken from the same pass)."""
        if not tiles:
            return []
        self.net.eval()
        seen: list[torch.Tensor] = []
        hook = self.net.backbone.body.register_forward_hook(lambda m, i, o: seen.append(o[-1].mean(dim=(2, 3))))
        try:
            with torch.inference_mode():
                out = self.net([tile_tensor(t).to(self.device) for t in tiles])
        finally:
            hook.remove()
        pooled = seen[-1].cpu().numpy().astype(np.float64)
        out = [{k: v.cpu() for k, v in o.items()} for o in out]
        return [{"boxes": o["boxes"].numpy().astype(np.float32), "labels": (o["labels"].numpy() - 1).astype(int),
                 "scores": o["scores"].numpy().astype(np.float32), "features": f} for o, f in zip(out, pooled)]

    def field_ood(self, detections: dict) -> tuple[float | None, bool | None]:
        """(OOD score, flagged) of a field from its detections' features; (None, None) without statistics."""
        if self.reliability is None or detections.get("features") is None:
            return None, None
        score = float(self.reliability.ood_scores(np.asarray(detections["features"])[None])[0])
        return score, bool(score > self.reliability.threshold)

    def detect(self, rgb: np.ndarray, overlap: int = DEFAULT_OVERLAP, batch: int = 4) -> dict:
        """Every cell in a field of any size: boxes in field pixels, class indices, scores.

        A field up to ``WHOLE_FIELD_PIXELS`` goes through the network in one pass at the training
        magnification (no padding, no seams); a larger one is cut into overlapping tiles.
        """
        h, w = rgb.shape[:2]
        if h * w <= WHOLE_FIELD_PIXELS:
            return self._detect_whole(rgb)
        origins, per_tile = [], []
        for chunk, tiles in iter_tile_batches(rgb, self.config.tile, overlap, batch):
            origins.extend(chunk)
            per_tile.extend(self.detect_tiles(tiles))
        merged = merge_tile_detections(per_tile, origins, rgb.shape[:2], self.config.tile)
        return {**merged, "features": np.mean([t["features"] for t in per_tile], axis=0)}

    def _detect_whole(self, rgb: np.ndarray) -> dict:
        transform = self.net.transform
        saved = transform.min_size, transform.max_size
        h, w = rgb.shape[:2]
        # the transform rescales every image to min_size; setting it from this field keeps the scale fixed
        transform.min_size = (max(1, int(round(min(h, w) * self.config.input_scale))),)
        transform.max_size = max(1, int(round(max(h, w) * self.config.input_scale)))
        try:
            return self.detect_tiles([rgb])[0]
        finally:
            transform.min_size, transform.max_size = saved


def save_detector(directory: str | os.PathLike, net: nn.Module, config: DetectorConfig, card: dict) -> dict:
    """Weights + card, written atomically; the card gains the config, sha256 and size."""
    return save_bundle(directory, net, {**card, "task": "detection", "detector": config.as_dict(),
                                        "classes": list(config.classes)})


def load_detector(name_or_path: str | os.PathLike = "bccd-frcnn", device: str = "auto") -> CellDetector:
    """A bundled detector by name or a folder; the weights' sha256 is checked against the card.
    ``device``: auto (a CUDA GPU when present) | cpu | cuda (``leukodx.models.device``)."""
    from leukodx.models.device import resolve_device
    from leukodx.models.reliability import load_reliability

    where = resolve_device(device)
    net, card, directory = load_network(name_or_path, "detection",
                                        lambda card: build_detector(DetectorConfig.from_dict(card["detector"])))
    with interpreting(directory):
        return CellDetector(net.to(where), DetectorConfig.from_dict(card["detector"]), card,
                            load_reliability(directory, card), device=where)


def fit_detector_reliability(detector: CellDetector, train_fields: list[np.ndarray], val_fields: list[np.ndarray],
                             fitted_on: dict | None = None):
    """Per-field OOD statistics: mean and covariance of the training fields' pooled backbone
    features, threshold at the validation fields' 95th percentile (few fields: shrunk covariance)."""
    from leukodx.models.reliability import fit_unlabelled

    train = np.stack([detector.detect(f)["features"] for f in train_fields])
    val = np.stack([detector.detect(f)["features"] for f in val_fields])
    return fit_unlabelled(train, val, {"train_fields": len(train), "val_fields": len(val), **(fitted_on or {})})


def refit_detector_reliability(name_or_path: str | os.PathLike = "bccd-frcnn", data_root=None,
                               fitted_on: dict | None = None) -> dict:
    """``leukodx reliability fit DETECTOR`` (and the end of ``train-detector``): statistics from the
    train / val fields its card lists, written into its bundle."""
    from leukodx._versions import provenance
    from leukodx.data.registry import load_dataset, load_fields
    from leukodx.errors import InvalidInputError
    from leukodx.models.bundle import resolve_bundle
    from leukodx.models.reliability import attach_reliability

    detector = load_detector(name_or_path)
    directory = resolve_bundle(name_or_path, "detection")
    data = detector.card.get("data", {})
    index = load_dataset(data.get("dataset", "bccd"), data_root)
    ids = {str(r.get("id", i)): i for i, r in enumerate(index.records)}
    missing = [t for t in data.get("train_ids", []) + data.get("val_ids", []) if t not in ids]
    if missing or not data.get("train_ids"):
        raise InvalidInputError(f"{directory}: its card's training fields are not all in {index.name} "
                                f"(e.g. {missing[0] if missing else 'no train_ids'})")
    train, _ = load_fields(index, [ids[t] for t in data["train_ids"]])
    val, _ = load_fields(index, [ids[t] for t in data["val_ids"]])
    rel = fit_detector_reliability(detector, train, val,
                                   fitted_on or {"refit": "weights unchanged", "provenance": provenance()})
    return attach_reliability(directory, detector.card, rel)
