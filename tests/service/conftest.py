"""The service's tests run against both databases it supports: an embedded SQLite file and a real
PostgreSQL server, started here from the system's PostgreSQL binaries in a private folder on a free
port (Debian's ``postgresql`` package; ``.ci/run`` installs it when missing)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from leukodx.service.config import Settings
from leukodx.service.db import make_engine, session_factory
from leukodx.service.migrate import upgrade
from leukodx.service.security import add_user

PASSWORD = "correct horse battery"


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL server binaries not found: apt-get install postgresql (see README)"
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server (trust auth, TCP on localhost); yields its base URL."""
    import tempfile

    # not under pytest's folder: that is private to this user, and the server may run as another
    bin_dir, root = _pg_bin(), Path(tempfile.mkdtemp(prefix="leukodx-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres system user
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_databases = iter(range(10 ** 6))


def make_settings(request, tmp_path, database: str) -> Settings:
    """Fresh service settings on ``database`` (sqlite | postgresql), the schema migrated."""
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'service.db'}"
    else:
        import psycopg

        base = request.getfixturevalue("postgres_server")
        name = f"t{next(_databases)}_{os.getpid()}"
        with psycopg.connect(base.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        url = f"{base}/{name}"
    settings = Settings.resolve(tmp_path / "data", url).prepare()
    upgrade(settings.database_url)
    return settings


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path) -> Settings:
    """Fresh service settings with the schema migrated, on each database."""
    return make_settings(request, tmp_path, request.param)


@pytest.fixture
def factory(settings):
    engine = make_engine(settings.database_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def users(factory):
    with factory() as s:
        add_user(s, "ada", PASSWORD, "admin")
        add_user(s, "rev", PASSWORD, "reviewer")
    return {"admin": "ada", "reviewer": "rev"}


@pytest.fixture
def client(settings, users):
    from fastapi.testclient import TestClient

    from leukodx.service.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def login(client, name: str, password: str = PASSWORD) -> dict:
    r = client.post("/api/token", data={"username": name, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}
