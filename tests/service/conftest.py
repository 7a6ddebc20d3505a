"""The service's tests run against both databases it supports: an embedded SQLite file and a real
PostgreSQL server (``leukodx.service.testing.TemporaryPostgres``: the system's PostgreSQL binaries in a
private folder on a free port; Debian's ``postgresql`` package, which ``.ci/run`` installs when missing)."""

from __future__ import annotations

import os

import pytest

from leukodx.service.config import Settings
from leukodx.service.db import make_engine, session_factory
from leukodx.service.migrate import upgrade
from leukodx.service.security import add_user

PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session (``leukodx.service.testing``)."""
    from leukodx.service.testing import TemporaryPostgres

    with TemporaryPostgres() as pg:
        yield pg


_databases = iter(range(10 ** 6))


def make_settings(request, tmp_path, database: str) -> Settings:
    """Fresh service settings on ``database`` (sqlite | postgresql), the schema migrated."""
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'service.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database(f"t{next(_databases)}_{os.getpid()}")
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
