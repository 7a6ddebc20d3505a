"""What made a result: versions, git commit, exact command line. Recorded in every result and card."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("leukodx", "torch", "torchvision", "timm", "numpy", "scikit-learn", "onnxruntime", "flowio", "flowutils")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    out["platform"] = platform.platform(terse=True)
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The source tree's git commit (``+dirty`` when it has uncommitted changes), or None outside git."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "src"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 (16 hex) over every Python source file of the installed leukodx package: changes with any
    code change, whether or not the tree is a git checkout. Resumable caches are keyed on it."""
    import hashlib

    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def code_version() -> str:
    """The git commit when running from a checkout, else the installed package version."""
    return git_commit() or f"leukodx {versions().get('leukodx', 'unknown')}"


_COMMAND: list[str] | None = None


def set_command(argv: list[str] | None) -> None:
    """Record the command being run (the CLI does, so in-process calls record their own argv)."""
    global _COMMAND
    _COMMAND = None if argv is None else list(argv)


def command_line(argv: list[str] | None = None) -> str:
    """The exact command as typed (program name shortened to its basename)."""
    argv = list(argv if argv is not None else _COMMAND if _COMMAND is not None else sys.argv)
    if argv:
        argv[0] = os.path.basename(argv[0])
    return " ".join(argv)


def provenance(argv: list[str] | None = None) -> dict:
    """Everything needed to trace a figure back: when, which code, which command, which libraries."""
    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(), "git_commit": git_commit(), "source_sha256": source_digest(),
            "argv": command_line(argv),
            "versions": versions()}
