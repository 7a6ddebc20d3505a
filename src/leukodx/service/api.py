"""The JSON API (``/api/...``): sessions and tokens, cases, uploads, analyses as jobs, results,
reclassification, sign-off, amendment, the audit trail, and the pictures the review screen shows.
(No ``from __future__ import annotations``: FastAPI reads the route annotations at run time.)"""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Request, Response, UploadFile, status
from fastapi.responses import FileResponse
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session, undefer

from leukodx.errors import LeukodxError
from leukodx.service.auth import DB, ID, SESSION_COOKIE, Admin, Me, csrf_for, get_case, writable
from leukodx.service.db import AuditEvent, Case, Cell, Job, Result, StoredFile, User, utcnow
from leukodx.service.security import TOKEN_HOURS, issue_token, revoke_token, verify_password

router = APIRouter(prefix="/api")
#: gallery pictures never change once made: the browser may keep them
IMMUTABLE = {"Cache-Control": "private, max-age=86400, immutable", "X-Content-Type-Options": "nosniff"}


class CaseIn(BaseModel):
    label: str = Field(min_length=1, max_length=200)


class AnalysisIn(BaseModel):
    kind: Literal["cells", "fields", "fcs", "expression"]


class CellPatch(BaseModel):
    label: str = Field(min_length=1, max_length=64)


class Amendment(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


Login = Annotated[OAuth2PasswordRequestForm, Depends()]


def _login(request: Request, db: Session, form: OAuth2PasswordRequestForm) -> tuple[User, str]:
    limiter = request.app.state.login_limiter
    key = (form.username, request.client.host if request.client else "")
    limiter.check(key)
    user = db.scalar(select(User).where(User.name == form.username))
    if user is None or not verify_password(user.password_hash, form.password):
        limiter.failed(key)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user name or password")
    return user, issue_token(db, user)


@router.post("/token")
def token(request: Request, db: DB, form: Login) -> dict:
    """OAuth2 password flow for API clients: a bearer token."""
    _, access = _login(request, db, form)
    return {"access_token": access, "token_type": "bearer"}


@router.post("/session")
def open_session(request: Request, response: Response, db: DB, form: Login) -> dict:
    """Browser login: an HttpOnly, SameSite=Strict session cookie, and the CSRF token for changes."""
    user, access = _login(request, db, form)
    response.set_cookie(SESSION_COOKIE, access, max_age=TOKEN_HOURS * 3600, httponly=True, samesite="strict",
                        secure=request.app.state.settings.secure_cookies, path="/")
    return {"csrf_token": csrf_for(access), "user": {"name": user.name, "role": user.role}}


@router.delete("/session")
def close_session(request: Request, response: Response, db: DB, _: Me) -> dict:
    """Log out: the session's token is revoked and the cookie removed."""
    if SESSION_COOKIE in request.cookies:
        revoke_token(db, request.cookies[SESSION_COOKIE])
    response.delete_cookie(SESSION_COOKIE, path="/")
    return {"status": "logged out"}


@router.get("/me")
def me(user: Me) -> dict:
    return {"name": user.name, "role": user.role}


@router.get("/users")
def users(db: DB, _: Admin) -> list[dict]:
    return [{"id": u.id, "name": u.name, "role": u.role} for u in db.scalars(select(User).order_by(User.id))]


@router.post("/cases", status_code=status.HTTP_201_CREATED)
def create_case(body: CaseIn, db: DB, user: Me) -> dict:
    case = Case(label=body.label, created_by=user.id)
    db.add(case)
    db.commit()
    return {"id": case.id}


@router.get("/cases")
def list_cases(db: DB, _: Me) -> list[dict]:
    files = dict(db.execute(select(StoredFile.case_id, func.count()).group_by(StoredFile.case_id)).all())
    cells = dict(db.execute(select(Cell.case_id, func.count()).group_by(Cell.case_id)).all())
    latest = select(func.max(Job.id)).group_by(Job.case_id).scalar_subquery()
    last_job = {j.case_id: j for j in db.scalars(select(Job).where(Job.id.in_(latest)))}
    return [case_json(c, files.get(c.id, 0)) | {"cells": cells.get(c.id, 0),
                                                 "job": job_json(last_job[c.id]) if c.id in last_job else None}
            for c in db.scalars(select(Case).order_by(Case.id.desc()))]


@router.get("/cases/{case_id}")
def case_detail(case_id: ID, db: DB, _: Me) -> dict:
    case = get_case(db, case_id)
    files = db.scalars(select(StoredFile).where(StoredFile.case_id == case_id).order_by(StoredFile.id)).all()
    jobs = db.scalars(select(Job).where(Job.case_id == case_id).order_by(Job.id)).all()
    return {**case_json(case, len(files)),
            "files": [{"id": f.id, "name": f.original_name, "kind": f.kind, "size": f.size, "sha256": f.sha256}
                      for f in files],
            "jobs": [job_json(j) for j in jobs]}


@router.post("/cases/{case_id}/files", status_code=status.HTTP_201_CREATED)
def upload(request: Request, case_id: ID, files: Annotated[list[UploadFile], File()], db: DB, _: Me) -> dict:
    """One or many files; each is checked by content and stored under a generated name, or rejected
    with its reason. 422 when none could be stored."""
    from leukodx.service.storage import store_upload

    settings = request.app.state.settings
    case = get_case(db, case_id)
    writable(case)
    stored, rejected = [], []
    for upload_file in files:
        try:
            meta = store_upload(upload_file.file, upload_file.filename or "upload", settings.uploads,
                                settings.max_upload_bytes, upload_file.content_type)
        except LeukodxError as exc:
            rejected.append({"name": upload_file.filename, "error": str(exc)})
            continue
        row = StoredFile(case_id=case.id, **meta)
        db.add(row)
        db.commit()
        stored.append({"id": row.id, "name": row.original_name, "kind": row.kind, "size": row.size})
    if not stored:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, {"stored": [], "rejected": rejected})
    return {"stored": stored, "rejected": rejected}


