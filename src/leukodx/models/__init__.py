"""Architectures (from timm), model bundles and the classifier that runs them."""

from leukodx.models.architectures import create_network, list_architectures

__all__ = ["create_network", "list_architectures"]
