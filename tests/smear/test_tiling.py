import numpy as np
import pytest

from leukodx.smear.tiling import cut_tile, merge_tile_detections, tile_origins

TILE = (480, 640)


@pytest.mark.parametrize("shape", [(480, 640), (300, 300), (1000, 1500), (10_000, 10_000)])
def test_tiles_cover_the_field(shape):
    origins = tile_origins(*shape, TILE, overlap=256)
    covered = np.zeros(shape[:2], dtype=bool)
    for y, x in origins:
        assert y >= 0 and x >= 0
        covered[y:y + TILE[0], x:x + TILE[1]] = True
    assert covered.all()


@pytest.mark.parametrize("shape", [(1000, 1500), (10_000, 10_000)])
def test_neighbouring_tiles_overlap_by_more_than_a_cell(shape):
    origins = tile_origins(*shape, TILE, overlap=256)
    ys, xs = sorted({y for y, _ in origins}), sorted({x for _, x in origins})
    assert len(ys) > 1 and len(xs) > 1
    assert max(b - a for a, b in zip(ys, ys[1:])) <= TILE[0] - 256
    assert max(b - a for a, b in zip(xs, xs[1:])) <= TILE[1] - 256


def test_small_field_is_padded_with_the_given_background():
    rgb = np.zeros((100, 120, 3), np.uint8)
    tile = cut_tile(rgb, (0, 0), TILE, fill=np.array([200, 190, 180], np.uint8))
    assert tile.shape == (480, 640, 3)
    assert (tile[150, 300] == [200, 190, 180]).all() and (tile[50, 50] == 0).all()


def test_a_cell_seen_by_two_tiles_is_counted_once_and_cut_boxes_are_dropped():
    shape = (480, 1000)
    origins = tile_origins(*shape, TILE, overlap=256)
    assert len(origins) == 2
    (_, x0), (_, x1) = origins
    cell = np.array([500, 100, 600, 200], np.float32)  # field coordinates, inside both tiles
    per_tile = []
    for x in (x0, x1):
        b = cell - np.array([x, 0, x, 0], np.float32)
        cut = np.array([600 - x, 300, 640, 400], np.float32) if x == x0 else np.zeros((0, 4), np.float32)
        boxes = np.vstack([b, cut]) if len(cut) else b[None]
        per_tile.append({"boxes": boxes, "labels": np.ones(len(boxes), int), "scores": np.full(len(boxes), 0.9, np.float32)})
    merged = merge_tile_detections(per_tile, origins, shape, TILE)
    assert len(merged["boxes"]) == 1
    np.testing.assert_allclose(merged["boxes"][0], cell)
