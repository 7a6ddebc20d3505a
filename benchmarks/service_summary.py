"""The review service's targets against what the service benchmarks measured: one table from
results/service_{load,faults,uploads,ui}.json (run those first). Writes results/service_summary.{json,md}.

Run: ``python benchmarks/service_summary.py``.
"""

from __future__ import annotations

import json

from _common import RESULTS, write_result


def main() -> None:
    load, faults, uploads, ui = (json.loads((RESULTS / f"service_{n}.json").read_text())
                                 for n in ("load", "faults", "uploads", "ui"))
    s = load["summary"]
    routes = load["routes"]
    slowest = max(routes.items(), key=lambda kv: kv[1]["p95_ms"] or 0)
    worker_ok = all(entry["worker kill -9 mid-job"]["ok"] for entry in faults["report"].values())
    server_ok = all(entry["server kill -9 mid-upload"]["ok"] for entry in faults["report"].values())
    db_ok = all(entry["database"]["ok"] for entry in faults["report"].values())
    bad_ok = sum(c["ok"] for c in uploads["cases"])
    g = ui["gallery_1000"]
    rows = [
        [f"load: {s['clients']} concurrent clients x {s['cells_per_case']} cells, {s['database']}, {s['workers']} workers",
         f"{s['cases_per_minute']} cases/min; upload p50 {routes['POST /api/cases/{id}/files']['p50_ms']} ms / p95 "
         f"{routes['POST /api/cases/{id}/files']['p95_ms']} ms; slowest p95: {slowest[0]} {slowest[1]['p95_ms']} ms",
         f"lost {s['lost']}, duplicated {s['duplicated']}, failed jobs {s['failed_jobs']}",
         "yes" if s["lost"] == 0 and s["duplicated"] == 0 and s["failed_jobs"] == 0 else "**no**"],
        ["kill -9 of the worker mid-job, then a new worker (PostgreSQL, SQLite)",
         "; ".join(f"{db}: killed after {e['worker kill -9 mid-job'].get('rows_written_when_killed', '?')} of "
                   f"{e['worker kill -9 mid-job']['uploaded']} rows, the next worker "
                   f"{(e['worker kill -9 mid-job'].get('second_worker_log') or 'did not resume').split(' attempt ')[0]}, "
                   f"{e['worker kill -9 mid-job']['final_status']} after "
                   f"{e['worker kill -9 mid-job']['attempts']} attempts, "
                   f"{e['worker kill -9 mid-job']['seconds_to_done_after_kill']} s" for db, e in faults["report"].items()),
         "one result, every cell once", "yes" if worker_ok else "**no**"],
        ["kill -9 of the server mid-upload, then a restart (PostgreSQL, SQLite)",
         "; ".join(f"{db}: {e['server kill -9 mid-upload']['files_of_cut_upload_visible']} files of the cut upload "
                   f"visible" for db, e in faults["report"].items()),
         "restarted server analyses a new upload", "yes" if server_ok else "**no**"],
        ["database integrity after the faults", "; ".join(f"{db}: {e['database']['integrity_check']}"
                                                          for db, e in faults["report"].items()),
         "no orphans, no duplicate results, no partial or unrecorded files", "yes" if db_ok else "**no**"],
        [f"bad uploads ({len(uploads['cases'])} kinds)", f"{bad_ok} of {len(uploads['cases'])} answered as expected",
         f"files outside the data folder: {len(uploads['outside_data_dir'])}", "yes" if bad_ok == len(uploads["cases"])
         and not uploads["outside_data_dir"] else "**no**"],
        ["review flow in Chromium (100 cells, reclassify 5, sign off, export)",
         "passed" if ui["browser_test"]["passed"] else "failed", f"{len(ui['browser_test']['screenshots'])} screenshots",
         "yes" if ui["browser_test"]["passed"] else "**no**"],
        [f"gallery page load, {g['cells']}-cell case (target <= 2 s)", f"median {g['load_median_s']} s, max {g['load_max_s']} s",
         f"recount after a reclassification: median {g['recount_median_s']} s", "yes" if g["load_max_s"] <= 2.0 else "**no**"],
    ]
    write_result("service_summary", {"rows": rows}, ["target", "measured", "detail", "met"], rows,
                 ["sources: results/service_load.md, service_faults.md, service_uploads.md, service_ui.md"])


if __name__ == "__main__":
    main()
