"""The cell-crop preprocessing: the nucleus search run for many images at once gives each image the
box it gets alone (nothing leaks across stacked images of one shape, mixed shapes are grouped), the
crop is centred on that box, and an image without a nucleus is used whole."""

from __future__ import annotations

import numpy as np

from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
from leukodx.preprocessing.transforms import Preprocess, _nucleus_box, cell_crop, nucleus_boxes


def _images() -> list[np.ndarray]:
    out = []
    for name, step in (("pbc", 997), ("wbc-seg-1", 37), ("all-aria", 311)):
        index = load_dataset(name)
        out += [read_image(index.abspath(i), max_side=128) for i in range(0, len(index.labels), step)[:12]]
    return out


def test_batched_boxes_equal_one_image_boxes():
    images = _images()
    blank = np.full((120, 100, 3), 230, np.uint8)
    batch = nucleus_boxes(images + [blank])
    assert batch == [_nucleus_box(im) for im in images] + [None]
    assert sum(b is not None for b in batch) >= 30  # real cells have a nucleus
    shuffled = nucleus_boxes(images[::-1])  # the order of the stack changes nothing
    assert shuffled[::-1] == batch[:-1]


def test_preprocess_batch_equals_one_by_one_and_crops_around_the_nucleus():
    images = _images()[:10]
    pre = Preprocess(size=64, resize="cell-crop")
    batch = pre.batch(images)
    assert all(np.array_equal(a, pre(im)) for a, im in zip(batch, images))
    top, left, bottom, right = _nucleus_box(images[0])
    crop = cell_crop(images[0])
    assert crop.shape[0] == crop.shape[1] >= max(bottom - top, right - left)
    blank = np.full((50, 70, 3), 200, np.uint8)
    assert cell_crop(blank) is blank


def test_shifted_morphology_is_scipys_opening_and_closing():
    """The nucleus mask's opening and closing, done by shifted ANDs / ORs, are scipy's to the pixel,
    on masks that touch the image border and on blobs of smoothed noise."""
    from scipy import ndimage

    from leukodx.preprocessing.transforms import _dilate, _erode

    cross = np.zeros((3, 3, 3), dtype=bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.random((8, 40, 52)), (0, 1.5, 1.5))
    for q in (0.3, 0.6, 0.9):  # blobs of many sizes, thin bridges and specks
        mask = noise > np.quantile(noise, q)
        mask[:, :4] = True
        want = ndimage.binary_closing(ndimage.binary_opening(mask, cross, iterations=3), cross, iterations=2)
        got = mask
        for step in (_erode,) * 3 + (_dilate,) * 5 + (_erode,) * 2:
            got = step(got)
        assert np.array_equal(got, want)
        assert 0 < got.sum() < got.size
