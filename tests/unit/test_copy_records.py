"""Carrying one machine's history to shared records: `python -m app.records.copy` copies jobs,
versions (with their weights, into a real S3 store) and the active version from the state folder's
SQLite into a real PostgreSQL, and copies nothing twice."""

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from app.jobs.store import JobStore
from app.records.copy import copy_records
from app.records.database import Database, database_url
from app.records.model_store import LocalModelStore, S3ModelStore
from app.records.versions import ModelVersions
from models.checkpoint import load_checkpoint
from tests.checkpoints import another_version, copied
from tests.postgres import PostgresServer
from tests.s3 import S3Server
from tests.server import REPO


def one_machines_history(tmp_path: Path, small_checkpoint: Path) -> tuple[Path, str, str, str]:
    """A state folder's SQLite records: two kept versions (the first active again, by hand) and a
    job that trained the second. Returns the folder, both versions and the job's id."""
    state = tmp_path / "state"
    local = Database(database_url(None, state))
    local.migrate()
    versions = ModelVersions(local, LocalModelStore(state / "models"), state, tmp_path / "mnist_cnn.pt")
    first = versions.keep(copied(small_checkpoint, versions.incoming_path("a")))
    second = versions.keep(another_version(small_checkpoint, versions.incoming_path("b")))
    versions.activate(first, "rollback by hand")
    jobs = JobStore(local, stale_after_s=15.0)
    jobs.check_in("laptop", slots=1)
    job = jobs.create({"epochs": 1})
    assert jobs.claim("laptop", owner="me", slots=1) is not None
    assert jobs.update(job.id, "me", status="succeeded", model_version=second, test_accuracy=12.5)
    versions.close()
    local.dispose()
    return state, first, second, job.id


def test_one_machines_history_moves_to_postgresql_and_s3(
    tmp_path: Path, small_checkpoint: Path, postgres: PostgresServer, s3: S3Server
) -> None:
    state, first, second, job_id = one_machines_history(tmp_path, small_checkpoint)
    url, store = postgres.new_database(), f"s3://history-{uuid.uuid4().hex[:8]}/mnist"
    assert copy_records(state, None, url, store) == {"versions": 2, "jobs": 1, "active": 1}

    shared = Database(database_url(url, tmp_path / "replica"))
    replica = ModelVersions(
        shared, S3ModelStore(store, tmp_path / "replica" / "cache"), tmp_path, tmp_path / "m.pt"
    )
    listed = {entry["model_version"]: entry for entry in replica.list()}
    assert set(listed) == {first, second} and listed[first]["activated_by"] == "rollback by hand"
    for version in (first, second):  # the weights came along: fetched from S3, verified
        assert load_checkpoint(replica.local_copy(listed[version])).version == version
    moved = JobStore(shared, stale_after_s=15.0).get(job_id)
    assert moved.status == "succeeded" and moved.model_version == second and moved.params == {"epochs": 1}
    assert copy_records(state, None, url, store) == {"versions": 0, "jobs": 0, "active": 0}  # nothing twice
    replica.close()
    shared.dispose()


@pytest.mark.slow  # two processes of their own, each importing torch afresh (seconds)
def test_the_command_says_what_it_copied_and_copies_nothing_twice(
    tmp_path: Path, small_checkpoint: Path, postgres: PostgresServer, s3: S3Server
) -> None:
    state, *_ = one_machines_history(tmp_path, small_checkpoint)
    url, store = postgres.new_database(), f"s3://history-{uuid.uuid4().hex[:8]}/mnist"
    command = [
        sys.executable,
        "-m",
        "app.records.copy",
        "--state-dir",
        str(state),
        "--to",
        url,
        "--to-store",
        store,
    ]
    said = [
        subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout for _ in range(2)
    ]
    assert "copied 1 job(s), 2 version(s), 1 active version" in said[0]
    assert "copied 0 job(s), 0 version(s), 0 active version" in said[1]
