"""The GroupNorm RegNet used by the normalization ablation."""

from __future__ import annotations

import torch

from leukodx.models.architectures import create_network


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
