"""Where the reliability features' style is read (``models.features``), and bundles that record it or not."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from leukodx.data.cache import cached_arrays
from leukodx.data.folder import limit_per_class
from leukodx.data.sites import site_sides
from leukodx.errors import InvalidInputError
from leukodx.inference.classifier import load_model
from leukodx.models.architectures import create_network
from leukodx.models.features import WithFeatures, last_linear
from leukodx.models.reliability import (DEFAULT_STYLE_SOURCE, LEGACY_STYLE_SOURCE, RELIABILITY_FILE,
                                        attach_reliability)
from leukodx.preprocessing.transforms import normalize_batch


def _maps(net: torch.nn.Module, x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
    """Copies of the named modules' outputs."""
    out, modules = {}, dict(net.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o.detach().clone()))
             for n in names]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return [out[n] for n in names]


def _style(maps: torch.Tensor) -> torch.Tensor:
    return torch.cat([maps.mean(dim=(2, 3)), maps.std(dim=(2, 3))], dim=1)


def test_the_style_is_read_from_every_activation_of_the_quarter_side_stage():
    torch.manual_seed(0)
    net = create_network("regnetx_002", 5).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits, features = WithFeatures(net)(x)
        _, legacy = WithFeatures(net, LEGACY_STYLE_SOURCE)(x)
    stage = ["s1.b1.conv1.bn.act", "s1.b1.conv2.bn.act", "s1.b1.act3"]  # the reduction-4 stage's three ReLUs
    pen = net.forward_head(net.forward_features(x), pre_logits=True)
    maps = _maps(net, x, stage)
    # the first runs before the stage's strided convolution, at half the side
    assert [tuple(m.shape[2:]) for m in maps] == [(32, 32), (16, 16), (16, 16)]
    want = torch.cat([pen] + [_style(m) for m in maps], dim=1)
    torch.testing.assert_close(features, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, net(x))
    # the legacy source: the last layer output at a quarter of the side (s2's first 1x1 convolution, 56 channels)
    (old,) = _maps(net, x, ["s2.b1.conv1.bn.act"])
    torch.testing.assert_close(legacy, torch.cat([pen, _style(old)], dim=1))
    with pytest.raises(InvalidInputError, match="style source 'middle'"):
        WithFeatures(net, "middle")


def test_the_int8_export_reads_the_stage_with_quantized_pools(tmp_path):
    """The style's pools quantize with the network (QDQ around each), so ONNX Runtime runs them on the uint8
    maps; a float reduction there would dequantize and transpose every map, and the file still match."""
    import onnx

    from leukodx.inference.onnx_backend import OnnxSession, export_onnx
    from leukodx.inference.quantize import quantize_onnx
    from leukodx.preprocessing.transforms import Preprocess

    torch.manual_seed(0)
    net = create_network("regnetx_002", 5).eval()
    pre = Preprocess(size=64)
    calibration = np.random.default_rng(0).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
    path = quantize_onnx(export_onnx(net, 64, tmp_path / "f.onnx", features=True), tmp_path / "f.int8.onnx",
                         calibration, pre)
    graph = onnx.load(path).graph
    made = {o: n for n in graph.node for o in n.output}
    pools = [n for n in graph.node if n.op_type == "GlobalAveragePool"]
    assert not [n for n in graph.node if n.op_type.startswith("Reduce")]
    assert len(pools) == 1 + 2 * 3  # the head's, and the mean and the mean square of each of the stage's maps
    assert all(made[n.input[0]].op_type == "DequantizeLinear" for n in pools)
    # the pools' outputs are quantized too: the QDQ pattern ONNX Runtime fuses into QLinearGlobalAveragePool
    users = {i: n for n in graph.node for i in n.input}
    assert all(users[n.output[0]].op_type == "QuantizeLinear" for n in pools)
    logits, features = OnnxSession(path).outputs(normalize_batch(calibration[:4], pre))
    assert logits.shape == (4, 5) and features.shape == (4, 368 + 2 * (24 + 24 + 24))


