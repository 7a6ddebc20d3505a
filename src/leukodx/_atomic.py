"""Atomic file writes: a crash never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_npy(path: str | os.PathLike, array) -> None:
    """``numpy.save`` without pickles, atomically."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """``numpy.savez`` (uncompressed), atomically."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON: NaN and infinities become ``null`` (JSON has no NaN), numpy values plain numbers."""
    write_text(path, dumps(obj, indent=2) + "\n")


def dumps(obj: Any, indent: int | None = None) -> str:
    """``json.dumps`` that never writes a ``NaN`` / ``Infinity`` literal."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=False, allow_nan=False, default=_json_default)


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` with non-finite floats (also numpy ones, also inside arrays) replaced by None."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if type(obj).__module__ == "numpy":
        return json_safe(_json_default(obj))
    return obj


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays appear in metric dicts; Paths in configs
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def check_output_file(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder in its place, or no
    writable folder to hold it (one line naming the path)."""
    from leukodx.errors import InvalidInputError

    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a folder; give a file name to write")
    _check_writable(path.parent, path)
    return path


def check_output_dir(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output folder that cannot be written: a file in its place, or a
    parent that cannot hold it."""
    from leukodx.errors import InvalidInputError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{path}: is a file; give a folder to write into")
    _check_writable(path if path.exists() else path.parent, path)
    return path


def _check_writable(folder: Path, target: Path) -> None:
    from leukodx.errors import InvalidInputError

    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(f"{target}: {existing} is a file, so nothing can be written below it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{target}: cannot write into {existing} (permission denied or read-only)")


class OutputNames:
    """File stems for a batch's per-item outputs: unique even when inputs share a stem (good.jpg,
    good.bmp, a/good.jpg) or differ only by case (on case-insensitive file systems), and never one of
    the batch's own file stems (``reserved``: a field called summary.jpg must not overwrite summary.json)."""

    def __init__(self, reserved: tuple[str, ...] = ()):
        self._taken = {r.lower() for r in reserved}

    def stem_for(self, path: str | os.PathLike) -> str:
        base = Path(path).stem or "item"
        stem, n = base, 2
        while stem.lower() in self._taken:
            stem, n = f"{base}-{n}", n + 1
        self._taken.add(stem.lower())
        return stem
