"""The browser side without a browser: session cookies and CSRF, the pages and their security
headers, escaped text, the report exports, and a smear-field analysis (boxes for the overlay, white
cells in the gallery with thumbnails and full-resolution cuts)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from conftest import PASSWORD
from leukodx.data.registry import load_dataset
from leukodx.service.jobs import run_one

XSS = '<img src=x onerror="alert(1)">'


@pytest.fixture
def browser(settings, users):
    """A TestClient over https (the session cookie is Secure), logged in as the reviewer."""
    from fastapi.testclient import TestClient

    from leukodx.service.app import create_app

    with TestClient(create_app(settings), base_url="https://testserver") as c:
        r = c.post("/api/session", data={"username": "rev", "password": PASSWORD})
        assert r.status_code == 200, r.text
        c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        yield c


def _analysed_case(client, settings, factory, paths, kind="cells", label="case") -> int:
    case = client.post("/api/cases", json={"label": label}).json()["id"]
    r = client.post(f"/api/cases/{case}/files", files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths])
    assert r.status_code == 201, r.text
    job = client.post(f"/api/cases/{case}/analyses", json={"kind": kind}).json()["job_id"]
    assert run_one(factory, settings) == job
    assert client.get(f"/api/jobs/{job}").json()["status"] == "done", client.get(f"/api/jobs/{job}").json()
    return case


def test_session_cookie_needs_csrf_for_changes_and_logout_revokes_it(browser):
    cookie = browser.cookies.get("leukodx_session")
    assert cookie and browser.get("/api/me").json() == {"name": "rev", "role": "reviewer"}
    csrf = browser.headers.pop("X-CSRF-Token")
    r = browser.post("/api/cases", json={"label": "no csrf"})
    assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"]
    r = browser.post("/api/cases", json={"label": "forged"}, headers={"X-CSRF-Token": "0" * 64})
    assert r.status_code == 403
    assert browser.post("/api/cases", json={"label": "ok"}, headers={"X-CSRF-Token": csrf}).status_code == 201
    assert browser.get("/api/cases").status_code == 200  # reading needs no CSRF token
    assert browser.delete("/api/session", headers={"X-CSRF-Token": csrf}).status_code == 200
    browser.cookies.set("leukodx_session", cookie)  # the old cookie replayed: revoked
    assert browser.get("/api/cases").status_code == 401


def test_set_cookie_is_httponly_strict_and_secure(settings, users):
    from fastapi.testclient import TestClient

    from leukodx.service.app import create_app

    with TestClient(create_app(settings), base_url="https://testserver") as c:
        header = c.post("/api/session", data={"username": "rev", "password": PASSWORD}).headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=strict" in header and "secure" in header
        for _ in range(5):
            c.post("/api/session", data={"username": "rev", "password": "wrong password"})
        assert c.post("/api/session", data={"username": "rev", "password": PASSWORD}).status_code == 429


def test_pages_need_a_session_and_escape_text(browser, client):
    assert client.get("/cases", follow_redirects=False).headers["location"] == "/login"
    login_page = client.get("/login")
    assert login_page.status_code == 200 and 'id="login-form"' in login_page.text
    csp = login_page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    case = browser.post("/api/cases", json={"label": XSS}).json()["id"]
    page = browser.get(f"/cases/{case}")
    assert page.status_code == 200 and 'name="csrf-token"' in page.text
    assert browser.get("/cases/999999").status_code == 404
    for asset in ("/static/app.js", "/static/app.css"):
        assert browser.get(asset).status_code == 200
    report = browser.get(f"/cases/{case}/report.html")
    assert report.status_code == 200 and XSS not in report.text and "&lt;img src=x" in report.text
    assert "DRAFT: not signed" in report.text


def test_signed_report_exports_as_html_and_pdf(browser, settings, factory):
    pbc = load_dataset("pbc")
    case = _analysed_case(browser, settings, factory, [pbc.abspath(i) for i in range(4)], label="report case")
    assert browser.post(f"/api/cases/{case}/signoff").status_code == 200
    html = browser.get(f"/cases/{case}/report.html").text
    assert "Signed by rev" in html and "DRAFT" not in html and "wbc-multisite" in html
    pdf = browser.get(f"/cases/{case}/report.pdf")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    assert f"leukodx-case-{case}.pdf" in pdf.headers["content-disposition"]
    assert browser.get(f"/cases/{case}/report.doc").status_code == 404


@pytest.mark.slow
def test_smear_field_analysis_gives_boxes_and_white_cells_for_the_gallery(browser, settings, factory):
    bccd = load_dataset("bccd")
    fields = [bccd.root / bccd.records[i]["path"] for i in bccd.splits["test"][:2]]
    case = _analysed_case(browser, settings, factory, fields, kind="fields", label="smear")
    results = browser.get(f"/api/cases/{case}/results").json()
    overlay = results["analyses"][0]["summary"]["fields"]
    assert len(overlay) == 2 and all(f["size"][0] > 0 for f in overlay)
    kinds = {b["kind"] for f in overlay for b in f["boxes"]}
    assert {"WBC", "RBC"} <= kinds
    white = sum(b["kind"] == "WBC" for f in overlay for b in f["boxes"])
    assert len(results["cells"]) == white >= 1
    cell = results["cells"][0]
    x0, y0, x1, y1 = cell["box"]
    assert 0 <= x0 < x1 and 0 <= y0 < y1
    thumb = browser.get(f"/api/cells/{cell['id']}/thumbnail")
    assert thumb.headers["content-type"] == "image/jpeg" and max(Image.open(io.BytesIO(thumb.content)).size) <= 96
    full = Image.open(io.BytesIO(browser.get(f"/api/cells/{cell['id']}/image").content))
    assert full.size[0] >= (x1 - x0)  # cut from the field at full resolution, with a margin
    preview = Image.open(io.BytesIO(browser.get(f"/api/files/{cell['file_id']}/preview").content))
    assert preview.size[0] <= 1600


def test_cell_case_thumbnails_and_zoom_are_the_cells_own_images(browser, settings, factory):
    pbc = load_dataset("pbc")
    case = _analysed_case(browser, settings, factory, [pbc.abspath(0)])
    cell = browser.get(f"/api/cases/{case}/results").json()["cells"][0]
    assert cell["box"] is None
    full = Image.open(io.BytesIO(browser.get(f"/api/cells/{cell['id']}/image").content))
    assert full.size == Image.open(pbc.abspath(0)).size
    assert browser.get("/api/cells/999999/thumbnail").status_code == 404