def _file(db: Session, file_id: int) -> StoredFile:
    row = db.get(StoredFile, file_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {file_id}")
    return row


@router.get("/files/{file_id}")
def file_content(request: Request, file_id: ID, db: DB, _: Me):
    """An uploaded file's bytes as uploaded (never rendered inline: a download)."""
    row = _file(db, file_id)
    media = {"image": "application/octet-stream", "fcs": "application/vnd.isac.fcs", "table": "text/csv"}
    return FileResponse(request.app.state.settings.uploads / row.stored_name, media_type=media[row.kind],
                        headers={"X-Content-Type-Options": "nosniff"})


@router.get("/files/{file_id}/preview", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
def file_preview(request: Request, file_id: ID, db: DB, _: Me) -> Response:
    """A smear field or cell image as a JPEG reduced for the screen (the overlay's boxes are in the
    field's own pixels)."""
    from leukodx.service.images import field_preview

    row = _file(db, file_id)
    if row.kind != "image":
        raise HTTPException(status.HTTP_409_CONFLICT, f"file {file_id} is not an image")
    return Response(field_preview(request.app.state.settings.uploads / row.stored_name), media_type="image/jpeg",
                    headers=IMMUTABLE)


@router.post("/cases/{case_id}/analyses", status_code=status.HTTP_202_ACCEPTED)
def analyse(case_id: ID, body: AnalysisIn, db: DB, _: Me) -> dict:
    case = get_case(db, case_id)
    writable(case)
    job = Job(case_id=case.id, kind=body.kind)
    db.add(job)
    db.commit()
    return {"job_id": job.id}


@router.get("/jobs/{job_id}")
def job_status(job_id: ID, db: DB, _: Me) -> dict:
    job = db.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return job_json(job)


@router.get("/cases/{case_id}/results")
def results(case_id: ID, db: DB, _: Me) -> dict:
    """Every analysis of the case (model, sha256, versions, summary), its cells with the model's call
    beside the current label, the counts, differential and flags from the current labels."""
    from leukodx.service.review import differential

    case = get_case(db, case_id)
    runs = db.scalars(select(Result).where(Result.case_id == case_id).order_by(Result.id)).all()
    cells = db.scalars(select(Cell).where(Cell.case_id == case_id).order_by(Cell.id)).all()
    names = {f.id: f.original_name for f in db.scalars(select(StoredFile).where(StoredFile.case_id == case_id))}
    signer = db.get(User, case.signed_by) if case.signed_by else None
    return {"case": case_json(case, len(names)) | {"signed_by": signer.name if signer else None},
            "analyses": [{"id": r.id, "kind": r.kind, "model": r.model_name, "model_sha256": r.model_sha256,
                          "versions": r.versions, "summary": r.summary, "created": r.created.isoformat()}
                         for r in runs],
            "cells": [cell_json(c, names.get(c.file_id)) for c in cells],
            **differential(cells)}


def _cell(db: Session, cell_id: int, *options) -> Cell:
    cell = db.get(Cell, cell_id, options=list(options))
    if cell is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no cell {cell_id}")
    return cell


@router.get("/cells/{cell_id}/thumbnail", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def cell_thumbnail(cell_id: ID, db: DB, _: Me) -> Response:
    cell = _cell(db, cell_id, undefer(Cell.thumbnail))
    if cell.thumbnail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"cell {cell_id} has no thumbnail")
    return Response(cell.thumbnail, media_type="image/jpeg", headers=IMMUTABLE)


@router.get("/cells/{cell_id}/image", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def cell_image(request: Request, cell_id: ID, db: DB, _: Me) -> Response:
    """The cell at full resolution: its own image, or its square cut from the smear field."""
    from leukodx.data.images import jpeg_bytes, read_image
    from leukodx.service.images import cell_zoom

    cell = _cell(db, cell_id)
    path = request.app.state.settings.uploads / _file(db, cell.file_id).stored_name
    picture = cell_zoom(path, cell.box) if cell.box else jpeg_bytes(read_image(path), quality=92)
    return Response(picture, media_type="image/jpeg", headers=IMMUTABLE)


@router.patch("/cells/{cell_id}")
def reclassify(cell_id: ID, body: CellPatch, db: DB, user: Me) -> dict:
    """Give a cell the reviewer's label (recorded in the audit trail); returns the cell and the case's
    counts, differential and flags recounted."""
    from leukodx.service.review import differential

    cell = _cell(db, cell_id)
    case = get_case(db, cell.case_id)
    writable(case)
    classes = list(cell.probabilities)
    if body.label not in classes:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"label {body.label!r}: expected one of {', '.join(classes)}")
    if body.label != cell.label:
        db.add(AuditEvent(case_id=case.id, cell_id=cell.id, user_id=user.id, action="reclassify",
                          before=cell.label, after=body.label))
        cell.label = body.label
        db.commit()
    cells = db.scalars(select(Cell).where(Cell.case_id == case.id)).all()
    return {"cell": cell_json(cell, _file(db, cell.file_id).original_name), **differential(cells)}


@router.post("/cases/{case_id}/signoff")
def signoff(case_id: ID, db: DB, user: Me) -> dict:
    case = get_case(db, case_id)
    writable(case)
    if case.status != "analysed":
        raise HTTPException(status.HTTP_409_CONFLICT, f"case {case_id} has no analysis to sign")
    case.status, case.signed_by, case.signed_at = "signed", user.id, utcnow()
    db.add(AuditEvent(case_id=case.id, user_id=user.id, action="signoff", before="analysed", after="signed"))
    db.commit()
    return case_json(case, None)


@router.post("/cases/{case_id}/amend")
def amend(case_id: ID, body: Amendment, db: DB, user: Me) -> dict:
    """Reopen a signed case for changes; the reason is recorded, and it must be signed again."""
    case = get_case(db, case_id)
    if case.status != "signed":
        raise HTTPException(status.HTTP_409_CONFLICT, f"case {case_id} is not signed")
    case.status, case.signed_by, case.signed_at = "analysed", None, None
    db.add(AuditEvent(case_id=case.id, user_id=user.id, action="amend", before="signed", after=body.reason))
    db.commit()
    return case_json(case, None)


@router.get("/cases/{case_id}/audit")
def audit(case_id: ID, db: DB, _: Me) -> list[dict]:
    get_case(db, case_id)
    return audit_rows(db, case_id)


def audit_rows(db: Session, case_id: int) -> list[dict]:
    names = {u.id: u.name for u in db.scalars(select(User))}
    return [{"id": e.id, "cell_id": e.cell_id, "user": names.get(e.user_id), "action": e.action,
             "before": e.before, "after": e.after, "at": e.at.isoformat()}
            for e in db.scalars(select(AuditEvent).where(AuditEvent.case_id == case_id).order_by(AuditEvent.id))]


def case_json(case: Case, n_files: int | None) -> dict:
    out = {"id": case.id, "label": case.label, "status": case.status, "created": case.created.isoformat(),
           "signed_at": case.signed_at.isoformat() if case.signed_at else None}
    if n_files is not None:
        out["files"] = n_files
    return out


def job_json(job: Job) -> dict:
    return {"id": job.id, "case_id": job.case_id, "kind": job.kind, "status": job.status, "attempts": job.attempts,
            "error": job.error, "created": job.created.isoformat(),
            "finished": job.finished.isoformat() if job.finished else None}


def cell_json(cell: Cell, name: str | None) -> dict:
    return {"id": cell.id, "file_id": cell.file_id, "name": name, "label": cell.label, "model_label": cell.model_label,
            "reviewed": cell.label != cell.model_label, "probability": cell.probability, "unsure": cell.unsure,
            "ood": cell.ood, "prediction_set": cell.prediction_set, "probabilities": cell.probabilities,
            "box": cell.box}
