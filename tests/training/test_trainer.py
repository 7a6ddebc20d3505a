"""The trainer learns on real data, checkpoints without pickles, resumes, and calibrates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leukodx.data.cache import cached_arrays
from leukodx.data.registry import load_dataset
from leukodx.preprocessing.transforms import Preprocess
from leukodx.training.calibration import fit_temperature, softmax
from leukodx.training.trainer import TrainConfig, fit


@pytest.fixture(scope="module")
def small_pbc():
    """Three visually distinct pbc types (eosinophil, lymphocyte, platelet), 40 train / 15 val each."""
    index = load_dataset("pbc")
    pre = Preprocess(size=32)
    tr, va = [], []
    for c in (1, 4, 7):
        members = np.flatnonzero(index.labels == c)
        tr += list(members[:40])
        va += list(members[40:55])
    train, val = index.subset(tr), index.subset(va)
    remap = {1: 0, 4: 1, 7: 2}
    return (cached_arrays(train, pre), np.array([remap[y] for y in train.labels]),
            cached_arrays(val, pre), np.array([remap[y] for y in val.labels]))


def _config(epochs=6):
    return TrainConfig(arch="resnet10t", epochs=epochs, batch_size=24, lr=3e-3, preprocess=Preprocess(size=32),
                       patience=10)


@pytest.mark.slow
def test_fit_learns_real_cell_types_better_than_chance(small_pbc, tmp_path):
    x_tr, y_tr, x_va, y_va = small_pbc
    result = fit(x_tr, y_tr, x_va, y_va, 3, _config(), tmp_path, show_progress=False)
    assert len(result.history) == 6
    assert max(h["val_accuracy"] for h in result.history) > 0.6  # chance is 0.33
    assert result.temperature > 0
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["state.json", "state.safetensors"]  # no pickle anywhere


@pytest.mark.slow
def test_interrupted_run_resumes_where_it_stopped(small_pbc, tmp_path):
    x_tr, y_tr, x_va, y_va = small_pbc

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(x_tr, y_tr, x_va, y_va, 3, _config(4), tmp_path / "a", show_progress=False, on_epoch_end=stop_after_two)
    resumed = fit(x_tr, y_tr, x_va, y_va, 3, _config(4), tmp_path / "a", resume=True, show_progress=False)
    straight = fit(x_tr, y_tr, x_va, y_va, 3, _config(4), tmp_path / "b", show_progress=False)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    for a, b in zip(resumed.history, straight.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    with pytest.raises(ValueError, match="cannot resume with a different configuration"):
        fit(x_tr, y_tr, x_va, y_va, 3, _config(5), tmp_path / "a", resume=True, show_progress=False)


def test_temperature_scaling_undoes_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    true_logits = rng.normal(size=(2000, 3))
    true_logits[np.arange(2000), y] += 1.0
    sampled = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])  # labels drawn from the true probs
    t = fit_temperature(true_logits * 3.0, sampled)  # a model 3x too confident
    assert t == pytest.approx(3.0, rel=0.15)


def test_config_is_recorded_as_plain_json():
    d = TrainConfig().as_dict()
    assert json.loads(json.dumps(d))["preprocess"]["size"] == 64
    with pytest.raises(ValueError, match="imbalance"):
        TrainConfig(imbalance="magic")
