"""The FastAPI application: ``create_app(settings)``. JSON everywhere; OpenAPI at ``/openapi.json``.
(No ``from __future__ import annotations`` here: FastAPI reads the route annotations at run time.)

Every route but ``/health`` and ``/api/token`` needs a bearer token from ``/api/token``; roles are
checked per route. Reclassifications and sign-offs are append-only audit records; the model's call
stays beside the reviewer's; a signed case is read-only until a recorded amendment reopens it.
"""


import contextlib
import threading
import time
from collections import defaultdict, deque
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, HTTPException, Request, UploadFile, status
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from leukodx.errors import LeukodxError
from leukodx.service.config import Settings
from leukodx.service.db import AuditEvent, Case, Cell, Job, Result, StoredFile, User, make_engine, session_factory, utcnow
from leukodx.service.security import issue_token, user_for_token, verify_password

#: failed logins per user name and client within ``LOGIN_WINDOW`` seconds before 429
LOGIN_FAILURES = 5
LOGIN_WINDOW = 60.0


class CaseIn(BaseModel):
    label: str = Field(min_length=1, max_length=200)


class AnalysisIn(BaseModel):
    kind: Literal["cells", "fields", "fcs", "expression"]


class CellPatch(BaseModel):
    label: str = Field(min_length=1, max_length=64)


