"""Explanations on demand: Grad-CAM heatmaps (Selvaraju et al. 2017) for any image classifier.

The heatmap of a class is the ReLU of the last spatial feature map weighted by the class logit's
mean gradient over it. The layer is found, not named: the last module (without children) whose
output is still at least ``MIN_MAP_SIDE`` cells a side (at leukodx's small inputs the final map is
2 x 2), so every architecture of the zoo is explained the same way.
Heatmaps must depend on the learnt weights: ``tests/inference/test_explain.py`` runs the
model-randomization sanity check (Adebayo et al. 2018) on the shipped model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from leukodx.preprocessing.transforms import dihedral_view, normalize_batch, undo_dihedral_view


#: the explained map has at least this many cells a side (small inputs end in 2 x 2 maps: too coarse)
MIN_MAP_SIDE = 7


def _last_spatial_output(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the last leaf module's output at least ``MIN_MAP_SIDE`` cells a side) of one forward pass."""
    seen: list[torch.Tensor] = []
    side = min(MIN_MAP_SIDE, min(x.shape[-2:]) // 8)

    def keep(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[2:]) >= max(2, side):
            seen.append(output)

    hooks = [m.register_forward_hook(keep) for m in net.modules() if not list(m.children())]
    try:
        logits = net(x)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ValueError(f"{type(net).__name__}: no spatial feature map to explain")
    return logits, seen[-1]


def gradcam(net: torch.nn.Module, batch_uint8: np.ndarray, preprocess, targets: np.ndarray | None = None,
            batch_size: int = 32, views: int = 1) -> np.ndarray:
    """(N, S, S) heatmaps in [0, 1] for preprocessed uint8 arrays; ``targets`` are class positions
    (default: each input's top class). ``views`` > 1 (a call averaged over the image's flips and quarter
    turns, ``Classifier.with_tta``): the heatmap of each of the first ``views`` dihedral views, turned back
    to the image's orientation, averaged, and scaled to a peak of 1 again."""
    if views <= 1:
        return _gradcam(net, batch_uint8, preprocess, targets, batch_size)
    maps = [undo_dihedral_view(_gradcam(net, dihedral_view(batch_uint8, i), preprocess, targets, batch_size), i)
            for i in range(views)]
    mean = np.mean(maps, axis=0)
    return (mean / np.maximum(mean.reshape(len(mean), -1).max(1), 1e-12)[:, None, None]).astype(np.float32)


def _gradcam(net: torch.nn.Module, batch_uint8: np.ndarray, preprocess, targets: np.ndarray | None,
             batch_size: int) -> np.ndarray:
    """``gradcam`` of the images as they are."""
    net = net.eval()
    out = []
    for s in range(0, len(batch_uint8), batch_size):
        x = torch.from_numpy(normalize_batch(batch_uint8[s:s + batch_size], preprocess)).requires_grad_(False)
        with torch.enable_grad():
            logits, fmap = _last_spatial_output(net, x)
            pick = logits.argmax(1) if targets is None else torch.as_tensor(targets[s:s + batch_size])
            score = logits.gather(1, pick.view(-1, 1)).sum()
            grad, = torch.autograd.grad(score, fmap)
        cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * fmap).sum(1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).max(1).values.clamp(min=1e-12).view(-1, 1, 1)
        out.append((cam / peak).numpy())
    return np.concatenate(out) if out else np.zeros((0, preprocess.size, preprocess.size), np.float32)


def overlay(rgb_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, side: int = 96) -> np.ndarray:
    """The cell with its heatmap laid over it (a perceptual colormap), ``side`` px square."""
    from matplotlib import colormaps

    heat = (colormaps["inferno"](np.clip(heatmap, 0, 1))[..., :3] * 255).astype(np.float32)
    cell = np.asarray(Image.fromarray(rgb_uint8).resize(heat.shape[1::-1], Image.Resampling.BILINEAR), np.float32)
    mixed = ((1 - alpha) * cell + alpha * heat).clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(mixed).resize((side, side), Image.Resampling.BILINEAR))
