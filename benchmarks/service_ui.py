"""The review screen in a real browser (Debian's Chromium via Playwright):

1. the browser test (tests/service/test_browser.py: log in, upload a 100-cell case, reclassify 5 cells,
   zoom, sign off, export HTML and PDF, a smear field's overlay), with its screenshots written to
   results/ui/;
2. a 1,000-cell case (real pbc images, analysed by the service's worker on PostgreSQL): the time from
   navigation to the gallery drawn with every thumbnail on screen loaded (5 loads, warm server), and
   the time from a reclassification key press to the recounted differential (5 presses).

Run: ``python benchmarks/service_ui.py`` (~3 min on 2 cores). Writes results/service_ui.{json,md} and
results/ui/*.png.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from _common import RESULTS, write_result
from _service import PASSWORD, Service, cell_images, prepare, token

REPO = Path(__file__).resolve().parent.parent
SHOTS = RESULTS / "ui"
LOADS = 5
ON_SCREEN_LOADED = """() => {
  const g = document.querySelector('#gallery[data-ready]');
  if (!g) return false;
  const imgs = [...document.querySelectorAll('.tile img')].filter(i => {
    const r = i.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; });
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


def browser_test() -> dict:
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(REPO / "tests/service/test_browser.py")], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "LEUKODX_UI_SHOTS": str(SHOTS)})
    return {"passed": r.returncode == 0, "seconds": round(time.perf_counter() - t0, 1),
            "summary": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:],
            "screenshots": sorted(p.name for p in SHOTS.glob("*.png"))}


def thousand_cells() -> dict:
    from playwright.sync_api import sync_playwright

    from leukodx.service.testing import TemporaryPostgres

    with tempfile.TemporaryDirectory(prefix="leukodx-ui-") as tmp, TemporaryPostgres() as pg:
        data_dir = Path(tmp)
        url = pg.create_database("ui")
        prepare(data_dir, url)
        service = Service(data_dir, url).start()
        try:
            auth = token(service.base)
            case = httpx.post(f"{service.base}/api/cases", json={"label": "1,000 cells"}, headers=auth).json()["id"]
            paths = cell_images(1000)
            for k in range(0, len(paths), 100):
                httpx.post(f"{service.base}/api/cases/{case}/files", headers=auth, timeout=300,
                           files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths[k:k + 100]]
                           ).raise_for_status()
            job = httpx.post(f"{service.base}/api/cases/{case}/analyses", json={"kind": "cells"},
                             headers=auth).json()["job_id"]
            t0 = time.perf_counter()
            while (state := httpx.get(f"{service.base}/api/jobs/{job}", headers=auth).json())["status"] not in (
                    "done", "failed"):
                time.sleep(1)
            analysis_seconds = time.perf_counter() - t0
            n_cells = len(httpx.get(f"{service.base}/api/cases/{case}/results", headers=auth, timeout=60).json()["cells"])
            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
                page.goto(service.base + "/login")
                page.fill('input[name="username"]', "bench")
                page.fill('input[name="password"]', PASSWORD)
                page.click('button[type="submit"]')
                page.wait_for_url(service.base + "/cases")
                loads, in_page = [], []
                for _ in range(LOADS + 1):  # the first load warms the server's caches; not counted
                    start = time.perf_counter()
                    page.goto(f"{service.base}/cases/{case}")
                    page.wait_for_function(ON_SCREEN_LOADED, polling=10)
                    loads.append(time.perf_counter() - start)
                    in_page.append(page.evaluate("performance.now()") / 1000)
                tiles = page.locator(".tile").count()
                page.screenshot(path=SHOTS / "11-gallery-1000-cells.png")
                classes = page.locator("#classes button").evaluate_all("bs => bs.map(b => b.dataset.class)")
                target = classes[1]
                recount = []
                for k in range(5):
                    page.locator(f'.group:not([data-class="{target}"]) .tile').nth(k).click()
                    before = int(page.locator(f'#differential tr[data-class="{target}"] td').nth(1).inner_text())
                    start = time.perf_counter()
                    page.keyboard.press(str(classes.index(target) + 1))
                    page.wait_for_function(
                        "([n, v]) => Number(document.querySelector(`#differential tr[data-class='${n}'] "
                        "td:nth-child(2)`).textContent) === v", arg=[target, before + 1], polling=5)
                    recount.append(time.perf_counter() - start)
                browser.close()
        finally:
            service.stop()
    return {"cells": n_cells, "tiles": tiles, "analysis_seconds": round(analysis_seconds, 1),
            "job": state["status"], "load_seconds": [round(v, 3) for v in loads[1:]],
            "first_load_seconds": round(loads[0], 3),
            "load_median_s": round(statistics.median(loads[1:]), 3), "load_max_s": round(max(loads[1:]), 3),
            "navigation_to_ready_s": [round(v, 3) for v in in_page[1:]],
            "recount_seconds": [round(v, 3) for v in recount], "recount_median_s": round(statistics.median(recount), 3)}


def main() -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    flow = browser_test()
    SHOTS.mkdir(parents=True, exist_ok=True)
    big = thousand_cells()
    rows = [["review flow in Chromium (100 cells: log in, upload, reclassify 5, zoom, sign off, export HTML+PDF, "
             "field overlay)", "passed" if flow["passed"] else "**failed**", f"{flow['seconds']} s; {flow['summary']}"],
            [f"gallery page load, {big['cells']}-cell case (navigation to every on-screen thumbnail loaded)",
             f"median {big['load_median_s']} s, max {big['load_max_s']} s (target <= 2 s)",
             f"{LOADS} warm loads {big['load_seconds']}; first load {big['first_load_seconds']} s; {big['tiles']} tiles"],
            ["reclassify key press to recounted differential (1,000-cell case)", f"median {big['recount_median_s']} s",
             f"{big['recount_seconds']}"]]
    notes = [f"screenshots: {', '.join(flow['screenshots'] + ['11-gallery-1000-cells.png'])} (in results/ui/)",
             f"the 1,000-cell analysis took {big['analysis_seconds']} s in the service's worker (job {big['job']})",
             "Chromium 'performance.now()' at ready: " + str(big["navigation_to_ready_s"])]
    write_result("service_ui", {"browser_test": flow, "gallery_1000": big},
                 ["check", "result", "detail"], rows, notes)


if __name__ == "__main__":
    main()
