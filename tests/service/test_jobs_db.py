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


@pytest.mark.parametrize("file_added", [False, True])
def test_a_retried_image_job_resumes_from_the_rows_its_dead_worker_finished(factory, settings, pbc_folder,
                                                                             monkeypatch, file_added):
    """The worker streams a case into its attempt's work folder; killed mid-case, the job's next
    attempt copies the finished rows, analyses only the rest, and stores every cell once. A file added
    to the case meanwhile makes the next attempt start afresh (the rows no longer fit the case)."""
    import shutil

    from leukodx.diagnosis import case as case_module
    from leukodx.inference.classifier import Classifier
    from leukodx.service.db import Cell, StoredFile
    from leukodx.service.jobs import job_work, run_one

    case = _case(factory)
    images = sorted(pbc_folder.rglob("*.jpg"))[:12]
    settings.uploads.mkdir(parents=True, exist_ok=True)
    with factory() as s:
        for i, path in enumerate(images):
            shutil.copy(path, settings.uploads / f"f{i}.jpg")
            s.add(StoredFile(case_id=case, original_name=path.name, stored_name=f"f{i}.jpg", kind="image",
                             size=path.stat().st_size, sha256="0" * 64))
        s.add(Job(case_id=case, kind="cells"))
        s.commit()
    monkeypatch.setattr(case_module, "CASE_CHUNK", 4)
    real, chunks = Classifier.score_arrays, []

    def killed_on_third_chunk(self, arrays, batch_size=64):
        if len(arrays) == 4:
            chunks.append(len(arrays))
            if len(chunks) == 3:
                raise KeyboardInterrupt  # the worker dies (not an error the job records)
        return real(self, arrays, batch_size)

    monkeypatch.setattr(Classifier, "score_arrays", killed_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_one(factory, settings, "doomed")
    with factory() as s:
        job = s.scalar(select(Job))
        assert job.status == "running" and job.attempts == 1
        job.heartbeat = utcnow() - _dt.timedelta(hours=1)
        s.commit()
    assert (job_work(settings, job.id, 1) / "predictions.csv.partial.jsonl").exists()
    n = 12
    if file_added:
        extra = sorted(pbc_folder.rglob("*.jpg"))[12]
        shutil.copy(extra, settings.uploads / "f12.jpg")
        with factory() as s:
            s.add(StoredFile(case_id=case, original_name=extra.name, stored_name="f12.jpg", kind="image",
                             size=extra.stat().st_size, sha256="0" * 64))
            s.commit()
        n = 13
    def counted(self, arrays, batch_size=64):
        if len(arrays) == 4:
            chunks.append(len(arrays))
        return real(self, arrays, batch_size)

    monkeypatch.setattr(Classifier, "score_arrays", counted)
    chunks.clear()
    assert run_one(factory, settings, "heir") == job.id
    # two of the three chunks were finished by the dead worker; with a file added, all are done again
    assert chunks == ([4, 4, 4] if file_added else [4])
    with factory() as s:
        job = s.scalar(select(Job))
        cells = s.scalars(select(Cell)).all()
        assert job.status == "done" and job.attempts == 2
        assert len(cells) == n and len({c.file_id for c in cells}) == n and all(c.thumbnail for c in cells)
    assert not (settings.work / f"job-{job.id}").exists()
