"""Jobs: two workers never take the same job; a job whose worker died is run again; migrations."""

from __future__ import annotations

import datetime as _dt
import threading

import pytest

from sqlalchemy import select

from leukodx.service.db import Case, Job, User, utcnow
from leukodx.service.jobs import MAX_ATTEMPTS, claim, requeue_stale
from leukodx.service.migrate import current, head, upgrade


def _case(factory) -> int:
    with factory() as s:
        user = s.scalar(select(User)) or User(name="u", password_hash="x", role="reviewer")
        s.add(user)
        s.flush()
        case = Case(label="c", created_by=user.id)
        s.add(case)
        s.commit()
        return case.id


def test_schema_is_at_head_and_upgrade_is_idempotent(settings):
    assert current(settings.database_url) == head()
    assert upgrade(settings.database_url) == head()


def test_concurrent_workers_never_share_a_job(factory):
    case = _case(factory)
    with factory() as s:
        s.add_all([Job(case_id=case, kind="cells") for _ in range(6)])
        s.commit()
    taken: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with factory() as s:
                job = claim(s, name)
            if job is None:
                return
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(set(taken)) and len(taken) == 6


def test_a_job_whose_worker_died_is_retried_then_failed(factory):
    case = _case(factory)
    with factory() as s:
        s.add(Job(case_id=case, kind="cells"))
        s.commit()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        with factory() as s:
            job = claim(s, f"doomed-{attempt}")
            assert job is not None and job.attempts == attempt
            job.heartbeat = utcnow() - _dt.timedelta(hours=1)  # its worker stopped beating
            s.merge(job)
            s.commit()
            assert requeue_stale(s, 120) == 1
    with factory() as s:
        job = s.scalar(select(Job))
        assert job.status == "failed" and "stopped 3 times" in job.error


def test_the_audit_trail_refuses_updates_and_deletes_in_the_database(factory):
    from sqlalchemy import delete, update
    from sqlalchemy.exc import DBAPIError

    from leukodx.service.db import AuditEvent

    case = _case(factory)
    with factory() as s:
        user = s.scalar(select(Case)).created_by
        s.add(AuditEvent(case_id=case, user_id=user, action="signoff", before="analysed", after="signed"))
        s.commit()
    for statement in (update(AuditEvent).values(after="tampered"), delete(AuditEvent)):
        with factory() as s:
            with pytest.raises(DBAPIError, match="append-only"):
                s.execute(statement)
    with factory() as s:
        assert [(e.action, e.after) for e in s.scalars(select(AuditEvent))] == [("signoff", "signed")]
