"""The service's schema (SQLAlchemy 2): users, cases, their files, jobs, results, cells and the
append-only audit trail. Alembic migrations (``service/migrations``) create and evolve it; the
tables here are the one definition both use."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, create_engine,
                        event)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

ROLES = ("reviewer", "admin")
JOB_KINDS = ("cells", "fields", "fcs", "expression")
JOB_STATES = ("queued", "running", "done", "failed")


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    created: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Token(Base):
    """An API / browser session token: only its sha256 is stored."""
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    expires: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True))


class Case(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | analysed | signed
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    signed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    signed_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class StoredFile(Base):
    """An uploaded file: kept under a generated name; the user's name is only ever data."""
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    original_name: Mapped[str] = mapped_column(String(255))
    stored_name: Mapped[str] = mapped_column(String(80), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # image | fcs | table
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Result(Base):
    """One finished analysis of a case: the summary, and the model and versions that made it."""
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)  # one result per job, never two
    kind: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(128))
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Cell(Base):
    """One classified cell of a case: a cell image, or a white cell found in a smear field (``box`` in
    the field's pixels). The model's call stays; ``label`` is the current (reviewed) one."""
    __tablename__ = "cells"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"))
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"))
    model_label: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    unsure: Mapped[bool] = mapped_column(Boolean, default=False)
    ood: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    prediction_set: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    probabilities: Mapped[dict[str, Any]] = mapped_column(JSON)
    box: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)


class AuditEvent(Base):
    """Append-only: who changed what, when, from what to what (reclassify, signoff, amendment)."""
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    cell_id: Mapped[int | None] = mapped_column(ForeignKey("cells.id"), nullable=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(32))
    before: Mapped[str | None] = mapped_column(Text, nullable=True)
    after: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets foreign keys on and a busy timeout (the embedded worker shares the file)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
