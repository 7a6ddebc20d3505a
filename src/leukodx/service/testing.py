"""A throwaway PostgreSQL server for the service's tests and benchmarks: started from the system's
PostgreSQL binaries (Debian's ``postgresql`` package) in a private folder, on a free localhost port,
trust authentication, stopped and removed on exit. Not for production data."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from leukodx.errors import DataNotFoundError


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise DataNotFoundError("PostgreSQL server binaries not found: apt-get install postgresql (see README)")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryPostgres:
    """``with TemporaryPostgres() as pg: pg.create_database("x")`` -> a SQLAlchemy URL."""

    def __init__(self):
        self.bin, self.root, self.port = pg_bin(), None, None
        self.as_user: list[str] = []

    def __enter__(self) -> "TemporaryPostgres":
        # not under a per-user temporary folder: as root the server runs as the postgres system user
        self.root = Path(tempfile.mkdtemp(prefix="leukodx-pg-"))
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.root, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        data = self.root / "data"
        self._run("initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        self._run("pg_ctl", "-D", data, "-l", self.root / "log", "-w", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *map(str, args)], check=True, capture_output=True)

    @property
    def base_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"{self.base_url}/{name}"
