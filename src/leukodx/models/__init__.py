"""Architectures (from timm), model bundles and the classifier that runs them.

``create_network`` / ``list_architectures`` are imported on first use: the bundle and card code is
also what the flow and expression models load through, and they should not pay for torch and timm.
"""

__all__ = ["create_network", "list_architectures"]


def __getattr__(name: str):
    if name in __all__:
        from leukodx.models import architectures

        return getattr(architectures, name)
    raise AttributeError(f"module 'leukodx.models' has no attribute {name!r}")
