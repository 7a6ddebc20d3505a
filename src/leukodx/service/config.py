"""Where the service keeps its data: one data folder (uploads, the embedded SQLite database) and a
database URL (default: SQLite inside the data folder; ``postgresql+psycopg://...`` for a lab server)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from leukodx.errors import InvalidInputError

DEFAULT_DATA_DIR = Path(os.environ.get("LEUKODX_SERVICE_DIR", Path.home() / ".local" / "share" / "leukodx"))
#: one uploaded file may not exceed this (a 10,000^2 px PNG is ~300 MB; FCS files rarely pass 100 MB)
MAX_UPLOAD_BYTES = 512 * 2 ** 20
#: one request (all its files) may not exceed this: refused with 413 before its body is read, when it says
#: its length, else as soon as this many bytes have arrived
MAX_REQUEST_BYTES = 2 ** 30
#: a running job whose worker has not beaten its heartbeat for this long is taken to be dead and run again
STALE_SECONDS = 120.0


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_request_bytes: int = MAX_REQUEST_BYTES
    stale_seconds: float = STALE_SECONDS
    #: browser session cookies only over HTTPS (browsers treat http://localhost as secure too); turn off
    #: only behind a proxy that terminates TLS and forwards plain HTTP on another host name
    secure_cookies: bool = True

    @classmethod
    def resolve(cls, data_dir: str | os.PathLike | None = None, database_url: str | None = None,
                **options) -> "Settings":
        folder = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
        url = database_url or os.environ.get("LEUKODX_DATABASE_URL") or f"sqlite:///{folder / 'leukodx.db'}"
        if not url.startswith(("sqlite:///", "postgresql+psycopg://", "postgresql://")):
            raise InvalidInputError(f"--database-url {url!r}: expected sqlite:///FILE or postgresql+psycopg://...")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return cls(data_dir=folder, database_url=url, **options)

    @property
    def uploads(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def work(self) -> Path:
        """Where a job streams its rows while it runs (one folder per attempt, removed when it ends)."""
        return self.data_dir / "work"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def prepare(self) -> "Settings":
        """Create the data folders (the database file's folder included)."""
        try:
            self.uploads.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"{self.data_dir}: cannot create the data folder ({exc.strerror})") from None
        return self
