"""Uploads: kept only when their content is an image, an FCS file or an expression table, within the
size limit; stored under a generated name inside the data folder (the user's file name is only
recorded, never used as a path); written atomically, so a dropped upload leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import BinaryIO

from leukodx.errors import InvalidInputError

CHUNK = 1 << 20
KIND_EXTENSION = {"image": ".img", "fcs": ".fcs", "table": ".csv"}
KIND_WORDS = {"image": "an image", "fcs": "an FCS file", "table": "an expression table"}


def sniff(head: bytes) -> str | None:
    """'image', 'fcs' or 'table' from a file's first bytes; None for anything else."""
    if head.startswith(b"FCS") and head[3:6] in (b"2.0", b"3.0", b"3.1"):
        return "fcs"
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*")) or \
            (head.startswith(b"RIFF") and head[8:12] == b"WEBP"):
        return "image"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.splitlines()
    if len(lines) >= 2 and "\x00" not in text and (lines[0].startswith("#1.") or any(
            len(lines[0].split(sep)) >= 2 and len(lines[1].split(sep)) == len(lines[0].split(sep))
            for sep in (",", "\t"))):
        return "table"
    return None


#: what a file's extension promises; its content must agree (a text file named .jpg is refused)
EXTENSION_KIND = {**{e: "image" for e in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")},
                  ".fcs": "fcs", ".lmd": "fcs", **{e: "table" for e in (".csv", ".tsv", ".txt", ".gct")}}


#: declared content types that say nothing about the content (browsers send these for unknown extensions)
GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream", "application/x-download"}
#: declared types that fit each kind; any other specific type contradicts the content and is refused
DECLARED_FITS = {"image": ("image/",), "fcs": ("application/vnd.isac.fcs", "application/fcs"),
                 "table": ("text/", "application/csv", "application/vnd.ms-excel", "application/tab-separated-values")}
#: a partial upload older than this was left by a server that died mid-write: removed at start-up
STALE_PARTIAL_SECONDS = 3600


def display_name(original_name: str) -> str:
    """The user's file name as data: its last path component, control characters dropped, <= 255 chars."""
    name = os.path.basename(original_name.replace("\\", "/"))
    name = "".join(c for c in name if c.isprintable()).strip()
    return name[:255] if name.strip(".") else "upload"


def store_upload(stream: BinaryIO, original_name: str, folder: Path, max_bytes: int,
                 declared_type: str | None = None) -> dict:
    """Copy ``stream`` into ``folder`` under a generated name after checking what it is; returns
    ``{"stored_name", "kind", "size", "sha256", "original_name"}`` or raises one ``InvalidInputError``.
    ``declared_type`` (the client's Content-Type) may be generic, but may not contradict the content."""
    name = display_name(original_name)
    folder.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            head = b""
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidInputError(f"{name}: larger than the {max_bytes // 2 ** 20} MB upload limit")
                if len(head) < 4096:
                    head += chunk[:4096 - len(head)]
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise InvalidInputError(f"{name}: empty file")
        kind = sniff(head)
        if kind is None:
            raise InvalidInputError(f"{name}: not an image, an FCS file or an expression table (by its content)")
        promised = EXTENSION_KIND.get(os.path.splitext(name)[1].lower())
        if promised is not None and promised != kind:
            raise InvalidInputError(f"{name}: named as {KIND_WORDS[promised]}, but its content is {KIND_WORDS[kind]}")
        declared = (declared_type or "").split(";")[0].strip().lower()
        if declared not in GENERIC_TYPES and not declared.startswith(DECLARED_FITS[kind]):
            raise InvalidInputError(f"{name}: sent as {declared}, but its content is {KIND_WORDS[kind]}")
        if kind == "image":
            _check_image(Path(tmp), name)
        stored = f"{secrets.token_hex(16)}{KIND_EXTENSION[kind]}"
        os.replace(tmp, folder / stored)
        return {"stored_name": stored, "kind": kind, "size": size, "sha256": digest.hexdigest(),
                "original_name": name}
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_image(path: Path, name: str) -> None:
    """The header's size against the decompression-bomb limit, and one full decode."""
    from leukodx.data.images import read_image

    try:
        read_image(path)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{name}: {str(exc).split(': ', 1)[-1]}") from None


def sweep_partials(folder: Path, older_than: float = STALE_PARTIAL_SECONDS) -> int:
    """Remove partial uploads left by a server that was killed mid-write; returns how many."""
    import time

    removed = 0
    for part in folder.glob(".upload-*.part"):
        try:
            if time.time() - part.stat().st_mtime > older_than:
                part.unlink()
                removed += 1
        except OSError:
            continue
    return removed
