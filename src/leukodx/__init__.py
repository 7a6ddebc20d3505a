"""leukodx: deep-learning leukemia diagnosis with honest, reproducible evaluation."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("leukodx")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__", "load_model", "list_models", "load_dataset", "list_datasets"]


def load_model(name_or_path, backend: str = "auto"):
    """A bundled model by name or a bundle folder, ready to ``predict``."""
    from leukodx.inference.classifier import load_model as _load

    return _load(name_or_path, backend=backend)


def list_models() -> list[str]:
    from leukodx.models.bundle import bundled_models

    return bundled_models()


def load_dataset(name_or_path, data_root=None):
    from leukodx.data.registry import load_dataset as _load

    return _load(name_or_path, data_root)


def list_datasets() -> list[str]:
    from leukodx.data.registry import list_datasets as _list

    return _list()
