"""The detector's PyTorch network: a torchvision Faster R-CNN on a timm backbone with an FPN, and
its ONNX export (the form ``leukodx.smear.detector`` runs on a CPU without importing PyTorch).

Only this module imports PyTorch, torchvision and timm for the detector: importing torchvision's
detection ops costs about as much as PyTorch itself, so a run served by the ONNX export skips both.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from leukodx.smear.detector import DetectorConfig


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


def field_sizes(h, w, input_scale: float) -> tuple[int, int]:
    """(min_size, max_size) the network's transform is given for an (h, w) field: the field keeps its
    magnification (scaled by ``input_scale`` only), whatever its size."""
    return int(round(min(h, w) * input_scale)), int(round(max(h, w) * input_scale))


def detect_torch(net: nn.Module, config: DetectorConfig, tiles: list[np.ndarray], device: str) -> list[dict]:
    """The network's detections of whole ``tiles`` (each at its own size, its scale fixed by
    ``field_sizes``; tiles of one size go through together) and the backbone's deepest map averaged
    over each tile (the OOD features, from the same pass)."""
    transform = net.transform
    saved = transform.min_size, transform.max_size
    out: list[dict | None] = [None] * len(tiles)
    by_shape: dict[tuple, list[int]] = {}
    for i, tile in enumerate(tiles):
        by_shape.setdefault(tile.shape[:2], []).append(i)
    try:
        for shape, members in by_shape.items():
            transform.min_size, transform.max_size = _sizes(shape, config.input_scale)
            seen: list[torch.Tensor] = []
            hook = net.backbone.body.register_forward_hook(lambda m, i, o: seen.append(o[-1].mean(dim=(2, 3))))
            try:
                with torch.inference_mode():
                    found = net([tile_tensor(tiles[i]).to(device) for i in members])
            finally:
                hook.remove()
            pooled = seen[-1].cpu().numpy().astype(np.float64)
            for k, (i, d) in enumerate(zip(members, found)):
                out[i] = {"boxes": d["boxes"].cpu().numpy().astype(np.float32),
                          "labels": (d["labels"].cpu().numpy() - 1).astype(int),
                          "scores": d["scores"].cpu().numpy().astype(np.float32), "features": pooled[k]}
    finally:
        transform.min_size, transform.max_size = saved
    return out


def _sizes(shape, input_scale: float) -> tuple[tuple[int], int]:
    lo, hi = field_sizes(shape[0], shape[1], input_scale)
    return (max(1, lo),), max(1, hi)


class _FieldScaleResize(nn.Module):
    """The transform's resize as the ONNX graph computes it from the field's own shape: min_size and
    max_size from ``field_sizes`` (round half to even, as Python's ``round``), the scale and the output
    size in float64, as PyTorch computes them for the eager network."""

    def __init__(self, input_scale: float):
        super().__init__()
        self.input_scale = input_scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (3, H, W) normalized
        # float64 throughout, as PyTorch computes the eager size: the exporter casts 0-d tensors and
        # Min / Max to float32, whose product can floor one pixel off, so the arithmetic runs on the
        # (h, w) vector with Where
        hw = torch._shape_as_tensor(image)[-2:].to(torch.float64)
        wh = hw.flip(0)
        lo, hi = torch.where(hw < wh, hw, wh), torch.where(hw < wh, wh, hw)  # (lo, lo), (hi, hi)
        one = torch.ones_like(hw)
        small, large = torch.round(lo * self.input_scale), torch.round(hi * self.input_scale)
        a = torch.where(small < one, one, small) / lo
        b = torch.where(large < one, one, large) / hi
        size = torch.floor(hw * torch.where(a < b, a, b)).to(torch.int64)
        return nn.functional.interpolate(image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False)[0]


class ExportableDetector(nn.Module):
    """One field (3, H, W) in [0, 1] -> boxes (N, 4) in field pixels, labels (N,) (1-based), scores
    (N,) and the OOD features (C,): the eager network's steps, with its resize taken from the field's
    shape inside the graph (``_FieldScaleResize``)."""

    def __init__(self, net: nn.Module, config: DetectorConfig):
        super().__init__()
        self.net = net
        self.resize = _FieldScaleResize(config.input_scale)

    def forward(self, image: torch.Tensor):
        from torchvision.models.detection.image_list import ImageList

        t = self.net.transform
        mean = torch.tensor(t.image_mean, dtype=image.dtype)[:, None, None]
        std = torch.tensor(t.image_std, dtype=image.dtype)[:, None, None]
        resized = self.resize((image - mean) / std)
        original = torch._shape_as_tensor(image)[-2:]
        sized = torch._shape_as_tensor(resized)[-2:]
        batch = t.batch_images([resized], size_divisible=t.size_divisible)
        images = ImageList(batch, [(sized[0], sized[1])])
        body = self.net.backbone.body(images.tensors)
        features = self.net.backbone.fpn(OrderedDict((str(i), f) for i, f in enumerate(body)))
        proposals, _ = self.net.rpn(images, features)
        detections, _ = self.net.roi_heads(features, proposals, images.image_sizes)
        detections = t.postprocess(detections, images.image_sizes, [(original[0], original[1])])
        d = detections[0]
        return d["boxes"], d["labels"], d["scores"], body[-1].mean(dim=(2, 3))[0]


def export_detector(net: nn.Module, config: DetectorConfig, path, opset: int = 17) -> None:
    """Export the detector for ONNX Runtime (any field size) to ``path``."""
    import warnings

    wrapper = ExportableDetector(net.cpu().eval(), config).eval()
    example = torch.rand(3, *config.tile)
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript; torchvision's
        # detection models carry their own tracing support for it
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(path), input_names=["image"],
                          output_names=["boxes", "labels", "scores", "features"],
                          dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "labels": {0: "n"},
                                        "scores": {0: "n"}}, opset_version=opset, dynamo=False)
