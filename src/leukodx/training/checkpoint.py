"""Resumable training state in safetensors + JSON (no pickles anywhere).

Optimizer state is a nested dict of tensors and numbers: tensors go to safetensors under
flattened keys, everything else to JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from leukodx import _atomic


def save_state(directory: str | os.PathLike, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler, extra: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    opt = optimizer.state_dict()
    opt_scalars: dict = {}
    for pid, pstate in opt["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                opt_scalars.setdefault(str(pid), {})[name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    with _atomic.atomic_path(directory / "state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    meta = {
        "optim_param_groups": opt["param_groups"],
        "optim_scalars": opt_scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **extra,
    }
    _atomic.write_json(directory / "state.json", meta)


def load_state(directory: str | os.PathLike, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler) -> dict:
    directory = Path(directory)
    tensors = load_file(str(directory / "state.safetensors"))
    meta = json.loads((directory / "state.json").read_text())
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, scalars in meta["optim_scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optim_param_groups"]})
    if scheduler is not None and meta.get("scheduler"):
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def has_state(directory: str | os.PathLike) -> bool:
    d = Path(directory)
    return (d / "state.safetensors").exists() and (d / "state.json").exists()


def read_meta(directory: str | os.PathLike) -> dict:
    return json.loads((Path(directory) / "state.json").read_text())