class Amendment(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


def create_app(settings: Settings, embedded_worker: bool = False) -> FastAPI:
    settings.prepare()
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        stop = threading.Event()
        if embedded_worker:  # one command on one machine: the server runs jobs too
            from leukodx.service.jobs import run_forever

            threading.Thread(target=run_forever, args=(factory, settings, stop), daemon=True).start()
        yield
        stop.set()
        engine.dispose()

    app = FastAPI(title="leukodx review service", version="1", lifespan=lifespan)
    app.state.settings, app.state.factory = settings, factory
    oauth2 = OAuth2PasswordBearer(tokenUrl="/api/token")
    failures: dict[tuple[str, str], deque] = defaultdict(deque)
    lock = threading.Lock()

    def session() -> Session:
        with factory() as s:
            yield s

    DB = Annotated[Session, Depends(session)]

    def current_user(db: DB, token: Annotated[str, Depends(oauth2)]) -> User:
        user = user_for_token(db, token)
        if user is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or expired token",
                                headers={"WWW-Authenticate": "Bearer"})
        return user

    Me = Annotated[User, Depends(current_user)]

    def admin(user: Me) -> User:
        if user.role != "admin":
            raise HTTPException(status.HTTP_403_FORBIDDEN, "admin only")
        return user

    def get_case(db: Session, case_id: int) -> Case:
        case = db.get(Case, case_id)
        if case is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no case {case_id}")
        return case

    def writable(case: Case) -> None:
        if case.status == "signed":
            raise HTTPException(status.HTTP_409_CONFLICT, f"case {case.id} is signed; amend it to change it")

    @app.exception_handler(LeukodxError)
    async def _user_error(request: Request, exc: LeukodxError):
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_400_BAD_REQUEST)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/api/token")
    def token(request: Request, db: DB, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> dict:
        key = (form.username, request.client.host if request.client else "")
        now = time.monotonic()
        with lock:
            recent = failures[key]
            while recent and now - recent[0] > LOGIN_WINDOW:
                recent.popleft()
            if len(recent) >= LOGIN_FAILURES:
                raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many failed logins; wait a minute")
        user = db.scalar(select(User).where(User.name == form.username))
        if user is None or not verify_password(user.password_hash, form.password):
            with lock:
                failures[key].append(now)
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user name or password")
        return {"access_token": issue_token(db, user), "token_type": "bearer"}

    @app.get("/api/users")
    def users(db: DB, _: Annotated[User, Depends(admin)]) -> list[dict]:
        return [{"id": u.id, "name": u.name, "role": u.role} for u in db.scalars(select(User).order_by(User.id))]

    @app.post("/api/cases", status_code=status.HTTP_201_CREATED)
    def create_case(body: CaseIn, db: DB, user: Me) -> dict:
        case = Case(label=body.label, created_by=user.id)
        db.add(case)
        db.commit()
        return {"id": case.id}

    @app.get("/api/cases")
    def list_cases(db: DB, _: Me) -> list[dict]:
        counts = dict(db.execute(select(StoredFile.case_id, func.count()).group_by(StoredFile.case_id)).all())
        return [_case_json(c, counts.get(c.id, 0)) for c in db.scalars(select(Case).order_by(Case.id.desc()))]

    @app.get("/api/cases/{case_id}")
    def case_detail(case_id: int, db: DB, _: Me) -> dict:
        case = get_case(db, case_id)
        files = db.scalars(select(StoredFile).where(StoredFile.case_id == case_id).order_by(StoredFile.id)).all()
        jobs = db.scalars(select(Job).where(Job.case_id == case_id).order_by(Job.id)).all()
        return {**_case_json(case, len(files)),
                "files": [{"id": f.id, "name": f.original_name, "kind": f.kind, "size": f.size, "sha256": f.sha256}
                          for f in files],
                "jobs": [_job_json(j) for j in jobs]}

    @app.post("/api/cases/{case_id}/files", status_code=status.HTTP_201_CREATED)
    def upload(case_id: int, files: Annotated[list[UploadFile], File()], db: DB, _: Me) -> dict:
        from leukodx.service.storage import store_upload

        case = get_case(db, case_id)
        writable(case)
        stored, rejected = [], []
        for upload_file in files:
            try:
                meta = store_upload(upload_file.file, upload_file.filename or "upload", settings.uploads,
                                    settings.max_upload_bytes)
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

    @app.get("/api/files/{file_id}")
    def file_content(file_id: int, db: DB, _: Me):
        """An uploaded file's bytes (the gallery's full-resolution view), under its stored name only."""
        from fastapi.responses import FileResponse

        row = db.get(StoredFile, file_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {file_id}")
        media = {"image": "application/octet-stream", "fcs": "application/vnd.isac.fcs", "table": "text/csv"}
        return FileResponse(settings.uploads / row.stored_name, media_type=media[row.kind],
                            headers={"X-Content-Type-Options": "nosniff"})

    @app.post("/api/cases/{case_id}/analyses", status_code=status.HTTP_202_ACCEPTED)
    def analyse(case_id: int, body: AnalysisIn, db: DB, _: Me) -> dict:
        case = get_case(db, case_id)
        writable(case)
        job = Job(case_id=case.id, kind=body.kind)
        db.add(job)
        db.commit()
        return {"job_id": job.id}

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: int, db: DB, _: Me) -> dict:
        job = db.get(Job, job_id)
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
        return _job_json(job)

    @app.get("/api/cases/{case_id}/results")
    def results(case_id: int, db: DB, _: Me) -> dict:
        from leukodx.service.review import differential

        case = get_case(db, case_id)
        runs = db.scalars(select(Result).where(Result.case_id == case_id).order_by(Result.id)).all()
        cells = db.scalars(select(Cell).where(Cell.case_id == case_id).order_by(Cell.id)).all()
        names = {f.id: f.original_name for f in db.scalars(select(StoredFile).where(StoredFile.case_id == case_id))}
        return {"case": _case_json(case, len(names)),
                "analyses": [{"id": r.id, "kind": r.kind, "model": r.model_name, "model_sha256": r.model_sha256,
                              "versions": r.versions, "summary": r.summary, "created": r.created.isoformat()}
                             for r in runs],
                "cells": [_cell_json(c, names.get(c.file_id)) for c in cells],
                **differential(cells)}

    @app.patch("/api/cells/{cell_id}")
    def reclassify(cell_id: int, body: CellPatch, db: DB, user: Me) -> dict:
        cell = db.get(Cell, cell_id)
        if cell is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no cell {cell_id}")
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
        return _cell_json(cell, None)

    @app.post("/api/cases/{case_id}/signoff")
    def signoff(case_id: int, db: DB, user: Me) -> dict:
        case = get_case(db, case_id)
        writable(case)
        if case.status != "analysed":
            raise HTTPException(status.HTTP_409_CONFLICT, f"case {case_id} has no analysis to sign")
        case.status, case.signed_by, case.signed_at = "signed", user.id, utcnow()
        db.add(AuditEvent(case_id=case.id, user_id=user.id, action="signoff", before="analysed", after="signed"))
        db.commit()
        return _case_json(case, None)

    @app.post("/api/cases/{case_id}/amend")
    def amend(case_id: int, body: Amendment, db: DB, user: Me) -> dict:
        case = get_case(db, case_id)
        if case.status != "signed":
            raise HTTPException(status.HTTP_409_CONFLICT, f"case {case_id} is not signed")
        case.status, case.signed_by, case.signed_at = "analysed", None, None
        db.add(AuditEvent(case_id=case.id, user_id=user.id, action="amend", before="signed", after=body.reason))
        db.commit()
        return _case_json(case, None)

    @app.get("/api/cases/{case_id}/audit")
    def audit(case_id: int, db: DB, _: Me) -> list[dict]:
        get_case(db, case_id)
        users = {u.id: u.name for u in db.scalars(select(User))}
        return [{"id": e.id, "cell_id": e.cell_id, "user": users.get(e.user_id), "action": e.action,
                 "before": e.before, "after": e.after, "at": e.at.isoformat()}
                for e in db.scalars(select(AuditEvent).where(AuditEvent.case_id == case_id).order_by(AuditEvent.id))]

    return app


def _case_json(case: Case, n_files: int | None) -> dict:
    out = {"id": case.id, "label": case.label, "status": case.status, "created": case.created.isoformat(),
           "signed_at": case.signed_at.isoformat() if case.signed_at else None}
    if n_files is not None:
        out["files"] = n_files
    return out


def _job_json(job: Job) -> dict:
    return {"id": job.id, "case_id": job.case_id, "kind": job.kind, "status": job.status, "attempts": job.attempts,
            "error": job.error, "created": job.created.isoformat(),
            "finished": job.finished.isoformat() if job.finished else None}


def _cell_json(cell: Cell, name: str | None) -> dict:
    return {"id": cell.id, "file_id": cell.file_id, "name": name, "label": cell.label, "model_label": cell.model_label,
            "reviewed": cell.label != cell.model_label, "probability": cell.probability, "unsure": cell.unsure,
            "ood": cell.ood, "prediction_set": cell.prediction_set, "probabilities": cell.probabilities}
