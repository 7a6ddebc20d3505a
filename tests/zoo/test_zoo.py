"""The model zoo: every recipe builds, the papers' networks are real timm models, feature recipes fit."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from leukodx.errors import InvalidInputError
from leukodx.models.architectures import create_network
from leukodx.zoo.estimators import FeatureEstimator, NetworkEstimator, count_flops
from leukodx.models.networks import CUSTOM_ARCHITECTURES, HaarDWT
from leukodx.zoo.recipes import QUICK, get_recipe, list_recipes

PAPERS = {"vogado2018-svm", "leuknet", "elseoud2020-cnn5", "kalaiselvi-cnn6", "huang2020-transfer",
          "claro2022-densenet121", "baig2022-cca-bagging", "saleem2022-features", "houssein2023-densenet161",
          "naz2023-wavelet", "sakthiraj2022-attention"}


def test_zoo_covers_the_review():
    names = set(list_recipes())
    assert PAPERS <= names and {n for n in names if n.startswith("muhamad2022")}
    for name in names:
        r = get_recipe(name)
        assert r.paper and r.claimed and r.method and (r.arch or r.backbones)
    with pytest.raises(InvalidInputError, match="not in the zoo"):
        get_recipe("resnet9000")


@pytest.mark.parametrize("arch", CUSTOM_ARCHITECTURES)
def test_paper_networks_are_timm_models(arch):
    assert timm.is_model(arch)
    net = create_network(arch, 5)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and net.get_classifier().out_features == 5
    assert count_flops(net, 32) > 0
    with pytest.raises(Exception, match="no published weights"):
        timm.create_model(arch, pretrained=True, num_classes=5)


def test_haar_dwt_is_lossless_energy():
    x = torch.randn(1, 3, 8, 8)
    bands = HaarDWT(3)(x)
    assert bands.shape == (1, 12, 4, 4)
    torch.testing.assert_close(bands.pow(2).sum(), x.pow(2).sum())  # orthonormal transform keeps energy


def test_grayscale_network_ignores_hue_at_equal_luminance():
    net = create_network("elseoud_cnn5", 3).eval()
    a = torch.zeros(1, 3, 16, 16)
    a[:, 0] = 0.587 / 0.299 * 0.5  # red, same luminance as the green image below
    b = torch.zeros(1, 3, 16, 16)
    b[:, 1] = 0.5
    torch.testing.assert_close(net(a), net(b))


def _toy_images(n_per_class=10, size=32, seed=0):
    # two visibly different classes of real-looking input: dark-centred vs bright-centred discs
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2
    x, y = [], []
    for label, level in enumerate((40, 220)):
        for _ in range(n_per_class):
            img = rng.integers(90, 160, (size, size, 3)).astype(np.uint8)
            img[disc] = level
            x.append(img)
            y.append(label)
    return np.stack(x), np.array(y)


def test_network_and_feature_estimators_fit_and_predict():
    x, y = _toy_images()
    for name in ("muhamad2022-cnn", "baig2022-cca-bagging", "vogado2018-svm"):
        est = get_recipe(name).build(QUICK, seed=0)
        est.fit(x, y, x, y, 2)
        proba = est.predict_proba(x)
        assert proba.shape == (20, 2) and np.allclose(proba.sum(1), 1)
        assert est.n_params > 0 and est.flops() > 0
    assert isinstance(get_recipe("leuknet").build(QUICK), NetworkEstimator)
    assert isinstance(get_recipe("saleem2022-features").build(QUICK), FeatureEstimator)


def test_recipe_preprocessing_is_the_method_only_where_it_is():
    assert get_recipe("kalaiselvi-cnn6").train_config(QUICK).preprocess.stain == "reinhard"
    assert get_recipe("leuknet").train_config(QUICK).preprocess.stain == "none"
    assert get_recipe("claro2022-densenet121").augment == "all"
    assert get_recipe("leuknet").train_config(QUICK, stain="macenko").preprocess.stain == "macenko"


def test_local_pretrained_weights_are_used(tmp_path):
    from safetensors.torch import save_file

    source = create_network("muhamad_cnn", 2)
    with torch.no_grad():
        for p in source.parameters():
            p.fill_(0.01)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    config = get_recipe("muhamad2022-cnn").train_config(QUICK, pretrained=str(path))
    net = create_network(config.arch, 2, pretrained=config.pretrained)
    assert torch.equal(net.features[0][0].weight, source.features[0][0].weight)
    pickle_file = tmp_path / "w.pt"
    pickle_file.write_bytes(b"not loaded")
    with pytest.raises(InvalidInputError, match="only .safetensors"):
        create_network("muhamad_cnn", 2, pretrained=str(pickle_file))


def test_feature_heads_fit_when_a_class_is_rare():
    """wbc-seg has 4 basophils: a training side may hold 1 or 2, fewer than 3 calibration folds need."""
    from PIL import Image

    from leukodx.data.images import read_image
    from leukodx.data.registry import load_dataset
    from leukodx.zoo.estimators import feature_head

    index = load_dataset("wbc-seg-2")
    for rare in (2, 1):
        keep = []
        for c in range(len(index.classes)):
            members = list(np.flatnonzero(index.labels == c))
            keep += members[:rare] if index.classes[c] == "basophil" else members[:6]
        x = np.stack([np.asarray(Image.fromarray(read_image(index.root / index.paths[i])).resize((8, 8)), np.float32).ravel()
                      for i in keep])
        y = index.labels[keep]
        for kind in ("svm-knn-nb", "gain-ratio-svm"):
            for name, model in feature_head(kind, select_k=50, seed=0, smallest_class=rare).items():
                model.fit(x, y)
                p = model.predict_proba(x)
                assert p.shape == (len(y), len(index.classes)) and np.allclose(p.sum(axis=1), 1), (kind, name, rare)
