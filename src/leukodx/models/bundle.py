"""Model bundles: the one save / load / verify path for every kind of leukodx model.

A bundle is a folder with ``model.safetensors`` (the weights: network tensors, or the arrays of a
NumPy / scikit-learn model) and ``card.json`` (a :class:`~leukodx.models.card.ModelCard`). Loading
validates the card against its task's schema and checks the weights' sha256 before any tensor
is used; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Mapping

from leukodx import _atomic
from leukodx._hashing import sha256_file
from leukodx.errors import (DataNotFoundError, IntegrityError, InvalidInputError, LeukodxError, ModelNotFoundError,
                            first_line)
from leukodx.models.card import TASKS, ModelCard

WEIGHTS = "model.safetensors"
CARD = "card.json"
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "weights"


# --- writing -------------------------------------------------------------------------------------

def save_bundle(directory: str | os.PathLike, weights, card: dict) -> dict:
    """Write weights (a torch module, or a dict of torch / NumPy arrays) and the card, atomically.

    The card gains ``weights``, ``sha256`` and ``size_bytes`` and is validated against its task's
    schema before anything is written, so no malformed bundle can be made.
    """
    directory = Path(directory)
    tensors = _state(weights)
    ModelCard.from_dict({**card, "sha256": "pending"}, directory / CARD)
    directory.mkdir(parents=True, exist_ok=True)
    with _atomic.atomic_path(directory / WEIGHTS) as tmp:
        _save_tensors(tensors, tmp, {"task": str(card.get("task", "")), "name": str(card.get("name", ""))})
        digest, size = sha256_file(tmp), tmp.stat().st_size
    card = ModelCard.from_dict({**card, "weights": WEIGHTS, "sha256": digest, "size_bytes": size}).to_dict()
    _atomic.write_json(directory / CARD, card)
    return card


def _state(weights) -> dict:
    if hasattr(weights, "state_dict"):
        return {k: v.detach().contiguous().cpu() for k, v in weights.state_dict().items()}
    if isinstance(weights, Mapping):
        return dict(weights)
    raise InvalidInputError(f"cannot save weights of type {type(weights).__name__}")


def _save_tensors(tensors: dict, path: Path, metadata: dict) -> None:
    import numpy as np

    if all(isinstance(v, np.ndarray) for v in tensors.values()):
        from safetensors.numpy import save_file as save_np

        save_np({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    else:
        from safetensors.torch import save_file as save_pt

        save_pt(tensors, str(path), metadata=metadata)


# --- reading -------------------------------------------------------------------------------------

def read_card(directory: str | os.PathLike) -> dict:
    """A bundle's card, validated and read as the current schema (older cards included)."""
    path = Path(directory) / CARD
    if not path.is_file():
        raise DataNotFoundError(f"{path}: model card missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: model card is not valid JSON ({getattr(exc, 'msg', exc)})") from None
    except OSError as exc:
        raise InvalidInputError(f"{path}: model card cannot be read ({exc.strerror})") from None
    return ModelCard.from_dict(raw, path).to_dict()


def verify_bundle(directory: str | os.PathLike, task: str | None = None) -> tuple[dict, Path]:
    """The card and the weights path of a bundle, after checking its schema, task and weights' sha256."""
    directory = Path(directory)
    card = read_card(directory)
    if task is not None and card["task"] != task:
        raise InvalidInputError(f"{directory}: a {card['task']} model, not a {task} model")
    weights = directory / str(card.get("weights") or WEIGHTS)
    if weights.parent.resolve() != directory.resolve():
        raise InvalidInputError(f"{directory / CARD}: weights must lie in the bundle folder")
    if not weights.is_file():
        raise DataNotFoundError(f"{weights}: weights file missing")
    actual = sha256_file(weights)
    if actual != card.get("sha256"):
        raise IntegrityError(
            f"{weights}: sha256 {actual[:12]}... does not match its card ({str(card.get('sha256'))[:12]}...); "
            "the file is corrupt or was replaced"
        )
    return card, weights


