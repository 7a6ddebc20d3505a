"""Faults on the review service, on each database (PostgreSQL and the embedded SQLite file):

1. ``kill -9`` of the worker while it runs a 600-cell analysis, once it has written its first chunk
   of rows to the job's work folder, then a new worker: the job is taken again once the dead
   worker's heartbeat is stale (``--stale-after 15``), resumes from the rows the dead worker
   finished (its log says how many) and completes, with one result and exactly one cell per
   uploaded file.
2. ``kill -9`` of the server in the middle of an upload (a 40 MB request sent slowly), then a restart:
   the case shows no file from the cut upload, the uploads folder holds no half-written file and no
   file without a database row, and the restarted server analyses a new upload.
After both, the database's integrity checks (SQLite ``integrity_check`` / ``foreign_key_check``;
PostgreSQL ``amcheck`` on every btree index) and orphan queries.

Run: ``python benchmarks/service_faults.py`` (~3 min). Writes results/service_faults.{json,md}.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx

from _common import write_result
from _service import Service, cell_images, database_checks, prepare, start_worker, token, uploads_agree

STALE = 15
#: cells of the analysis the worker is killed in: three of the workers' 256-image chunks
CELLS = 600


def upload_cells(base: str, auth: dict, case: int, paths: list[Path]) -> list[int]:
    r = httpx.post(f"{base}/api/cases/{case}/files", headers=auth, timeout=300,
                   files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths])
    r.raise_for_status()
    return [s["id"] for s in r.json()["stored"]]


def wait_job(base: str, auth: dict, job: int, until: tuple[str, ...], timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{base}/api/jobs/{job}", headers=auth, timeout=30).json()
        if state["status"] in until:
            return state
        time.sleep(0.2)
    raise TimeoutError(f"job {job} not {until} within {timeout} s")


def _rows(partial: Path) -> int:
    """Rows a job's work file holds (0 while there is none)."""
    try:
        with open(partial, "rb") as fh:
            return sum(line.startswith(b'{"row"') for line in fh)
    except OSError:
        return 0


def worker_killed(data_dir: Path, url: str) -> dict:
    service = Service(data_dir, url, "--no-worker", "--stale-after", str(STALE)).start()
    try:
        auth = token(service.base)
        case = httpx.post(f"{service.base}/api/cases", json={"label": "worker killed"}, headers=auth).json()["id"]
        uploaded = upload_cells(service.base, auth, case, cell_images(CELLS, offset=3000))
        job = httpx.post(f"{service.base}/api/cases/{case}/analyses", json={"kind": "cells"}, headers=auth).json()["job_id"]
        first = start_worker(data_dir, url, "--stale-after", str(STALE), log_name="worker-1.log")
        wait_job(service.base, auth, job, ("running",))
        partial = data_dir / "work" / f"job-{job}" / "attempt-1" / "predictions.csv.partial.jsonl"
        deadline = time.monotonic() + 300
        while not _rows(partial) and time.monotonic() < deadline:  # the first chunk written: mid-case
            time.sleep(0.02)
        before = httpx.get(f"{service.base}/api/jobs/{job}", headers=auth).json()
        first.kill()
        first.wait()
        killed_at = time.monotonic()
        rows_at_kill = _rows(partial)
        second = start_worker(data_dir, url, "--stale-after", str(STALE), log_name="worker-2.log")
        try:
            final = wait_job(service.base, auth, job, ("done", "failed"))
        finally:
            second.terminate()
            second.wait()
        recovered = time.monotonic() - killed_at
        results = httpx.get(f"{service.base}/api/cases/{case}/results", headers=auth).json()
        files = [c["file_id"] for c in results["cells"]]
        resumed = [line for line in (data_dir / "worker-2.log").read_text().splitlines() if "resuming from" in line]
        return {"status_when_killed": before["status"], "rows_written_when_killed": rows_at_kill,
                "second_worker_log": resumed[0].split(": ", 1)[-1].strip() if resumed else None,
                "final_status": final["status"], "attempts": final["attempts"],
                "seconds_to_done_after_kill": round(recovered, 1), "results": len(results["analyses"]),
                "uploaded": len(uploaded), "cells": len(files), "lost": len(set(uploaded) - set(files)),
                "duplicated": len(files) - len(set(files)),
                "ok": final["status"] == "done" and final["attempts"] == 2 and len(results["analyses"]) == 1
                and sorted(files) == sorted(uploaded)}
    finally:
        service.stop()


