"""One door to every network: ``create_network(arch, num_classes, pretrained=...)``.

Architectures come from timm. ``pretrained`` is explicit: ``False`` trains from scratch; a path
loads a local ``.safetensors`` file (never a pickle); ``True`` is refused with a clear message:
no weights are ever fetched from a hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch

import leukodx.models.networks  # noqa: F401  (the review papers' own networks join timm's registry)
from leukodx.errors import DataNotFoundError, InvalidInputError, LeukodxError


def list_architectures(pattern: str = "*") -> list[str]:
    return timm.list_models(pattern)


def create_network(arch: str, num_classes: int, pretrained: bool | str | os.PathLike = False,
                   in_chans: int = 3) -> torch.nn.Module:
    if not timm.is_model(arch):
        raise InvalidInputError(f"architecture {arch!r} is not known to timm (see `timm.list_models()`)")
    if pretrained is True:
        raise LeukodxError(f"{arch}: pretrained=True would download hub weights, which leukodx never does; "
                           "pass a local .safetensors file (pretrained=PATH) or train from scratch")
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    if pretrained:
        load_backbone_weights(net, pretrained)
    return net


def load_backbone_weights(net: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load matching tensors from a local safetensors file, skipping a differently sized head."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"{path}: pretrained weights file not found")
    if path.suffix != ".safetensors":
        raise InvalidInputError(f"{path}: only .safetensors weights are loaded (pickles can run code)")
    state = load_file(str(path))
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise InvalidInputError(f"{path}: no tensor matches the {type(net).__name__} architecture")
    net.load_state_dict(usable, strict=False)


def network_from_card(card: dict) -> torch.nn.Module:
    """The untrained network an image-classifier card describes (its ``arch`` and classes)."""
    return create_network(card["arch"], num_classes=len(card["classes"]))
