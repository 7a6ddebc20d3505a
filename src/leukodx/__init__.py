"""leukodx: deep-learning leukemia diagnosis with honest, reproducible evaluation.

The Python API mirrors the command line::

    import leukodx
    leukodx.list_models()                      # every bundled model (any task)
    clf = leukodx.load("wbc-multisite")        # any bundle by name or folder
    clf.predict(["cell.jpg", pil_image, array]).to_pandas()
    leukodx.diagnose("case_folder/")           # the main job, as ``leukodx diagnose``
    leukodx.open_fcs("sample.fcs")             # FCS reading, as ``leukodx flow info``

Heavy libraries (torch, timm) are imported only when a function needs them.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("leukodx")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__", "load", "load_model", "list_models", "load_dataset", "list_datasets", "diagnose",
           "open_fcs", "LeukodxError"]

from leukodx.errors import LeukodxError  # noqa: E402  (light: no third-party imports)


def load(name_or_path, task: str | None = None, **kwargs):
    """Any bundled model by name, or a bundle folder (classifier, detector, segmenter, flow, expression)."""
    from leukodx.hub import load as _load

    return _load(name_or_path, task=task, **kwargs)


def load_model(name_or_path, backend: str = "auto"):
    """An image classifier bundle, ready to ``predict`` (``load`` restricted to that task)."""
    return load(name_or_path, task="image-classification", backend=backend)


def list_models(task: str | None = None) -> list[str]:
    """Names of the bundled models, optionally of one task."""
    from leukodx.hub import list_models as _list

    return _list(task)


def load_dataset(name_or_path, data_root=None):
    from leukodx.data.registry import load_dataset as _load

    return _load(name_or_path, data_root)


def list_datasets() -> list[str]:
    from leukodx.data.registry import list_datasets as _list

    return _list()


def diagnose(inputs, **kwargs) -> dict:
    """One case (folder or files of cell images or smear fields) -> results, summary and flags."""
    from leukodx.diagnosis.case import diagnose as _diagnose

    return _diagnose(inputs, **kwargs)


def open_fcs(path, dataset: int = 0):
    """An FCS file's metadata with its events streamed on demand (``.iter_events()``)."""
    from leukodx.cytometry.fcs import open_fcs as _open

    return _open(path, dataset=dataset)
