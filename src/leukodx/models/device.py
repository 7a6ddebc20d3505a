"""Where a PyTorch network runs: one rule for the classifier, the detector and the segmenter.

``auto`` takes a CUDA GPU when one is present (PyTorch is imported only where an NVIDIA driver is
installed, so a CPU machine pays nothing to find out), ``cpu`` and ``cuda`` force it; ``cuda``
without a usable GPU is one line, not a traceback from deep inside PyTorch.
"""

from __future__ import annotations

import functools
import os

from leukodx.errors import InvalidInputError

DEVICES = ("auto", "cpu", "cuda")


def cuda_present() -> bool:
    """A CUDA device PyTorch can use."""
    if not os.path.exists("/proc/driver/nvidia/version"):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str, auto_allows_cuda: bool = True) -> str:
    """``auto`` / ``cpu`` / ``cuda`` -> the device to use ('cpu' or 'cuda'), or one line saying why not.
    ``auto_allows_cuda`` False: ``auto`` stays on the CPU (a backend that runs there, e.g. ONNX Runtime)."""
    if device not in DEVICES:
        raise InvalidInputError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cuda" and not cuda_present():
        raise InvalidInputError("--device cuda: no CUDA device here (no NVIDIA driver, or PyTorch without CUDA)")
    return "cuda" if device == "cuda" or (device == "auto" and auto_allows_cuda and cuda_present()) else "cpu"


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread():
    """A context in which numpy's BLAS (OOD distances, small matrix products) runs on one thread. Where
    the other cores are busy (decoding workers, PyTorch's or ONNX Runtime's own threads), OpenBLAS's
    extra threads only spin-wait after each call and take that time from the work that matters."""
    return _blas_controller().limit(limits=1, user_api="blas")
