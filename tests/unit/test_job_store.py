"""The job store on its own: the one-job rule across store instances, staleness, records."""

import time
from pathlib import Path

import pytest

from app.errors import JobConflict, JobNotFound
from app.jobs.store import JobStore


def test_one_active_job_across_processes_sharing_the_folder(tmp_path: Path) -> None:
    a, b = JobStore(tmp_path), JobStore(tmp_path)  # as two server processes would open it
    job = a.create({"epochs": 1}, owner="a")
    with pytest.raises(JobConflict) as info:
        b.create({"epochs": 2}, owner="b")
    assert info.value.job_id == job.id
    a.update(job.id, status="succeeded")
    assert b.create({"epochs": 2}, owner="b").status == "queued"


def test_a_silent_owner_is_reaped_a_beating_one_is_not(tmp_path: Path) -> None:
    store = JobStore(tmp_path, stale_after_s=2.0)
    live = store.create({}, owner="a")
    store.update(live.id, status="running")
    time.sleep(1.2)
    store.beat(live.id)
    time.sleep(1.2)
    store.reap()
    assert store.get(live.id).status == "running"  # created 2.4 s ago, but beat 1.2 s ago: alive
    time.sleep(2.1)
    store.reap()
    reaped = store.get(live.id)
    assert reaped.status == "failed" and reaped.error is not None and reaped.error.startswith("interrupted")


def test_records_persist_and_list_newest_first(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    ids = []
    for epochs in (1, 2, 3):
        job = store.create({"epochs": epochs}, owner="a")
        store.update(job.id, status="succeeded", progress={"epoch": epochs}, model_version=f"v{epochs}")
        ids.append(job.id)
    reopened = JobStore(tmp_path)
    assert [job.id for job in reopened.list(limit=10)] == ids[::-1]
    assert [job.id for job in reopened.list(limit=2)] == ids[:0:-1]
    assert reopened.get(ids[1]).progress == {"epoch": 2}
    with pytest.raises(JobNotFound):
        reopened.get("missing")


def test_cancel_request_reaches_the_owner_through_the_heartbeat(tmp_path: Path) -> None:
    owner, other = JobStore(tmp_path), JobStore(tmp_path)
    job = owner.create({}, owner="a")
    assert owner.beat(job.id) is False
    other.request_cancel(job.id)
    assert owner.beat(job.id) is True