def listed_file(directory: str | os.PathLike, entry: dict, default: str) -> Path:
    """A file beside the weights that a card entry lists (``file``, ``sha256``), checked against that sha256."""
    path = Path(directory) / entry.get("file", default)
    if not path.is_file():
        raise IntegrityError(f"{path}: missing, but the model card lists it")
    if sha256_file(path) != entry.get("sha256"):
        raise IntegrityError(f"{path}: sha256 does not match the model card")
    return path


def load_tensors(weights: Path, framework: str = "pt") -> dict:
    """The tensors of a verified weights file (``pt``: torch tensors, ``np``: NumPy arrays)."""
    try:
        if framework == "np":
            from safetensors.numpy import load_file as load_np

            return load_np(str(weights))
        from safetensors.torch import load_file as load_pt

        return load_pt(str(weights))
    except Exception as exc:  # safetensors raises its own error type (and OSError, ValueError) for bad bytes
        raise InvalidInputError(f"{weights}: not a readable safetensors file ({type(exc).__name__})") from None


def save_arrays(directory: str | os.PathLike, arrays: dict, card: dict) -> dict:
    """A NumPy model (scikit-learn estimators exported as arrays) as a bundle: float64 arrays + card."""
    import numpy as np

    return save_bundle(directory, {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}, card)


def load_arrays(name_or_path: str | os.PathLike, task: str) -> tuple[dict, dict, Path]:
    """A NumPy model's bundle of ``task``: resolved, verified; returns ``(card, arrays, directory)``."""
    directory = resolve_bundle(name_or_path, task=task)
    card, weights = verify_bundle(directory, task=task)
    return card, load_tensors(weights, "np"), directory


@contextlib.contextmanager
def interpreting(directory: str | os.PathLike,
                 what: str = "model bundle is incomplete or inconsistent") -> Iterator[None]:
    """Building a model from a verified bundle. The card and arrays are data from disk like any input:
    a field or array that is missing, of the wrong type or inconsistent with the others becomes one
    error naming the bundle (``directory: what (Type: detail)``), never a KeyError or TypeError from
    deep inside the model."""
    try:
        yield
    except LeukodxError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OverflowError) as exc:
        raise InvalidInputError(f"{directory}: {what} ({type(exc).__name__}: {first_line(exc, 200)})") from None


def load_network(name_or_path: str | os.PathLike, task: str, build: Callable[[dict], object]):
    """A network bundle of ``task``: resolved by name or folder, verified, rebuilt by ``build(card)``
    and loaded in eval mode. Returns ``(net, card, directory)``."""
    directory = resolve_bundle(name_or_path, task=task)
    card, weights = verify_bundle(directory, task=task)
    with interpreting(directory / CARD, "cannot rebuild the network from its card"):
        net = build(card)
    try:
        net.load_state_dict(load_tensors(weights))
    except RuntimeError as exc:  # tensors of another architecture
        first = str(exc).strip().splitlines()[0]
        raise InvalidInputError(f"{weights}: weights do not fit the card's network ({first})") from None
    net.eval()
    return net, card, directory


# --- finding -------------------------------------------------------------------------------------

def bundled() -> dict[str, Path]:
    """Every bundle shipped with leukodx, by name (folder name), wherever it sits under ``weights/``."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.parent.name: p.parent for p in sorted(BUNDLED_DIR.rglob(CARD))}


def bundled_models(task: str | None = None) -> list[str]:
    """Names of the shipped bundles, optionally of one task."""
    if task is not None and task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    out = []
    for name, directory in bundled().items():
        if task is None or read_card(directory)["task"] == task:
            out.append(name)
    return sorted(out)


def resolve_bundle(name_or_path: str | os.PathLike, task: str | None = None) -> Path:
    """A shipped bundle's name, or a folder holding a bundle (or its card.json)."""
    key = str(name_or_path)
    shipped = bundled()
    if key in shipped:
        return shipped[key]
    path = Path(key)
    if path.is_dir() and (path / CARD).exists():
        return path
    if path.is_file() and path.name == CARD:
        return path.parent
    if path.is_dir():
        raise DataNotFoundError(f"{path}: not a model bundle ({CARD} missing)")
    names = bundled_models(task) if task else sorted(shipped)
    noun = f"{task} model" if task else "model"
    raise ModelNotFoundError(f"{key}: no such {noun} (bundled: {', '.join(names) or 'none installed'}; "
                             f"or a folder with {CARD} and {WEIGHTS})")
