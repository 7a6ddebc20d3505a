"""Analyses as jobs in the database, run by workers on this or other machines.

A worker claims the oldest queued job with a compare-and-set update (on PostgreSQL the candidate row
is also locked ``FOR UPDATE SKIP LOCKED``), so two workers never take the same job; it beats a
heartbeat while it runs; a job whose heartbeat stops (its worker died) is queued again, at most
``MAX_ATTEMPTS`` times. A job's result is stored with the model's name, sha256 and library versions,
once: the results table allows one row per job.
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import os
import socket
import threading
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from leukodx.service.db import Case, Cell, Job, Result, StoredFile, utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
HEARTBEAT_SECONDS = 5
#: cells added to the session between flushes while a result is stored (bounded memory)
STORE_CHUNK = 256


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def claim(session: Session, worker: str) -> Job | None:
    """The oldest queued job, now ``running`` for ``worker``; None when there is none."""
    query = select(Job.id).where(Job.status == "queued").order_by(Job.id).limit(1)
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    job_id = session.scalar(query)
    if job_id is None:
        session.rollback()
        return None
    taken = session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
        status="running", worker=worker, attempts=Job.attempts + 1, heartbeat=utcnow()))
    session.commit()
    if taken.rowcount != 1:  # another worker was quicker
        return None
    return session.get(Job, job_id)


def requeue_stale(session: Session, stale_seconds: float, failed: list[int] | None = None) -> int:
    """Jobs whose worker stopped beating: queued again, or failed after ``MAX_ATTEMPTS`` (their ids added
    to ``failed``)."""
    limit = utcnow() - _dt.timedelta(seconds=stale_seconds)
    stale = session.scalars(select(Job).where(Job.status == "running", Job.heartbeat < limit)).all()
    for job in stale:
        if job.attempts >= MAX_ATTEMPTS:
            job.status, job.error, job.finished = "failed", f"its worker stopped {job.attempts} times", utcnow()
            if failed is not None:
                failed.append(job.id)
        else:
            job.status, job.worker = "queued", None
    session.commit()
    return len(stale)


def job_work(settings, job_id: int, attempt: int) -> Path:
    """The folder an attempt at a job streams its rows into (``leukodx.diagnosis.case.analyse_case``)."""
    return settings.work / f"job-{job_id}" / f"attempt-{attempt}"


def _take_over(settings, job_id: int, attempt: int) -> Path:
    """This attempt's work folder, seeded with the rows an earlier attempt (its worker died) finished:
    copied, never shared, so a worker that was only slow keeps writing its own file."""
    import shutil

    work = job_work(settings, job_id, attempt)
    work.mkdir(parents=True, exist_ok=True)
    for earlier in range(attempt - 1, 0, -1):
        partial = job_work(settings, job_id, earlier) / "predictions.csv.partial.jsonl"
        if partial.exists():
            try:
                shutil.copyfile(partial, work / partial.name)
            except OSError:  # gone meanwhile: start afresh
                continue
            with open(work / partial.name, "rb") as fh:
                rows = sum(line.startswith(b'{"row"') for line in fh)
            log.info("job %s attempt %s: resuming from %d image(s) attempt %s finished", job_id, attempt, rows, earlier)
            break
    return work


def _end_work(settings, job_id: int, attempt: int | None = None) -> None:
    """Remove one attempt's work folder, or (``attempt`` None: the job has ended) every attempt's."""
    import shutil

    shutil.rmtree(job_work(settings, job_id, attempt) if attempt else settings.work / f"job-{job_id}",
                  ignore_errors=True)


def run_one(factory: sessionmaker, settings, worker: str | None = None) -> int | None:
    """Claim and run one job; returns its id, or None when the queue is empty."""
    worker = worker or worker_name()
    with factory() as session:
        ended: list[int] = []
        requeue_stale(session, settings.stale_seconds, ended)
        for stale_id in ended:
            _end_work(settings, stale_id)
        job = claim(session, worker)
        if job is None:
            return None
        job_id, kind, case_id, attempt = job.id, job.kind, job.case_id, job.attempts
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(factory, job_id, stop), daemon=True)
    beat.start()
    try:
        outcome = analyse(factory, settings, case_id, kind, _take_over(settings, job_id, attempt))
        error = None
    except Exception as exc:  # noqa: BLE001 - a failed analysis is the job's state, not the worker's end
        from leukodx.errors import item_error

        outcome, error = None, item_error(f"job {job_id}", exc)
    finally:
        stop.set()
        beat.join()
    # the database away here: the job stays running, is found stale, and its next attempt resumes from the work
    # folder this one leaves
    with factory() as session:
        job = session.get(Job, job_id)
        if job.worker != worker or job.status != "running":  # declared dead and retaken meanwhile: the other
            _end_work(settings, job_id, attempt)             # run's result counts
            return job_id
        if error is None:
            _store(session, job, outcome)
            job.status = "done"
        else:
            job.status, job.error = "failed", error
        job.finished = utcnow()
        session.commit()
    _end_work(settings, job_id)
    return job_id


def _heartbeat(factory: sessionmaker, job_id: int, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        with factory() as session:
            session.execute(update(Job).where(Job.id == job_id).values(heartbeat=utcnow()))
            session.commit()


def analyse(factory: sessionmaker, settings, case_id: int, kind: str, work: Path) -> dict:
    """Run the analysis of ``kind`` on the case's stored files; returns what ``_store`` keeps (its cells
    as an iterator: an image analysis is streamed into ``work`` and its cells read back one at a time)."""
    from leukodx._versions import versions

    with factory() as session:
        files = session.scalars(select(StoredFile).where(StoredFile.case_id == case_id).order_by(StoredFile.id)).all()
        paths = {str(settings.uploads / f.stored_name): f.id for f in files
                 if f.kind == {"cells": "image", "fields": "image", "fcs": "fcs", "expression": "table"}[kind]}
    if not paths:
        from leukodx.errors import InvalidInputError

        raise InvalidInputError(f"case {case_id}: no uploaded file fits a {kind} analysis")
    if kind in ("cells", "fields"):
        from leukodx.diagnosis.case import analyse_case

        from leukodx._rowfile import ResumeRefused

        # resumed: an earlier attempt's finished images (its worker died) are not analysed again, unless the
        # case's files or the models changed since: then afresh
        try:
            run = analyse_case(list(paths), work, kind=kind, smear=kind == "fields", resume=True)
        except ResumeRefused as exc:
            log.info("case %s: %s; analysed afresh", case_id, exc)
            run = analyse_case(list(paths), work, kind=kind, smear=kind == "fields")
        result = run.result
        outcome = {"kind": kind, "model": result["model"]["name"], "sha256": result["model"]["sha256"],
                   "versions": versions(), "classes": result["model"]["classes"],
                   "summary": {k: result[k] for k in ("summary", "flags", "shift", "errors", "n_images")}}
        if kind == "cells":
            outcome["cells"] = ({**e["row"], "file_id": paths[e["row"]["input"]],
                                 "thumbnail": base64.b64decode(e["thumbnail"])} for e in run.entries())
            return outcome
        # smear fields: the field model's call per field, and every cell the detector found (its box, for
        # the overlay); the white cells, typed by the cell model, go to the review gallery
        outcome["summary"]["smear"] = result["smear"]["summary"]
        outcome["summary"]["detector"] = result["smear"]["detector"]
        outcome["summary"]["fields"] = [_field_json(e["field"], paths[e["field"]["field"]]) for e in run.entries()]
        outcome["cells"] = (cell for e in run.entries() for cell in _field_cells(e["field"], paths[e["field"]["field"]]))
        return outcome
    if kind == "fcs":
        from leukodx.cytometry.classifier import CellClassifier
        from leukodx.cytometry.readout import readout_files

        model = CellClassifier.load()
        batch = readout_files(list(paths), model, refit_missing=False)
        return {"kind": kind, "model": batch["model"], "sha256": batch["model_sha256"], "versions": versions(),
                "summary": {"results": batch["results"], "failed": batch["failed"]}, "cells": []}
    from leukodx.omics.bundle import ExpressionModel
    from leukodx.omics.io import read_matrix

    model = ExpressionModel.load()
    rows = []
    for path in paths:
        data = read_matrix(path)
        proba = model.score_set(data)[0]
        rows += [{"sample": s, "call": model.classes[int(p.argmax())], "probability": float(p.max())}
                 for s, p in zip(data.samples, proba)]
    return {"kind": kind, "model": model.card["name"], "sha256": model.card.get("sha256"), "versions": versions(),
            "summary": {"samples": rows}, "cells": []}


def _field_json(field: dict, file_id: int) -> dict:
    """A field for the overlay: its size, whether it was counted (and why not), and every box."""
    return {"file_id": file_id, "size": field["size"], "counted": field["counted"], "ood": field.get("ood"),
            "flags": field.get("flags", []),
            "boxes": [{"kind": c["kind"], "box": c["box"], "score": c["score"], "cell_type": c.get("cell_type"),
                       "review": bool(c.get("unsure") or c.get("blast_review"))}
                      for c in field["cells"]]}


def _field_cells(field: dict, file_id: int) -> list[dict]:
    """The typed white cells of one field as gallery rows, each with a thumbnail cut from the field."""
    white = [c for c in field["cells"] if c["kind"] == "WBC" and "cell_type" in c]
    if not white:
        return []
    from leukodx.data.images import read_image
    from leukodx.service.images import cell_thumbnail

    image = read_image(field["field"])
    return [{"top_class": c["cell_type"], "probability": c["probability"], "unsure": c["unsure"],
                 "ood": c["ood"], "prediction_set": c["prediction_set"], "probabilities": c["probabilities"],
             "box": c["box"], "file_id": file_id, "thumbnail": cell_thumbnail(image, c["box"])} for c in white]


def _store(session: Session, job: Job, outcome: dict) -> None:
    result = Result(case_id=job.case_id, job_id=job.id, kind=outcome["kind"], model_name=outcome["model"],
                    model_sha256=outcome["sha256"], versions=outcome["versions"], summary=outcome["summary"])
    session.add(result)
    session.flush()
    added = []
    for row in outcome["cells"]:  # streamed: flushed in chunks and let go, so memory holds one chunk
        added.append(Cell(case_id=job.case_id, result_id=result.id, file_id=row["file_id"],
                          model_label=row["top_class"], label=row["top_class"], probability=row["probability"],
                          unsure=bool(row.get("unsure")), ood=row.get("ood"), prediction_set=row.get("prediction_set"),
                          probabilities=row["probabilities"], box=row.get("box"), thumbnail=row.get("thumbnail")))
        session.add(added[-1])
        if len(added) == STORE_CHUNK:
            session.flush()
            for cell in added:
                session.expunge(cell)
            added.clear()
    case = session.get(Case, job.case_id)
    if case.status == "open":
        case.status = "analysed"


def run_forever(factory: sessionmaker, settings, stop: threading.Event, idle_seconds: float = 1.0) -> None:
    """A worker loop: run jobs until ``stop`` is set."""
    worker = worker_name()
    log.info("worker %s started", worker)
    while not stop.is_set():
        try:
            ran = run_one(factory, settings, worker)
        except Exception as exc:  # noqa: BLE001 - the database away for a moment: try again
            log.warning("worker: %s", exc)
            ran = None
        if ran is None:
            stop.wait(idle_seconds)
