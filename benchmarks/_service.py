"""Shared by the service benchmarks: a real ``leukodx serve`` / ``leukodx worker`` process on a
throwaway PostgreSQL server or a SQLite file, a user, real cell images, and the database checks
(integrity, orphans, duplicated or lost results)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from leukodx.data.registry import load_dataset
from leukodx.service.testing import free_port

PASSWORD = "benchmark password"


def leukodx(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leukodx", *map(str, args)], input=stdin, capture_output=True,
                          text=True, check=True)


def prepare(data_dir: Path, url: str) -> None:
    """Schema and a reviewer account."""
    leukodx("db", "upgrade", "--data-dir", data_dir, "--database-url", url)
    leukodx("users", "add", "bench", "--role", "reviewer", "--data-dir", data_dir, "--database-url", url,
            stdin=PASSWORD + "\n")


class Service:
    """``leukodx serve`` in its own process (kill -9 able), logging to ``data_dir/serve-N.log``."""

    def __init__(self, data_dir: Path, url: str, *options: str, port: int | None = None):
        self.data_dir, self.url, self.options = data_dir, url, options
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Service":
        self.starts += 1
        log = open(self.data_dir / f"serve-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "leukodx", "serve", "--port", str(self.port), "--data-dir",
                                      str(self.data_dir), "--database-url", self.url, *self.options],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"leukodx serve exited: {(self.data_dir / f'serve-{self.starts}.log').read_text()}")
            time.sleep(0.2)
        raise RuntimeError("leukodx serve did not answer /health within 120 s")

    def kill(self) -> None:
        """kill -9: no shutdown, no cleanup."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(data_dir: Path, url: str, *options: str, log_name: str = "worker.log") -> subprocess.Popen:
    log = open(data_dir / log_name, "ab")
    return subprocess.Popen([sys.executable, "-m", "leukodx", "worker", "--data-dir", str(data_dir), "--database-url",
                             url, *options], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def token(base: str) -> dict:
    r = httpx.post(base + "/api/token", data={"username": "bench", "password": PASSWORD}, timeout=60)
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def cell_images(n: int, offset: int = 0) -> list[Path]:
    """``n`` distinct pbc cell images (real data), spread over the set."""
    pbc = load_dataset("pbc")
    step = max(1, len(pbc.labels) // (n + offset))
    return [pbc.abspath(i * step) for i in range(offset, offset + n)]


def database_checks(url: str) -> dict:
    """Integrity of the database after faults: the engine's own check, rows pointing at nothing,
    more than one result per job, more than one cell per (job, file, box)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    checks = {}
    with engine.connect() as c:
        if url.startswith("sqlite"):
            checks["integrity_check"] = c.execute(text("PRAGMA integrity_check")).scalar()
            checks["foreign_key_violations"] = len(c.execute(text("PRAGMA foreign_key_check")).all())
        else:
            c.execute(text("CREATE EXTENSION IF NOT EXISTS amcheck"))
            indexes = c.execute(text(
                "SELECT c.oid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE a.amname = 'btree' AND n.nspname = 'public'")).all()
            for (oid,) in indexes:
                c.execute(text("SELECT bt_index_check(:oid, true)"), {"oid": oid})
            checks["integrity_check"] = f"amcheck ok on {len(indexes)} btree indexes"
        orphans = {
            "cells without file": "SELECT count(*) FROM cells WHERE file_id NOT IN (SELECT id FROM files)",
            "cells without result": "SELECT count(*) FROM cells WHERE result_id NOT IN (SELECT id FROM results)",
            "results without job": "SELECT count(*) FROM results WHERE job_id NOT IN (SELECT id FROM jobs)",
            "files without case": "SELECT count(*) FROM files WHERE case_id NOT IN (SELECT id FROM cases)"}
        checks["orphans"] = {k: c.execute(text(q)).scalar() for k, q in orphans.items()}
        checks["jobs_with_several_results"] = c.execute(text(
            "SELECT count(*) FROM (SELECT job_id FROM results GROUP BY job_id HAVING count(*) > 1) x")).scalar()
        checks["files_with_several_cells_in_one_result"] = c.execute(text(
            "SELECT count(*) FROM (SELECT result_id, file_id FROM cells JOIN results r ON r.id = cells.result_id "
            "WHERE r.kind = 'cells' GROUP BY result_id, file_id HAVING count(*) > 1) x")).scalar()
        checks["stored_names"] = {row[0] for row in c.execute(text("SELECT stored_name FROM files"))}
    engine.dispose()
    return checks


def uploads_agree(data_dir: Path, stored_names: set[str]) -> dict:
    """Files in the uploads folder against the database: none half-written, none without a row."""
    present = {p.name for p in (data_dir / "uploads").iterdir()}
    return {"partial_files": sorted(n for n in present if n.endswith(".part")),
            "files_without_row": sorted(n for n in present - stored_names if not n.endswith(".part")),
            "rows_without_file": sorted(stored_names - present)}
