"""Cutting a field of any size into detector tiles, and merging the tiles' boxes back.

Tiles overlap by more than the largest cell, so every cell lies whole inside at least one tile;
a box cut by a tile's inner edge is dropped (its whole twin comes from the neighbour tile), and
what is left is de-duplicated by class-wise non-maximum suppression.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from leukodx.errors import InvalidInputError

#: wider than the largest white cell in BCCD (~240 px), so no cell is cut in every tile
DEFAULT_OVERLAP = 256
EDGE_MARGIN = 2.0


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # last tile flush with the border, not padded
    return starts


def tile_origins(height: int, width: int, tile: tuple[int, int], overlap: int = DEFAULT_OVERLAP) -> list[tuple[int, int]]:
    """(y, x) of every tile's top-left corner."""
    th, tw = tile
    if overlap >= min(th, tw):
        raise InvalidInputError(f"overlap {overlap} must be smaller than the tile {th}x{tw}")
    return [(y, x) for y in _starts(height, th, overlap) for x in _starts(width, tw, overlap)]


def cut_tile(rgb: np.ndarray, origin: tuple[int, int], tile: tuple[int, int], fill: np.ndarray | None = None) -> np.ndarray:
    """The tile at ``origin``, padded to full size with ``fill`` (the field's background) if the field is smaller."""
    y, x = origin
    th, tw = tile
    part = rgb[y:y + th, x:x + tw]
    if part.shape[:2] == (th, tw):
        return part
    out = np.empty((th, tw, 3), dtype=np.uint8)
    out[:] = fill if fill is not None else np.uint8(255)
    out[:part.shape[0], :part.shape[1]] = part
    return out


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """Median colour of the brightest half of a subsample: the slide's empty background."""
    sample = rgb[::max(1, rgb.shape[0] // 64), ::max(1, rgb.shape[1] // 64)].reshape(-1, 3)
    bright = sample[sample.sum(axis=1) >= np.median(sample.sum(axis=1))]
    return np.median(bright, axis=0).astype(np.uint8)


def iter_tile_batches(rgb: np.ndarray, tile: tuple[int, int], overlap: int = DEFAULT_OVERLAP,
                      batch: int = 4) -> Iterator[tuple[list[tuple[int, int]], list[np.ndarray]]]:
    """Tiles in small batches, so memory stays bounded whatever the field's size."""
    origins = tile_origins(rgb.shape[0], rgb.shape[1], tile, overlap)
    fill = background_colour(rgb) if (rgb.shape[0] < tile[0] or rgb.shape[1] < tile[1]) else None
    for s in range(0, len(origins), batch):
        chunk = origins[s:s + batch]
        yield chunk, [cut_tile(rgb, o, tile, fill) for o in chunk]


def merge_tile_detections(per_tile: list[dict], origins: list[tuple[int, int]], shape: tuple[int, int],
                          tile: tuple[int, int], iou: float = 0.5) -> dict:
    """Shift each tile's boxes to field coordinates, drop boxes cut by an inner tile edge, NMS per class."""
    import torch
    from torchvision.ops import batched_nms

    height, width = shape
    th, tw = tile
    boxes, labels, scores = [], [], []
    for det, (y, x) in zip(per_tile, origins):
        b = det["boxes"].astype(np.float32).copy()
        keep = np.ones(len(b), dtype=bool)
        # an edge of this tile that is not the field's border cuts whatever touches it
        if x > 0:
            keep &= b[:, 0] > EDGE_MARGIN
        if y > 0:
            keep &= b[:, 1] > EDGE_MARGIN
        if x + tw < width:
            keep &= b[:, 2] < tw - EDGE_MARGIN
        if y + th < height:
            keep &= b[:, 3] < th - EDGE_MARGIN
        b = b[keep] + np.array([x, y, x, y], dtype=np.float32)
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
        boxes.append(b)
        labels.append(det["labels"][keep])
        scores.append(det["scores"][keep])
    if not boxes or sum(len(b) for b in boxes) == 0:
        return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, int), "scores": np.zeros(0, np.float32)}
    b, l, s = np.concatenate(boxes), np.concatenate(labels), np.concatenate(scores)
    if len(origins) > 1:
        keep = batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(l), iou).numpy()
        b, l, s = b[keep], l[keep], s[keep]
    order = np.argsort(-s, kind="stable")
    return {"boxes": b[order], "labels": l[order].astype(int), "scores": s[order]}
