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


def test_site_batches_draw_every_batch_from_one_site():
    import torch

    from leukodx.training.trainer import _one_site_order, _site_batches

    groups = np.array([0] * 50 + [1] * 30 + [2] * 7)  # a site smaller than one batch keeps one batch
    sites, steps = _site_batches(groups, 16)
    assert steps == 3 + 1 + 1
    order = _one_site_order(sites, 16, torch.Generator().manual_seed(0))
    assert len(order) == steps
    assert all(len(set(groups[b.numpy()])) == 1 for b in order)
    assert sorted(len(b) for b in order) == [7, 16, 16, 16, 16]
    again = _one_site_order(sites, 16, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(order, again))  # seeded


def test_site_batches_train_and_validate_per_site(small_pbc, tmp_path):
    """Two 'sites' (the second one's images darkened): training runs on one-site batches and the
    validation figures are those of the network adapted to each validation site."""
    from leukodx.training.trainer import predict_logits, predict_logits_per_site

    x_tr, y_tr, x_va, y_va = small_pbc
    groups = np.arange(len(y_tr)) % 2
    val_groups = np.arange(len(y_va)) % 2
    x_tr, x_va = x_tr.copy(), x_va.copy()
    x_tr[groups == 1] //= 2
    x_va[val_groups == 1] //= 2
    config = TrainConfig(arch="resnet10t", epochs=1, batch_size=16, lr=3e-3, preprocess=Preprocess(size=32),
                         site_batches=True)
    result = fit(x_tr, y_tr, x_va, y_va, 3, config, tmp_path, show_progress=False, groups=groups,
                 val_groups=val_groups)
    assert np.allclose(result.val_logits, predict_logits_per_site(result.net, x_va, val_groups, config.preprocess),
                       atol=1e-4)
    assert not np.allclose(result.val_logits, predict_logits(result.net, x_va, config.preprocess), atol=1e-3)
    with pytest.raises(ValueError, match="site of every"):
        fit(x_tr, y_tr, x_va, y_va, 3, config, tmp_path / "b", show_progress=False)
    with pytest.raises(ValueError, match="cannot be combined"):
        TrainConfig(site_batches=True, imbalance="sampler")


def test_few_shot_fit_keeps_the_target_sites_batchnorm_statistics(small_pbc, tmp_path):
    """AdaBN on the few target cells, then fine-tuning that moves the weights but not those statistics."""
    from dataclasses import replace

    import torch
    from safetensors.torch import save_file

    from leukodx.models.architectures import create_network
    from leukodx.training.adaptation import adapt_batchnorm, few_shot_fit

    x_tr, y_tr, _, _ = small_pbc
    torch.manual_seed(0)
    parent = create_network("resnet10t", 3).eval()
    x_k, y_k = x_tr[::8], y_tr[::8]  # 5 labelled cells per class
    config = replace(_config(epochs=2), batch_size=5)

    def bn_stats(net):
        return {k: v.clone() for k, v in net.state_dict().items() if k.endswith(("running_mean", "running_var"))}

    def weights(net):
        return {k: v.clone() for k, v in net.state_dict().items() if k.endswith("weight")}

    expected = bn_stats(adapt_batchnorm(parent, x_k, config.preprocess))
    tuned = few_shot_fit(parent, x_k, y_k, 3, config, tmp_path / "frozen").net
    assert expected and all(torch.equal(v, bn_stats(tuned)[k]) for k, v in expected.items())
    moved = [k for k, v in weights(parent).items() if not torch.equal(v, weights(tuned)[k])]
    assert len(moved) == len(weights(parent))
    # the same fine-tuning without freezing overwrites them with the last few batches'
    start = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in adapt_batchnorm(parent, x_k, config.preprocess).state_dict().items()},
              str(start))
    loose = fit(x_k, y_k, x_k, y_k, 3, replace(config, pretrained=str(start)), tmp_path / "loose",
                show_progress=False).net
    assert not all(torch.equal(v, bn_stats(loose)[k]) for k, v in expected.items())
