"""The GroupNorm, MixStyle and luminance-only RegNets used by the normalization and colour ablations."""

from __future__ import annotations

import torch

from leukodx.models.architectures import create_network
from leukodx.models.networks import MixStyle


def test_regnetx_002_gn_has_no_batch_norm_and_the_same_widths():
    gn = create_network("regnetx_002_gn", 5)
    bn = create_network("regnetx_002", 5)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in gn.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in gn.modules())
    shapes = lambda net: [p.shape for n, p in net.named_parameters() if "conv" in n]  # noqa: E731
    assert shapes(gn) == shapes(bn)
    gn.eval()
    one = gn(torch.rand(1, 3, 48, 48))
    two = gn(torch.cat([torch.rand(1, 3, 48, 48), torch.rand(1, 3, 48, 48)]))
    assert one.shape == (1, 5) and two.shape == (2, 5)


def test_mixstyle_regnet_is_regnet_at_inference_and_mixes_styles_in_training():
    mixed = create_network("regnetx_002_mixstyle", 5)
    plain = create_network("regnetx_002", 5)
    plain.load_state_dict(mixed.state_dict())  # the same weights: MixStyle has none
    x = torch.rand(4, 3, 48, 48)
    mixed.eval()
    plain.eval()
    assert torch.equal(mixed(x), plain(x))
    mixed.train()
    plain.train()
    torch.manual_seed(0)
    for m in (mixed.mix1, mixed.mix2, mixed.mix3):
        m.p = 1.0
    assert not torch.allclose(mixed(x), plain(x))


def test_mixstyle_moves_each_image_style_between_its_own_and_a_partners():
    torch.manual_seed(1)
    mix = MixStyle(p=1.0, alpha=2.0).train()
    dark = torch.randn(3, 3, 8, 8) * 0.5 - 2.0
    light = torch.randn(3, 3, 8, 8) * 2.0 + 3.0
    x = torch.cat([dark, light])
    means = x.mean(dim=(2, 3))
    out = mix(x).mean(dim=(2, 3))
    low, high = means.min(dim=0).values, means.max(dim=0).values
    assert bool(((out >= low - 1e-4) & (out <= high + 1e-4)).all())
    assert (out - means).abs().max() > 0.1
    assert torch.equal(mix.eval()(x), x)


def test_grey_regnet_sees_luminance_only():
    net = create_network("regnetx_002_grey", 5).eval()
    x = torch.rand(2, 3, 48, 48) * 0.8 + 0.1
    same_luma = x + torch.tensor([0.587, -0.299, 0.0]).view(1, 3, 1, 1) * 0.1  # 0.299 * 0.587 - 0.587 * 0.299 = 0
    brighter = x + 0.1
    out = net.forward_features(x)
    colour_moved = (net.forward_features(same_luma) - out).abs().max()
    luma_moved = (net.forward_features(brighter) - out).abs().max()
    assert colour_moved < 1e-4 * luma_moved
