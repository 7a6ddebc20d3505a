"""Shared fixtures: small real subsets of ../shared/data, and tiny models trained on them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from leukodx.data.registry import load_dataset
from leukodx.data.root import resolve_data_root


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Decoded-array and ONNX caches go to a temporary folder, never the user's."""
    old = os.environ.get("LEUKODX_CACHE")
    os.environ["LEUKODX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield
    if old is None:
        os.environ.pop("LEUKODX_CACHE", None)
    else:
        os.environ["LEUKODX_CACHE"] = old


@pytest.fixture(scope="session")
def data_root() -> Path:
    return resolve_data_root()


def _copy_subset(dataset: str, dest: Path, per_class: int, offset: int = 0, lower: bool = False) -> Path:
    index = load_dataset(dataset)
    for c, name in enumerate(index.classes):
        members = np.flatnonzero(index.labels == c)[offset:offset + per_class]
        folder = dest / (name.lower() if lower else name)
        folder.mkdir(parents=True, exist_ok=True)
        for i in members:
            shutil.copy(index.abspath(i), folder / Path(index.paths[i]).name)
    return dest


@pytest.fixture(scope="session")
def aria_folder(tmp_path_factory) -> Path:
    """6 real all-aria fields per stage, class folders in lower case (matching is case-insensitive)."""
    return _copy_subset("all-aria", tmp_path_factory.mktemp("aria"), 6, offset=100, lower=True)


@pytest.fixture(scope="session")
def pbc_folder(tmp_path_factory) -> Path:
    """4 real pbc cells per type."""
    return _copy_subset("pbc", tmp_path_factory.mktemp("pbc"), 4, offset=50)


@pytest.fixture(scope="session")
def real_jpeg(data_root) -> Path:
    index = load_dataset("pbc")
    return index.abspath(0)


def _train_tiny(dataset: str, out: Path, size: int = 32) -> Path:
    from leukodx.cli.app import main

    rc = main(["train", "-d", dataset, "-o", str(out), "--epochs", "1", "--max-per-class", "12",
               "--size", str(size), "--batch-size", "16", "-q"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def tiny_aria_model(tmp_path_factory) -> Path:
    """A 1-epoch model on 12 all-aria fields per stage: real pipeline, no accuracy expected."""
    return _train_tiny("all-aria", tmp_path_factory.mktemp("models") / "tiny-aria")


@pytest.fixture(scope="session")
def tiny_pbc_model(tmp_path_factory) -> Path:
    return _train_tiny("pbc", tmp_path_factory.mktemp("models") / "tiny-pbc")
