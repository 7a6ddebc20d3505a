"""The REST API on both databases: auth and roles, cases, uploads checked by content, a cells analysis
run by a worker, reclassification with the differential recounted, sign-off, amendment, the audit trail."""

from __future__ import annotations


import pytest

from conftest import login
from leukodx.data.registry import load_dataset
from leukodx.service.jobs import run_one


@pytest.fixture(scope="module")
def cell_files():
    pbc = load_dataset("pbc")
    picks = [next(i for i, y in enumerate(pbc.labels) if y == c) for c in range(3)]
    return [pbc.abspath(i) for i in picks]


def test_health_is_open_and_everything_else_needs_a_token(client):
    assert client.get("/health").json() == {"status": "ok"}
    for method, url in (("get", "/api/cases"), ("post", "/api/cases"), ("get", "/api/jobs/1"),
                        ("patch", "/api/cells/1"), ("get", "/api/users")):
        assert getattr(client, method)(url).status_code == 401
    assert client.get("/api/cases", headers={"Authorization": "Bearer forged"}).status_code == 401


def test_wrong_password_then_rate_limit(client, users):
    for _ in range(5):
        assert client.post("/api/token", data={"username": "rev", "password": "wrong-password"}).status_code == 401
    r = client.post("/api/token", data={"username": "rev", "password": "wrong-password"})
    assert r.status_code == 429 and "too many" in r.json()["detail"]


def test_roles_are_enforced(client, users):
    assert client.get("/api/users", headers=login(client, "rev")).status_code == 403
    names = [u["name"] for u in client.get("/api/users", headers=login(client, "ada")).json()]
    assert names == ["ada", "rev"]


def test_uploads_are_checked_by_content_and_stored_under_generated_names(client, settings, cell_files):
    auth = login(client, "rev")
    case = client.post("/api/cases", json={"label": "<script>alert(1)</script>"}, headers=auth).json()["id"]
    files = [("files", ("../../etc/evil.jpg", cell_files[0].read_bytes(), "image/jpeg")),
             ("files", ("notes.jpg", b"just text, not an image", "image/jpeg")),
             ("files", ("empty.jpg", b"", "image/jpeg")),
             ("files", ("cut.jpg", cell_files[1].read_bytes()[:500], "image/jpeg"))]
    r = client.post(f"/api/cases/{case}/files", files=files, headers=auth)
    assert r.status_code == 201
    body = r.json()
    assert [s["name"] for s in body["stored"]] == ["evil.jpg"]
    reasons = {x["name"]: x["error"] for x in body["rejected"]}
    assert "not an image, an FCS file or an expression table" in reasons["notes.jpg"]
    assert "empty file" in reasons["empty.jpg"] and "cut.jpg" in reasons
    stored = list(settings.uploads.iterdir())
    assert len(stored) == 1 and stored[0].parent == settings.uploads and "evil" not in stored[0].name
    served = client.get(f"/api/files/{body['stored'][0]['id']}", headers=auth)
    assert served.status_code == 200 and served.content == cell_files[0].read_bytes()
    assert client.get(f"/api/files/{body['stored'][0]['id']}").status_code == 401
    assert client.get(f"/api/cases/{case}", headers=auth).json()["label"] == "<script>alert(1)</script>"
    only_bad = client.post(f"/api/cases/{case}/files", files=files[1:2], headers=auth)
    assert only_bad.status_code == 422


def test_review_flow_analysis_reclassify_signoff_amend(client, settings, factory, cell_files):
    auth = login(client, "rev")
    case = client.post("/api/cases", json={"label": "patient 7"}, headers=auth).json()["id"]
    client.post(f"/api/cases/{case}/files", headers=auth,
                files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in cell_files])
    job = client.post(f"/api/cases/{case}/analyses", json={"kind": "cells"}, headers=auth).json()["job_id"]
    assert client.get(f"/api/jobs/{job}", headers=auth).json()["status"] == "queued"
    assert run_one(factory, settings) == job
    assert run_one(factory, settings) is None
    assert client.get(f"/api/jobs/{job}", headers=auth).json()["status"] == "done"

    results = client.get(f"/api/cases/{case}/results", headers=auth).json()
    assert len(results["cells"]) == 3 and results["case"]["status"] == "analysed"
    analysis = results["analyses"][0]
    assert analysis["model"] == "wbc-multisite" and len(analysis["model_sha256"]) == 64 and analysis["versions"]
    cell = results["cells"][0]
    other = next(c for c in cell["probabilities"] if c != cell["label"] and c in results["differential_percent"])
    before = results["counts"][other]

    r = client.patch(f"/api/cells/{cell['id']}", json={"label": other}, headers=auth)
    assert r.status_code == 200 and r.json()["cell"]["label"] == other and r.json()["cell"]["model_label"] == cell["label"]
    assert r.json()["counts"][other] == before + 1
    after = client.get(f"/api/cases/{case}/results", headers=auth).json()
    assert after["counts"][other] == before + 1 and after["differential_percent"] != results["differential_percent"]
    assert client.patch(f"/api/cells/{cell['id']}", json={"label": "unicorn"}, headers=auth).status_code == 422

    assert client.post(f"/api/cases/{case}/signoff", headers=auth).status_code == 200
    assert client.patch(f"/api/cells/{cell['id']}", json={"label": cell["label"]}, headers=auth).status_code == 409
    assert client.post(f"/api/cases/{case}/analyses", json={"kind": "cells"}, headers=auth).status_code == 409
    assert client.post(f"/api/cases/{case}/amend", json={"reason": "wrong cell"}, headers=auth).status_code == 200
    assert client.patch(f"/api/cells/{cell['id']}", json={"label": cell["label"]}, headers=auth).status_code == 200

    trail = client.get(f"/api/cases/{case}/audit", headers=auth).json()
    assert [(e["action"], e["before"], e["after"], e["user"]) for e in trail] == [
        ("reclassify", cell["label"], other, "rev"), ("signoff", "analysed", "signed", "rev"),
        ("amend", "signed", "wrong cell", "rev"), ("reclassify", other, cell["label"], "rev")]


