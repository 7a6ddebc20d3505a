"""The review flow in a real browser: Debian's Chromium driven by Playwright against the service
running under uvicorn on PostgreSQL with its embedded worker. Log in, upload a 100-cell case, wait
for the analysis, reclassify 5 cells (keyboard and mouse) and watch the differential recount, zoom
to full resolution, sign off, export HTML and PDF, look at a smear field's box overlay. A case label
that is an XSS payload must stay text. Screenshots go to $LEUKODX_UI_SHOTS when it is set
(``benchmarks/service_ui.py`` sets it to benchmarks/results/ui), else to the test's folder."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import PASSWORD, make_settings
from leukodx.data.registry import load_dataset
from leukodx.service.db import make_engine, session_factory
from leukodx.service.security import add_user

pytestmark = pytest.mark.slow
XSS = '<img src=x onerror="window.__xss=1">'


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium not found: apt-get install chromium (see README)"
    return found


class LiveServer:
    """The app under a real uvicorn server on a free localhost port, in a thread."""

    def __init__(self, settings):
        import socket

        import uvicorn

        from leukodx.service.app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(create_app(settings, embedded_worker=True), host="127.0.0.1", port=self.port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def live(request, tmp_path):
    settings = make_settings(request, tmp_path, "postgresql")
    engine = make_engine(settings.database_url)
    with session_factory(engine)() as s:
        add_user(s, "rev", PASSWORD, "reviewer")
    engine.dispose()
    with LiveServer(settings) as url:
        yield url


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        yield context.new_page()
        browser.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("LEUKODX_UI_SHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cells(n: int) -> list[Path]:
    """``n`` pbc cell images spread over its classes (real data)."""
    pbc = load_dataset("pbc")
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(pbc.labels):
        by_class.setdefault(int(y), []).append(i)
    picks, k = [], 0
    while len(picks) < n:
        for members in by_class.values():
            if k < len(members) and len(picks) < n:
                picks.append(members[k])
        k += 1
    return [pbc.abspath(i) for i in picks]


def _differential_count(page, name: str) -> int:
    return int(page.locator(f'#differential tr[data-class="{name}"] td').nth(1).inner_text())


def _new_case(page, label: str, files: list[Path], kind: str) -> None:
    page.goto(page.url.split("/cases")[0] + "/cases")
    page.fill('#new-case input[name="label"]', label)
    page.set_input_files('#new-case input[name="files"]', [str(f) for f in files])
    page.select_option('#new-case select[name="kind"]', kind)
    page.click('#new-case button[type="submit"]')
    page.wait_for_url(re.compile(r".*/cases/\d+$"), timeout=240_000)
    page.wait_for_selector("#gallery[data-ready]", state="attached")


def test_review_flow_in_chromium(live, page, shots):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    page.goto(live + "/cases")
    assert page.url.endswith("/login")
    page.screenshot(path=shots / "01-login.png")
    page.fill('input[name="username"]', "rev")
    page.fill('input[name="password"]', "not the password")
    page.click('button[type="submit"]')
    page.wait_for_selector("#message.error")
    assert "wrong user name or password" in page.inner_text("#message")
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_url(live + "/cases")
    page.screenshot(path=shots / "02-cases.png")

    cells = _cells(100)
    _new_case(page, XSS, cells, "cells")
    page.wait_for_selector(".tile img")
    assert page.locator(".tile").count() == 100
    assert page.inner_text("#case-title") == XSS  # shown as text, never run
    page.screenshot(path=shots / "03-case-gallery.png")

    classes = page.locator("#classes button").evaluate_all("bs => bs.map(b => b.dataset.class)")
    counts = page.locator("#differential tr[data-class]").evaluate_all(
        "rows => Object.fromEntries(rows.map(r => [r.dataset.class, Number(r.children[1].textContent)]))")
    target = next(c for c in ("lymphocyte", "neutrophil", "monocyte") if c in classes and c in counts)
    before = counts[target]
    for i in range(5):
        tile = page.locator(f'.group:not([data-class="{target}"]) .tile').first
        tile.click()
        if i < 3:  # by keyboard: the class's number key
            page.keyboard.press(str(classes.index(target) + 1))
        else:  # by mouse: the class's button
            page.click(f'#classes button[data-class="{target}"]')
        page.wait_for_function(
            "([name, n]) => Number(document.querySelector(`#differential tr[data-class='${name}'] td:nth-child(2)`)"
            ".textContent) === n", arg=[target, before + i + 1])
    assert _differential_count(page, target) == before + 5
    assert page.locator(f'.group[data-class="{target}"] .tile.reviewed').count() == 5
    page.screenshot(path=shots / "04-reclassified.png")

    page.keyboard.press("Enter")  # zoom on the selected cell: its full-resolution image
    page.wait_for_selector("#zoom:not([hidden])")
    # predicates as functions: Playwright evaluates a function string once, but re-evaluates a bare
    # expression on every poll, which the page's CSP (no 'unsafe-eval') refuses once the first check fails
    page.wait_for_function("() => document.getElementById('zoom-img').complete && "
                           "document.getElementById('zoom-img').naturalWidth > 0")
    natural = page.eval_on_selector("#zoom-img", "img => [img.naturalWidth, img.naturalHeight]")
    assert max(natural) >= max(Image.open(cells[0]).size) * 0.9
    page.screenshot(path=shots / "05-zoom.png")
    page.keyboard.press("Escape")
    assert page.locator("#zoom").is_hidden()

    page.click('.tabs button[data-tab="audit"]')
    page.wait_for_function("() => document.querySelectorAll('#audit tbody tr').length === 5")
    page.screenshot(path=shots / "06-audit.png")

    page.click("#signoff")
    page.wait_for_selector("#case-status.signed")
    assert "signed by rev" in page.inner_text("#signed-line")
    assert page.locator("#classes button").first.is_disabled()
    page.click('.tabs button[data-tab="gallery"]')
    page.screenshot(path=shots / "07-signed.png")

    with page.expect_download() as download:
        page.click("#export-pdf")
    assert Path(download.value.path()).read_bytes().startswith(b"%PDF")
    with page.context.expect_page() as popup:
        page.click("#export-html")
    report = popup.value
    report.wait_for_load_state()
    assert "Signed by rev" in report.inner_text("body")
    assert f"{target}" in report.inner_text("table")
    report.screenshot(path=shots / "08-report.png", full_page=True)
    report.close()

    bccd = load_dataset("bccd")
    _new_case(page, "smear fields", [bccd.root / bccd.records[i]["path"] for i in bccd.splits["test"][:2]], "fields")
    page.click('.tabs button[data-tab="fields"]')
    page.wait_for_function("() => [...document.querySelectorAll('#fields .overlay img')].every(i => i.complete && i.naturalWidth)")
    assert page.locator("#fields svg rect").count() >= 10 and page.locator(".legend span").count() == 4
    page.screenshot(path=shots / "09-fields.png")

    page.goto(live + "/cases")
    page.wait_for_selector("#case-list tbody tr")
    page.screenshot(path=shots / "10-case-list.png")
    assert page.locator("#case-list tbody tr").count() == 2
    assert page.evaluate("window.__xss") is None and not dialogs
