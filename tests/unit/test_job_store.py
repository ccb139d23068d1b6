"""The job store on a real database of each kind: the one-job rule across store instances (as two
processes or machines hold them), staleness, records, and a store from before migrations kept."""

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from app.db import Database, alembic_config, database_url
from app.errors import JobConflict, JobNotFound
from app.jobs.store import JobStore


def opened(url: str, stale_after_s: float = 15.0) -> JobStore:
    """A store as a server process opens it at startup: migrations first."""
    database = Database(database_url(url, Path("unused")))
    database.migrate()
    return JobStore(database, stale_after_s=stale_after_s)


def test_one_active_job_across_processes_sharing_the_database(records_url: str) -> None:
    a, b = opened(records_url), opened(records_url)
    job = a.create({"epochs": 1}, owner="a")
    with pytest.raises(JobConflict) as info:
        b.create({"epochs": 2}, owner="b")
    assert info.value.job_id == job.id
    a.update(job.id, status="succeeded")
    assert b.create({"epochs": 2}, owner="b").status == "queued"


def test_racing_creates_make_exactly_one_job(records_url: str) -> None:
    """Eight processes' worth of stores asking at once: the database lets exactly one through."""
    stores = [opened(records_url) for _ in range(8)]
    start = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def ask(store: JobStore) -> None:
        start.wait()
        try:
            store.create({}, owner="racer")
            outcomes.append("created")
        except JobConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=ask, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["created"]
    assert len(stores[0].list()) == 1


def test_odd_ids_are_not_found_before_the_database_sees_them(records_url: str) -> None:
    store = opened(records_url)
    for job_id in ("a\x00b", "'; DROP TABLE jobs; --", "0123456789AB", ""):
        with pytest.raises(JobNotFound):
            store.get(job_id)
        with pytest.raises(JobNotFound):
            store.request_cancel(job_id)


def test_a_silent_owner_is_reaped_a_beating_one_is_not(records_url: str) -> None:
    store = opened(records_url, stale_after_s=2.0)
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


def test_records_persist_and_list_newest_first(records_url: str) -> None:
    store = opened(records_url)
    ids = []
    for epochs in (1, 2, 3):
        job = store.create({"epochs": epochs, "lr": 0.5}, owner="a")
        store.update(job.id, status="succeeded", progress={"epoch": epochs}, model_version=f"v{epochs}")
        ids.append(job.id)
    reopened = opened(records_url)
    assert [job.id for job in reopened.list(limit=10)] == ids[::-1]
    assert [job.id for job in reopened.list(limit=2)] == ids[:0:-1]
    assert reopened.get(ids[1]).progress == {"epoch": 2}
    assert reopened.get(ids[1]).params == {"epochs": 2, "lr": 0.5}
    with pytest.raises(JobNotFound):
        reopened.get("missing")


def test_cancel_request_reaches_the_owner_through_the_heartbeat(records_url: str) -> None:
    owner, other = opened(records_url), opened(records_url)
    job = owner.create({}, owner="a")
    assert owner.beat(job.id) is False
    other.request_cancel(job.id)
    assert owner.beat(job.id) is True


# The schema and a row exactly as the first release's SQLite store wrote them (before migrations).
LEGACY_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, params TEXT NOT NULL, progress TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, error TEXT, model_version TEXT,
    test_accuracy REAL, owner TEXT NOT NULL, heartbeat REAL NOT NULL, pid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_created ON jobs (created_at);
INSERT INTO jobs VALUES ('0123456789ab', 'succeeded', '{"epochs": 1}', '{"epoch": 1, "history": []}',
    '2026-05-01T10:00:00.000+00:00', '2026-05-01T10:00:01.000+00:00', '2026-05-01T10:01:00.000+00:00',
    NULL, '5847e031596a', 98.6, 'host:1:abcd', 1.0, 42, 0);
"""


def test_a_store_from_before_migrations_is_adopted_with_its_records(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobs.sqlite3"
    path.parent.mkdir()
    with sqlite3.connect(path) as legacy:
        legacy.executescript(LEGACY_SCHEMA)
    store = opened(f"sqlite:///{path}")
    newest = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert newest is not None and store.database.revision() == newest
    job = store.get("0123456789ab")
    assert job.status == "succeeded" and job.params == {"epochs": 1} and job.progress["epoch"] == 1
    assert job.model_version == "5847e031596a" and job.test_accuracy == 98.6 and job.cancel_requested is False
    assert store.create({"epochs": 2}, owner="b").status == "queued"  # and it takes new jobs
