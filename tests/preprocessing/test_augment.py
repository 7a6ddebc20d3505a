"""Batch augmentation: shapes kept, seeded, and each arm does what it says."""

from __future__ import annotations

import numpy as np
import torch

from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
from leukodx.preprocessing.augment import NO_AUGMENT, Augment, augment_batch
from leukodx.preprocessing.transforms import Preprocess


def _batch(n=4):
    index = load_dataset("pbc")
    pre = Preprocess(size=48)
    arr = np.stack([pre(read_image(index.abspath(i))) for i in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


def test_no_augment_is_identity():
    x = _batch()
    assert torch.equal(augment_batch(x, NO_AUGMENT, torch.Generator().manual_seed(0)), x)


def test_same_seed_same_result_and_values_stay_in_range():
    x = _batch()
    a = augment_batch(x, Augment(), torch.Generator().manual_seed(1))
    b = augment_batch(x, Augment(), torch.Generator().manual_seed(1))
    c = augment_batch(x, Augment(), torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_flip_only_permutes_pixels():
    x = _batch()
    out = augment_batch(x, Augment(flip=True, rotate=0, translate=0, scale=(1, 1), color=0), torch.Generator().manual_seed(0))
    # a flip moves pixels without changing the set of values
    assert torch.allclose(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=1e-4)


def test_color_jitter_changes_colour_not_geometry():
    x = _batch()
    out = augment_batch(x, Augment(flip=False, rotate=0, translate=0, scale=(1, 1), color=0.3), torch.Generator().manual_seed(0))
    assert not torch.allclose(out, x)
    gray_in, gray_out = x.mean(1).flatten(1), out.mean(1).flatten(1)
    corr = torch.nn.functional.cosine_similarity(gray_in - gray_in.mean(1, keepdim=True), gray_out - gray_out.mean(1, keepdim=True))
    assert corr.min() > 0.95
