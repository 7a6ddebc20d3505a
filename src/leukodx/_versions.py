"""Versions recorded in every result and model card."""

from __future__ import annotations

import platform
from importlib import metadata


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("leukodx", "torch", "torchvision", "timm", "numpy", "scikit-learn", "onnxruntime", "flowio", "flowutils"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    out["platform"] = platform.platform(terse=True)
    return out
