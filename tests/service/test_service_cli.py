"""``leukodx db upgrade``, ``users add`` (password from stdin), ``serve`` answering over HTTP with its
embedded worker, and ``worker --once``: the commands a lab runs, as separate processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from leukodx.data.registry import load_dataset


def _leukodx(*args, stdin: str | None = None, env=None):
    return subprocess.run([sys.executable, "-m", "leukodx", *map(str, args)], input=stdin, capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_db_upgrade_and_users_add(tmp_path):
    from leukodx.service.migrate import head

    r = _leukodx("db", "upgrade", "--data-dir", tmp_path)
    assert r.returncode == 0 and f"schema at revision {head()}" in r.stderr and head() != "0001"
    r = _leukodx("users", "add", "ada", "--role", "admin", "--data-dir", tmp_path, stdin="a long password\n")
    assert r.returncode == 0 and "user 'ada' added (admin)" in r.stderr
    again = _leukodx("users", "add", "ada", "--data-dir", tmp_path, stdin="a long password\n")
    assert again.returncode == 2 and again.stderr.strip() == "error: user 'ada' exists already"
    short = _leukodx("users", "add", "bob", "--data-dir", tmp_path, stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    bad_url = _leukodx("db", "upgrade", "--database-url", "mysql://x")
    assert bad_url.returncode == 2 and "expected sqlite:///FILE or postgresql" in bad_url.stderr


def test_serve_runs_an_analysis_with_its_embedded_worker(tmp_path):
    assert _leukodx("users", "add", "rev", "--data-dir", tmp_path, stdin="a long password\n").returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "leukodx", "serve", "--port", str(port), "--data-dir",
                               str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        token = httpx.post(f"{base}/api/token", data={"username": "rev", "password": "a long password"}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        case = httpx.post(f"{base}/api/cases", json={"label": "c"}, headers=auth).json()["id"]
        cell = load_dataset("pbc").abspath(0)
        httpx.post(f"{base}/api/cases/{case}/files", files=[("files", (cell.name, cell.read_bytes()))], headers=auth)
        job = httpx.post(f"{base}/api/cases/{case}/analyses", json={"kind": "cells"}, headers=auth).json()["job_id"]
        for _ in range(600):
            state = httpx.get(f"{base}/api/jobs/{job}", headers=auth).json()["status"]
            if state in ("done", "failed"):
                break
            time.sleep(0.1)
        assert state == "done"
        assert len(httpx.get(f"{base}/api/cases/{case}/results", headers=auth).json()["cells"]) == 1
        assert "/api/cases/{case_id}/signoff" in httpx.get(f"{base}/openapi.json").json()["paths"]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


def test_worker_once_runs_the_queue_and_exits(tmp_path):
    r = _leukodx("worker", "--once", "--data-dir", tmp_path)
    assert r.returncode == 0 and "0 job(s) run" in r.stderr
