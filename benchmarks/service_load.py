"""Bounded load on the review service, localhost only: ``--clients`` concurrent clients (default 20)
each log in, create a case, upload ``--cells`` real cell images (default 100) in one request, request
a cells analysis, poll the job until it is done and read the results. The service is a real
``leukodx serve`` process (embedded worker) plus ``--workers - 1`` separate ``leukodx worker``
processes, on a throwaway PostgreSQL server (``--database sqlite`` for the embedded file).

Measured: p50 / p95 / max latency of each route, cases per minute end to end, and every uploaded
cell accounted for: a result with exactly one cell per uploaded file (none lost, none duplicated),
one result per job, no failed job, and the database's integrity checks.

Run: ``python benchmarks/service_load.py`` (~5 min on 2 cores). Writes results/service_load.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

from _common import write_result
from _service import PASSWORD, Service, cell_images, database_checks, prepare, start_worker, uploads_agree


async def one_client(i: int, base: str, files: list[tuple[str, bytes]], latency: dict) -> dict:
    async def timed(route: str, request):
        t0 = time.perf_counter()
        r = await request
        latency[route].append(time.perf_counter() - t0)
        r.raise_for_status()
        return r.json()

    async with httpx.AsyncClient(base_url=base, timeout=900) as c:
        start = time.perf_counter()
        tok = await timed("POST /api/token", c.post("/api/token", data={"username": "bench", "password": PASSWORD}))
        auth = {"Authorization": f"Bearer {tok['access_token']}"}
        case = (await timed("POST /api/cases", c.post("/api/cases", json={"label": f"load {i}"}, headers=auth)))["id"]
        up = await timed("POST /api/cases/{id}/files", c.post(
            f"/api/cases/{case}/files", headers=auth, files=[("files", (n, b, "image/jpeg")) for n, b in files]))
        job = (await timed("POST /api/cases/{id}/analyses",
                           c.post(f"/api/cases/{case}/analyses", json={"kind": "cells"}, headers=auth)))["job_id"]
        while True:
            state = await timed("GET /api/jobs/{id}", c.get(f"/api/jobs/{job}", headers=auth))
            if state["status"] in ("done", "failed"):
                break
            await asyncio.sleep(1.0)
        results = await timed("GET /api/cases/{id}/results", c.get(f"/api/cases/{case}/results", headers=auth))
        return {"case": case, "job": job, "job_status": state["status"], "attempts": state["attempts"],
                "uploaded": sorted(s["id"] for s in up["stored"]), "rejected": len(up["rejected"]),
                "cell_files": sorted(cell["file_id"] for cell in results["cells"]),
                "seconds": time.perf_counter() - start}


async def drive(base: str, clients: int, cells: int) -> tuple[list[dict], dict, float]:
    payloads = []
    for i in range(clients):
        paths = cell_images(cells, offset=i * cells)
        payloads.append([(p.name, p.read_bytes()) for p in paths])
    latency: dict[str, list[float]] = defaultdict(list)
    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(one_client(i, base, payloads[i], latency) for i in range(clients)))
    return outcomes, latency, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2, help="embedded worker + this many minus one processes")
    ap.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    args = ap.parse_args()

    from leukodx.service.testing import TemporaryPostgres

    with tempfile.TemporaryDirectory(prefix="leukodx-load-") as tmp, TemporaryPostgres() as pg:
        data_dir = Path(tmp)
        url = pg.create_database("load") if args.database == "postgresql" else f"sqlite:///{data_dir / 'load.db'}"
        prepare(data_dir, url)
        service = Service(data_dir, url).start()
        workers = [start_worker(data_dir, url, log_name=f"worker-{k}.log") for k in range(args.workers - 1)]
        try:
            outcomes, latency, wall = asyncio.run(drive(service.base, args.clients, args.cells))
        finally:
            service.stop()
            for w in workers:
                w.terminate()
                w.wait()
        checks = database_checks(url)
        agree = uploads_agree(data_dir, checks.pop("stored_names"))

    lost = sum(len(set(o["uploaded"]) - set(o["cell_files"])) for o in outcomes)
    duplicated = sum(len(o["cell_files"]) - len(set(o["cell_files"])) for o in outcomes)
    foreign = sum(len(set(o["cell_files"]) - set(o["uploaded"])) for o in outcomes)
    failed = sum(o["job_status"] != "done" for o in outcomes)
    routes = {route: {"n": len(v), "p50_ms": round(1000 * statistics.median(v), 1),
                      "p95_ms": round(1000 * statistics.quantiles(v, n=20, method="inclusive")[18], 1) if len(v) >= 2 else None,
                      "max_ms": round(1000 * max(v), 1)} for route, v in latency.items()}
    summary = {"clients": args.clients, "cells_per_case": args.cells, "workers": args.workers,
               "database": args.database, "wall_seconds": round(wall, 1),
               "cases_per_minute": round(60 * args.clients / wall, 2),
               "case_seconds_p50": round(statistics.median(o["seconds"] for o in outcomes), 1),
               "cells_uploaded": sum(len(o["uploaded"]) for o in outcomes),
               "cells_in_results": sum(len(o["cell_files"]) for o in outcomes),
               "lost": lost, "duplicated": duplicated, "foreign": foreign, "failed_jobs": failed,
               "retried_jobs": sum(o["attempts"] > 1 for o in outcomes), "database_checks": checks,
               "uploads_vs_database": agree}
    rows = [[r, v["n"], v["p50_ms"], v["p95_ms"], v["max_ms"]] for r, v in routes.items()]
    notes = [f"{args.clients} concurrent clients x {args.cells} pbc cell images, {args.workers} worker(s), "
             f"{args.database}; {summary['wall_seconds']} s wall, **{summary['cases_per_minute']} cases/min** end to "
             f"end (median case {summary['case_seconds_p50']} s from login to results)",
             f"cells uploaded {summary['cells_uploaded']}, in results {summary['cells_in_results']}: "
             f"**lost {lost}, duplicated {duplicated}**, from another case {foreign}; failed jobs {failed}",
             f"database: {checks['integrity_check']}; orphans {checks['orphans']}; jobs with several results "
             f"{checks['jobs_with_several_results']}; uploads folder vs rows {agree}",
             "latency of GET /api/jobs/{id} is one poll; the analyses queue behind the workers (2 CPU cores)"]
    write_result("service_load", {"summary": summary, "routes": routes, "cases": outcomes},
                 ["route", "requests", "p50 (ms)", "p95 (ms)", "max (ms)"], rows, notes)


if __name__ == "__main__":
    main()
