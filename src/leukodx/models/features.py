"""The features the reliability statistics are fitted on (``models.reliability``), read from any
network by forward hooks: its last linear layer's input and an early layer's style. (PyTorch; the
ONNX export carries them as a second output, so ONNX inference needs none of this.)"""

from __future__ import annotations

import torch
from torch import nn

from leukodx.errors import InvalidInputError


def last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InvalidInputError(f"{type(net).__name__}: no linear output layer to take features from")
    return linears[-1]


class WithFeatures(nn.Module):
    """``net`` returning ``(logits, features)``: the features are its last linear layer's input
    followed by the style (per-channel mean and standard deviation) of the last layer output at
    least a quarter of the input's side (absent when the network has none)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.head = last_linear(net)
        self.leaves = [m for m in net.modules() if not list(m.children())]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        store: dict = {}
        side = max(2, min(x.shape[-2:]) // 4)

        def early(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[2:]) >= side:
                store["s"] = output

        hooks = [self.head.register_forward_hook(lambda module, inputs, output: store.__setitem__("f", inputs[0]))]
        hooks += [m.register_forward_hook(early) for m in self.leaves]
        try:
            logits = self.net(x)
        finally:
            for h in hooks:
                h.remove()
        parts = [store["f"].flatten(1)]
        if "s" in store:
            s = store["s"].float()
            parts += [s.mean(dim=(2, 3)), s.std(dim=(2, 3))]
        return logits, torch.cat(parts, dim=1)