def slow_upload(port: int, auth: dict, case: int, total: int, sent: list[int]) -> None:
    """A multipart upload of ``total`` bytes sent in 256 kB pieces, 20 ms apart, on a raw socket."""
    boundary = "leukodxfault"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n"
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + total + len(tail)
    request = (f"POST /api/cases/{case}/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth['Authorization']}"
               f"\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(request + head)
            piece = b"\x00" * (256 * 1024)
            while sent[0] < total:
                s.sendall(piece)
                sent[0] += len(piece)
                time.sleep(0.02)
    except OSError:
        pass  # the server was killed under us


def server_killed(data_dir: Path, url: str) -> dict:
    service = Service(data_dir, url, "--stale-after", str(STALE)).start()
    auth = token(service.base)
    case = httpx.post(f"{service.base}/api/cases", json={"label": "server killed"}, headers=auth).json()["id"]
    sent = [0]
    sender = threading.Thread(target=slow_upload, args=(service.port, auth, case, 40 * 2 ** 20, sent))
    sender.start()
    while sent[0] < 8 * 2 ** 20:
        time.sleep(0.05)
    service.kill()
    sender.join()
    service.start()  # same data folder, same port
    try:
        auth = token(service.base)
        files_after = len(httpx.get(f"{service.base}/api/cases/{case}", headers=auth).json()["files"])
        uploaded = upload_cells(service.base, auth, case, cell_images(20, offset=5000))
        job = httpx.post(f"{service.base}/api/cases/{case}/analyses", json={"kind": "cells"}, headers=auth).json()["job_id"]
        final = wait_job(service.base, auth, job, ("done", "failed"))
        cells = httpx.get(f"{service.base}/api/cases/{case}/results", headers=auth).json()["cells"]
    finally:
        service.stop()
    return {"bytes_sent_before_kill": sent[0], "files_of_cut_upload_visible": files_after,
            "after_restart": {"uploaded": len(uploaded), "job": final["status"], "cells": len(cells)},
            "ok": files_after == 0 and final["status"] == "done" and len(cells) == len(uploaded)}


def main() -> None:
    from leukodx.service.testing import TemporaryPostgres

    report = {}
    with TemporaryPostgres() as pg:
        for database in ("postgresql", "sqlite"):
            with tempfile.TemporaryDirectory(prefix="leukodx-faults-") as tmp:
                data_dir = Path(tmp)
                url = pg.create_database("faults") if database == "postgresql" else f"sqlite:///{data_dir / 'f.db'}"
                prepare(data_dir, url)
                entry = {"worker kill -9 mid-job": worker_killed(data_dir, url),
                         "server kill -9 mid-upload": server_killed(data_dir, url)}
                checks = database_checks(url)
                agree = uploads_agree(data_dir, checks.pop("stored_names"))
                entry["database"] = {**checks, "uploads_vs_database": agree,
                                     "ok": ("ok" in str(checks["integrity_check"])) and not any(checks["orphans"].values())
                                     and checks.get("foreign_key_violations", 0) == 0
                                     and checks["jobs_with_several_results"] == 0
                                     and not any(agree.values())}
                report[database] = entry
    rows = []
    for database, entry in report.items():
        w, s, d = entry["worker kill -9 mid-job"], entry["server kill -9 mid-upload"], entry["database"]
        rows.append([database, "worker kill -9 mid-job",
                     f"killed while {w['status_when_killed']}, {w['rows_written_when_killed']} of {w['uploaded']} rows "
                     f"written; the next worker: {w['second_worker_log'] or 'no resume logged'}; "
                     f"job {w['final_status']} after {w['attempts']} attempts, "
                     f"{w['seconds_to_done_after_kill']} s after the kill (stale after {STALE} s); {w['results']} result, "
                     f"{w['cells']}/{w['uploaded']} cells, lost {w['lost']}, duplicated {w['duplicated']}",
                     "yes" if w["ok"] else "**no**"])
        rows.append([database, "server kill -9 mid-upload",
                     f"killed after {s['bytes_sent_before_kill'] / 2 ** 20:.0f} MB of 40 MB; files of the cut upload "
                     f"visible after restart: {s['files_of_cut_upload_visible']}; then {s['after_restart']['uploaded']} "
                     f"uploaded, job {s['after_restart']['job']}, {s['after_restart']['cells']} cells",
                     "yes" if s["ok"] else "**no**"])
        rows.append([database, "database after both",
                     f"{d['integrity_check']}; foreign-key violations {d.get('foreign_key_violations', 'n/a')}; "
                     f"orphans {sum(d['orphans'].values())}; jobs with several results {d['jobs_with_several_results']}; "
                     f"partial files {len(d['uploads_vs_database']['partial_files'])}, files without row "
                     f"{len(d['uploads_vs_database']['files_without_row'])}", "yes" if d["ok"] else "**no**"])
    write_result("service_faults", {"report": report}, ["database", "fault", "what happened", "recovered"], rows)


if __name__ == "__main__":
    main()
