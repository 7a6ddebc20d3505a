"""The browser review screen: server-rendered pages (jinja2, autoescaped) and one script and one
stylesheet served from the package; no CDN, no inline script (the Content-Security-Policy forbids
it). Pages need the session cookie; the JSON the script uses is the same ``/api`` the tests drive.
(No ``from __future__ import annotations``: FastAPI reads the route annotations at run time.)"""

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from leukodx.service.auth import DB, ID, SESSION_COOKIE, Me, authenticate, csrf_for, get_case

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


def _page(request: Request, db, name: str, **context) -> Response:
    user = authenticate(request, db, None)
    if user is None:
        return RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    return templates.TemplateResponse(request, name, {"user": user,
                                                      "csrf": csrf_for(request.cookies[SESSION_COOKIE]), **context})


@router.get("/", response_class=HTMLResponse)
def home() -> Response:
    return RedirectResponse("/cases", status.HTTP_303_SEE_OTHER)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {})


@router.get("/cases", response_class=HTMLResponse)
def cases_page(request: Request, db: DB) -> Response:
    return _page(request, db, "cases.html")


@router.get("/cases/{case_id}", response_class=HTMLResponse)
def case_page(request: Request, case_id: ID, db: DB) -> Response:
    if authenticate(request, db, None) is not None:
        get_case(db, case_id)  # 404 for a case that does not exist
    return _page(request, db, "case.html", case_id=case_id)


@router.get("/cases/{case_id}/report.{fmt}")
def report(case_id: ID, fmt: str, db: DB, _: Me) -> Response:
    """The case report (HTML or PDF); a case not yet signed is marked DRAFT."""
    from leukodx.service.report import render_html, render_pdf, report_data

    if fmt not in ("html", "pdf"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"report.{fmt}: expected report.html or report.pdf")
    data = report_data(db, get_case(db, case_id))
    name = f"leukodx-case-{case_id}{'' if data['signed'] else '-draft'}.{fmt}"
    if fmt == "html":
        return HTMLResponse(render_html(data, templates.env),
                            headers={"Content-Disposition": f'inline; filename="{name}"'})
    return Response(render_pdf(data), media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