def test_an_analysis_with_nothing_to_analyse_fails_with_a_reason(client, settings, factory):
    auth = login(client, "rev")
    case = client.post("/api/cases", json={"label": "empty"}, headers=auth).json()["id"]
    job = client.post(f"/api/cases/{case}/analyses", json={"kind": "fcs"}, headers=auth).json()["job_id"]
    run_one(factory, settings)
    state = client.get(f"/api/jobs/{job}", headers=auth).json()
    assert state["status"] == "failed" and "no uploaded file fits a fcs analysis" in state["error"]
    assert client.post(f"/api/cases/{case}/analyses", json={"kind": "dna"}, headers=auth).status_code == 422
    assert client.get("/api/cases/999999", headers=auth).status_code == 404


def test_request_size_limit_declared_type_and_names(settings, users, cell_files):
    import dataclasses

    from fastapi.testclient import TestClient

    from leukodx.service.app import create_app

    small = dataclasses.replace(settings, max_request_bytes=50_000)
    image = cell_files[0].read_bytes()
    assert len(image) < 20_000
    with TestClient(create_app(small)) as client:
        auth = login(client, "rev")
        case = client.post("/api/cases", json={"label": "limits"}, headers=auth).json()["id"]
        too_big = client.post(f"/api/cases/{case}/files", headers=auth,
                              files=[("files", (f"c{i}.jpg", image, "image/jpeg")) for i in range(60_000 // len(image) + 1)])
        assert too_big.status_code == 413 and "50,000" not in too_big.text and "limit" in too_big.json()["detail"]

        def chunks():  # a body that does not declare its length
            yield b"x" * 30_000
            yield b"x" * 30_000

        chunked = client.post(f"/api/cases/{case}/files", headers={**auth, "Content-Type": "multipart/form-data; "
                                                                   "boundary=b"}, content=chunks())
        assert chunked.status_code == 413
        r = client.post(f"/api/cases/{case}/files", headers=auth, files=[
            ("files", ("scan.jpg", image, "application/pdf")),
            ("files", ("blut Ünïcödé 血液.jpg", image, "application/octet-stream")),
            ("files", ("..\\..\\windows\\x.jpg", image, "image/jpeg"))])
        assert r.status_code == 201
        assert r.json()["rejected"] == [{"name": "scan.jpg",
                                         "error": "scan.jpg: sent as application/pdf, but its content is an image"}]
        assert [s["name"] for s in r.json()["stored"]] == ["blut Ünïcödé 血液.jpg", "x.jpg"]
        assert client.get("/health").status_code == 200
    assert sorted(p.parent for p in settings.uploads.iterdir()) == [settings.uploads] * 2
    from leukodx.service.storage import display_name

    assert display_name("../a\x07b\n.jpg") == "ab.jpg" and display_name("..") == "upload"


def test_partial_uploads_left_by_a_killed_server_are_swept_at_start(settings, users):
    import os

    from fastapi.testclient import TestClient

    from leukodx.service.app import create_app

    old, fresh = settings.uploads / ".upload-dead.part", settings.uploads / ".upload-live.part"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(old, (0, 0))
    with TestClient(create_app(settings)):
        assert not old.exists() and fresh.exists()


def test_fcs_and_expression_analyses_run_as_jobs(client, settings, factory, data_root, tmp_path):
    import pandas as pd

    from leukodx.omics.io import read_golub

    auth = login(client, "rev")
    fcs = data_root / "flow" / "tidytof" / "ddpr" / "UPN1_Basal.fcs"
    _, test = read_golub()
    table = tmp_path / "golub5.csv"
    pd.DataFrame(test.values[:5].T, index=test.genes, columns=test.samples[:5]).to_csv(table)
    case = client.post("/api/cases", json={"label": "flow and expression"}, headers=auth).json()["id"]
    r = client.post(f"/api/cases/{case}/files", headers=auth, files=[
        ("files", (fcs.name, fcs.read_bytes(), "application/octet-stream")),
        ("files", (table.name, table.read_bytes(), "text/csv"))])
    assert [s["kind"] for s in r.json()["stored"]] == ["fcs", "table"]
    jobs = [client.post(f"/api/cases/{case}/analyses", json={"kind": k}, headers=auth).json()["job_id"]
            for k in ("fcs", "expression")]
    assert [run_one(factory, settings) for _ in jobs] == jobs
    assert [client.get(f"/api/jobs/{j}", headers=auth).json()["status"] for j in jobs] == ["done", "done"]
    analyses = {a["kind"]: a for a in client.get(f"/api/cases/{case}/results", headers=auth).json()["analyses"]}
    flow = analyses["fcs"]["summary"]["results"]
    assert len(flow) == 1 and analyses["fcs"]["model"] and len(analyses["fcs"]["model_sha256"]) == 64
    samples = analyses["expression"]["summary"]["samples"]
    assert [s["sample"] for s in samples] == [str(s) for s in test.samples[:5]]
    assert {s["call"] for s in samples} <= {"ALL", "AML"} and analyses["expression"]["model"] == "golub-all-aml"
