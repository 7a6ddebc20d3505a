"""Scale selection without labels: the information a network's predictions carry about each image
(H(mean p) - mean H(p)), and the zoom of a grid at which it is highest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leukodx.data.cache import cached_arrays
from leukodx.data.registry import load_dataset
from leukodx.errors import InvalidInputError
from leukodx.preprocessing.transforms import Preprocess
from leukodx.training.adaptation import ZOOM_GRID, prediction_information, select_zoom
from leukodx.training.calibration import softmax
from leukodx.training.trainer import predict_logits


def test_information_is_zero_for_uniform_or_unanimous_predictions_and_log2_for_a_confident_split():
    assert prediction_information(np.full((10, 4), 0.25)) == pytest.approx(0.0, abs=1e-9)
    unanimous = np.tile([1.0, 0.0, 0.0], (10, 1))
    assert prediction_information(unanimous) == pytest.approx(0.0, abs=1e-6)
    split = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    assert prediction_information(split) == pytest.approx(np.log(2), abs=1e-6)
    hedged = np.array([[0.7, 0.3]] * 5 + [[0.3, 0.7]] * 5)
    assert 0 < prediction_information(hedged) < prediction_information(split)


class _DarkFraction(torch.nn.Module):
    """Two logits from the share of dark (nucleus-coloured) pixels in the frame, about a fixed threshold: the
    larger the cell shows, the further the images spread from the threshold and the more confident the calls."""

    def __init__(self, gain: float = 40.0) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(gain), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = (x.mean(dim=1) < -0.6).float().mean(dim=(1, 2))
        centred = dark - 0.05
        return torch.stack([self.gain * centred, -self.gain * centred], dim=1)


class _Constant(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([0.3, -0.3]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 2)


def _proba_of(net: torch.nn.Module, arrays_at):
    def proba_at(pre: Preprocess) -> np.ndarray:
        return softmax(predict_logits(net, arrays_at(pre), pre))

    return proba_at


@pytest.fixture(scope="module")
def cells():
    index = load_dataset("wbc-seg-2")
    return index.subset(np.arange(0, len(index), len(index) // 12)[:12])


def test_the_zoom_with_the_most_information_is_chosen_and_every_zoom_is_scored(cells):
    pre = Preprocess(size=32)
    seen = []

    def arrays_at(p: Preprocess) -> np.ndarray:
        seen.append(p.zoom)
        return cached_arrays(cells, p)

    zoom, scores = select_zoom(_proba_of(_DarkFraction(), arrays_at), pre)
    assert seen == [float(z) for z in ZOOM_GRID]
    assert set(scores) == {f"{float(z):g}" for z in ZOOM_GRID}
    assert scores[f"{zoom:g}"] == pytest.approx(max(scores.values()), abs=1e-4)
    # a cell shown smaller (zoom < 1, padded with the background) is read with less information than at its own size
    assert scores["0.4"] < scores["1"]


def test_a_network_blind_to_scale_keeps_the_images_as_they_are(cells):
    zoom, scores = select_zoom(_proba_of(_Constant(), lambda p: cached_arrays(cells, p)), Preprocess(size=32))
    assert zoom == 1.0
    assert len(set(round(v, 9) for v in scores.values())) == 1


def test_no_images_is_refused():
    with pytest.raises(InvalidInputError, match="no images"):
        select_zoom(lambda p: np.zeros((0, 2)), Preprocess(size=32))
