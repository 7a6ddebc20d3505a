"""The features the reliability statistics are fitted on (``models.reliability``), read from any
network by forward hooks: its last linear layer's input and an early stage's style. (PyTorch; the
ONNX export carries them as a second output, so ONNX inference needs none of this.)

Where the style is read (``STYLE_SOURCES``; a bundle's statistics record theirs, and bundles that
record none were fitted on ``"quarter-layer"``):

- ``"quarter-stage"`` (the default): every activation inside the network's stage at a quarter of the
  input's side (the reduction-4 stage of timm's ``feature_info``; a RegNet stage's first activation runs
  before its strided convolution, at half the side), each one's per-channel mean and standard deviation
  over its whole map, the latter from the mean square (one pass over the map; ``_moment_style`` says how
  it is kept cheap in the int8 file). Reading every other pixel of the half-side map cost less, but lost
  the 0.95 OOD AUROC on two leave-one-site-out folds. The stain, focus and scale of a lab's images are expected to show
  in these early maps; on the leave-one-site-out folds, against the single layer read before, they lifted
  the worst never-seen site's OOD AUROC (benchmarks/results/reliability.md, ablation rows). A network
  without such a stage falls back to ``"quarter-layer"``.
- ``"quarter-layer"``: the style of the last layer output at least a quarter of the input's side (for a
  RegNet the first 1x1 convolution of the reduction-8 stage).
"""

from __future__ import annotations

import torch
from torch import nn

from leukodx.errors import InvalidInputError
from leukodx.models.reliability import DEFAULT_STYLE_SOURCE, STYLE_SOURCES


def last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InvalidInputError(f"{type(net).__name__}: no linear output layer to take features from")
    return linears[-1]


#: the modules whose outputs are activations (torch's and timm's own activation layers)
_ACTIVATION_MODULES = ("torch.nn.modules.activation", "timm.layers.activations", "timm.layers.activations_me")


def _stage_activations(net: nn.Module) -> list[nn.Module]:
    """The activation layers inside ``net``'s reduction-4 stage (timm's ``feature_info``), in order;
    empty when the network declares no such stage."""
    info = getattr(net, "feature_info", None)
    entries = info if isinstance(info, list) else []
    names = [e.get("module") for e in entries if isinstance(e, dict) and e.get("reduction") == 4]
    if not names or not names[0]:
        return []
    try:
        stage = net.get_submodule(names[0])
    except AttributeError:
        return []
    return [m for m in stage.modules() if not list(m.children()) and type(m).__module__ in _ACTIVATION_MODULES]


class WithFeatures(nn.Module):
    """``net`` returning ``(logits, features)``: the features are its last linear layer's input
    followed by the style (per-channel mean and standard deviation) of the maps ``style`` names
    (``STYLE_SOURCES``; absent when the network has none)."""

    def __init__(self, net: nn.Module, style: str = DEFAULT_STYLE_SOURCE):
        super().__init__()
        if style not in STYLE_SOURCES:
            raise InvalidInputError(f"style source {style!r}: expected one of {', '.join(STYLE_SOURCES)}")
        self.net = net
        self.head = last_linear(net)
        self.leaves = [m for m in net.modules() if not list(m.children())]
        self.stage = _stage_activations(net) if style == "quarter-stage" else []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        store: dict = {}
        styles: list[torch.Tensor] = []
        side = max(2, min(x.shape[-2:]) // 4)

        def early(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[2:]) >= side:
                store["s"] = output

        def stage(module, inputs, output):
            # read at once: an in-place activation's output is the tensor a later layer may overwrite
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                styles.append(_moment_style(output))

        hooks = [self.head.register_forward_hook(lambda module, inputs, output: store.__setitem__("f", inputs[0]))]
        if self.stage:
            hooks += [m.register_forward_hook(stage) for m in self.stage]
        else:
            hooks += [m.register_forward_hook(early) for m in self.leaves]
        try:
            logits = self.net(x)
        finally:
            for h in hooks:
                h.remove()
        parts = [store["f"].flatten(1)]
        if "s" in store:
            styles.append(_style(store["s"]))
        return logits, torch.cat(parts + styles, dim=1)


def _style(maps: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and (unbiased) standard deviation of the whole maps (the legacy layer's style)."""
    s = maps.float()
    return torch.cat([s.mean(dim=(2, 3)), s.std(dim=(2, 3))], dim=1)


def _moment_style(maps: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and (unbiased) standard deviation of the whole maps, from the mean and the mean square:
    one pass over the map (``_style``'s two-pass form reads it twice and subtracts the mean everywhere).

    Written as global average pools of the map and of its square, with the map's size a constant, so that in the
    int8 ONNX file they quantize to ONNX Runtime's QLinearMul and QLinearGlobalAveragePool, which read the uint8
    maps in the channels-last layout the quantized convolutions already use. Reductions over the float maps cost
    a dequantized copy and a transpose of each map, about four times as long (ad hoc, ONNX Runtime's profiler on
    1,000 cells: 70-90 ms against 22 ms). The int8 file's mean square is then held in 8 bits, as it already was
    with the reductions."""
    s = maps.float()
    n = int(s.shape[2]) * int(s.shape[3])  # a constant in the export: the input's side is fixed
    mean = nn.functional.adaptive_avg_pool2d(s, 1).flatten(1)
    square = nn.functional.adaptive_avg_pool2d(s * s, 1).flatten(1)
    var = (square - mean * mean).clamp_min(0.0) * (n / max(1, n - 1))
    return torch.cat([mean, var.sqrt()], dim=1)
