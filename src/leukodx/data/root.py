"""Where the data lives: ``--data-root`` > ``$LEUKODX_DATA`` > ``../shared/data`` beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

from leukodx.errors import DataNotFoundError

ENV_VAR = "LEUKODX_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[3]


def default_candidates() -> list[Path]:
    """Places searched when nothing is configured: beside a source checkout, then beside cwd."""
    return [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Return the data root, or raise ``DataNotFoundError`` saying what was tried."""
    if data_root is not None:
        root, origin = Path(data_root), "--data-root"
    elif os.environ.get(ENV_VAR):
        root, origin = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        for candidate in default_candidates():
            if candidate.is_dir():
                return candidate.resolve()
        tried = ", ".join(str(c) for c in default_candidates())
        raise DataNotFoundError(
            f"no data root found (tried {tried}); set {ENV_VAR} or pass --data-root"
        )
    if not root.is_dir():
        raise DataNotFoundError(f"{root}: data root from {origin} does not exist or is not a folder")
    return root.resolve()
