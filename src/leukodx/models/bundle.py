"""A model bundle: ``model.safetensors`` + ``card.json`` (what it is, how it was made, how well it
does, and the sha256 of its weights). Loading checks the hash before any tensor is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from leukodx import _atomic
from leukodx.data.verify import sha256_file
from leukodx.errors import DataNotFoundError, IntegrityError, InvalidInputError
from leukodx.models.architectures import create_network

WEIGHTS = "model.safetensors"
CARD = "card.json"
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "weights"


def save_bundle(directory: str | os.PathLike, net: torch.nn.Module, card: dict) -> dict:
    """Write weights and card atomically; the card gains ``sha256`` and ``size_bytes``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    with _atomic.atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"arch": str(card.get("arch", ""))})
        digest, size = sha256_file(tmp), tmp.stat().st_size
    card = {**card, "weights": WEIGHTS, "sha256": digest, "size_bytes": size}
    _atomic.write_json(directory / CARD, card)
    return card


def read_card(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CARD
    if not path.exists():
        raise DataNotFoundError(f"{path}: model card missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: model card is not valid JSON ({exc.msg})") from None


def verified_weights(directory: str | os.PathLike, task: str | None = None) -> tuple[dict, Path]:
    """The card and the weights path of a bundle, after checking the weights' sha256 (and task)."""
    directory = Path(directory)
    card = read_card(directory)
    if task is not None and card.get("task") != task:
        raise InvalidInputError(f"{directory}: not a {task} model (its card says {card.get('task')!r})")
    weights = directory / card.get("weights", WEIGHTS)
    if not weights.exists():
        raise DataNotFoundError(f"{weights}: weights file missing")
    actual = sha256_file(weights)
    if actual != card.get("sha256"):
        raise IntegrityError(
            f"{weights}: sha256 {actual[:12]}... does not match its card ({str(card.get('sha256'))[:12]}...); "
            "the file is corrupt or was replaced"
        )
    return card, weights


def load_bundle(directory: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Network (eval mode) and card; raises ``IntegrityError`` if the weights' hash is wrong."""
    card, weights = verified_weights(directory)
    net = create_network(card["arch"], num_classes=len(card["classes"]))
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    return net, card


def load_task_network(name_or_path: str | os.PathLike, bundled_dir: Path, task: str,
                      build: Callable[[dict], torch.nn.Module]) -> tuple[torch.nn.Module, dict]:
    """A detection / segmentation bundle: resolved by name under ``bundled_dir`` or as a folder,
    its task and sha256 checked, the network rebuilt from its card by ``build`` and loaded."""
    directory = resolve_bundle(name_or_path, bundled_dir, f"{task} model")
    card, weights = verified_weights(directory, task=task)
    net = build(card)
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    return net, card


def bundled_models() -> list[str]:
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(d.name for d in BUNDLED_DIR.iterdir() if (d / CARD).exists())


def resolve_bundle(name_or_path: str | os.PathLike, bundled_dir: Path = BUNDLED_DIR, noun: str = "model") -> Path:
    """A bundled model's name (a folder of ``bundled_dir``), or a folder holding a bundle."""
    from leukodx.errors import ModelNotFoundError

    key = str(name_or_path)
    if (bundled_dir / key / CARD).exists():
        return bundled_dir / key
    path = Path(key)
    if path.is_dir() and (path / CARD).exists():
        return path
    if path.is_file() and path.name == CARD:
        return path.parent
    known = sorted(d.name for d in bundled_dir.iterdir() if (d / CARD).exists()) if bundled_dir.is_dir() else []
    raise ModelNotFoundError(f"{key}: no such {noun} (bundled: {', '.join(known) or 'none installed'}; "
                             f"or a folder with {CARD} and {WEIGHTS})")