def test_a_network_without_a_declared_stage_reads_the_legacy_layer():
    torch.manual_seed(0)
    net = create_network("elseoud_cnn5", 5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        new, old = WithFeatures(net)(x)[1], WithFeatures(net, LEGACY_STYLE_SOURCE)(x)[1]
    torch.testing.assert_close(new, old)
    assert new.shape[1] > last_linear(net).in_features  # a style part is there


@pytest.fixture(scope="module")
def legacy_bundle(tmp_path_factory):
    """A copy of pbc-celltype whose statistics were fitted on the legacy style (a few hundred cells) and whose
    card, like those written before the style source was recorded, names none."""
    from leukodx.training.calibration import fit_network_reliability

    clf = load_model("pbc-celltype", backend="torch")
    bundle = tmp_path_factory.mktemp("legacy") / "pbc-legacy"
    shutil.copytree(clf.bundle_dir, bundle)
    sides = site_sides("pbc")
    train, val = (limit_per_class(sides[s], n, 0) for s, n in (("train", 25), ("val", 12)))
    rel = fit_network_reliability(clf.net, clf.preprocess, clf.temperature, cached_arrays(train, clf.preprocess),
                                  train.labels, cached_arrays(val, clf.preprocess), val.labels,
                                  style_source=LEGACY_STYLE_SOURCE)
    card = json.loads((bundle / "card.json").read_text())
    card.pop("int8", None)  # the int8 file's features follow the shipped statistics
    card = attach_reliability(bundle, card, rel)
    assert card["reliability"].pop("style_source") == LEGACY_STYLE_SOURCE
    (bundle / "card.json").write_text(json.dumps(card))
    return bundle, rel


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_bundle_that_names_no_style_source_is_scored_as_it_was_fitted(legacy_bundle, backend):
    bundle, rel = legacy_bundle
    clf = load_model(bundle, backend=backend, precision="fp32")
    assert clf.style_source == LEGACY_STYLE_SOURCE and clf.reliability.style_source == LEGACY_STYLE_SOURCE
    x = cached_arrays(limit_per_class(site_sides("pbc")["test"], 3, 0), clf.preprocess)
    logits, features = clf.forward(x)
    assert features.shape[1] == rel.pen_dim + rel.style_whitening.shape[0]
    with torch.no_grad():
        want = WithFeatures(clf.net, LEGACY_STYLE_SOURCE)(torch.from_numpy(normalize_batch(x, clf.preprocess)))[1]
    want = want.numpy()
    np.testing.assert_allclose(features, want, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(clf.score_arrays(x).ood_scores, rel.ood_scores(want), rtol=1e-3, atol=1e-3)


def test_a_legacy_bundles_onnx_export_is_cached_under_its_own_layout(legacy_bundle):
    clf = load_model(legacy_bundle[0], backend="onnx", precision="fp32")
    assert clf.onnx_path().name.endswith("-f2.onnx") and clf.onnx_path().is_file()


def test_shipped_bundles_record_the_default_style_source():
    clf = load_model("wbc-multisite", backend="onnx", precision="fp32")
    assert clf.card["reliability"]["style_source"] == DEFAULT_STYLE_SOURCE
    assert clf.card["int8"]["reliability"]["style_source"] == DEFAULT_STYLE_SOURCE
    assert clf.onnx_path().name.endswith("-f6.onnx")


def test_an_unknown_style_source_is_one_clear_error(legacy_bundle, tmp_path):
    bundle = tmp_path / "future"
    shutil.copytree(legacy_bundle[0], bundle)
    card = json.loads((bundle / "card.json").read_text())
    card["reliability"]["style_source"] = "half-stage"
    (bundle / "card.json").write_text(json.dumps(card))
    with pytest.raises(InvalidInputError, match=f"{RELIABILITY_FILE}: style source 'half-stage' is unknown"):
        load_model(bundle)
