"""The job store on a real database of each kind: capacity (trainers' slots and the queue) across
store instances (as processes or machines hold them), claiming, staleness on the database's clock,
cancelling, records, and a store from before migrations kept.

Staleness is judged on a clock the tests move forward (`Later`): no test waits for a window to
pass, and a stale window of a minute leaves at least 6 s between "alive" and "stale" for a loaded
machine's delays, where real waits left under a second. A frozen clock (`Frozen`) puts a heartbeat
exactly on the stale line."""

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import ColumnElement, literal, select, update

from app.errors import JobConflict, JobNotFound, NoTrainer, RecordsUnavailable
from app.jobs.store import Beat, Job, JobStatus, JobStore
from app.records.database import Clock, Database, alembic_config, database_url
from app.records.tables import jobs
from tests.postgres import PostgresServer

# The stale window of the tests that judge heartbeats (the service's default is 15 s).
STALE = 60.0


class Later(Clock):
    """The database's clock and this process's, both `ahead` seconds on from the real ones."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def advance(self, seconds: float) -> None:
        self.ahead += seconds

    def database_now(self, sqlite: bool) -> ColumnElement[Any]:
        return super().database_now(sqlite) + literal(self.ahead)

    def monotonic(self) -> float:
        return super().monotonic() + self.ahead


class Frozen(Clock):
    """Both clocks stopped where the test sets them: `now` on the database's, `since` on this
    process's."""

    def __init__(self, now: float) -> None:
        self.now, self.since = now, 0.0

    def database_now(self, sqlite: bool) -> ColumnElement[Any]:
        return literal(self.now)

    def monotonic(self) -> float:
        return self.since


def stored_status(store: JobStore, job_id: str) -> str:
    """The status as the row holds it, read without settling anything."""
    with store.database.read() as db:
        status: str = db.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar_one()
    return status


def opened(url: str, stale_after_s: float = 15.0, clock: Clock | None = None) -> JobStore:
    """A store as a server process opens it at startup: migrations first."""
    database = Database(database_url(url, Path("unused")), clock)
    database.migrate()
    return JobStore(database, stale_after_s=stale_after_s)


def finished(store: JobStore, job: Job, trainer: str = "t1") -> None:
    """Claim `job` as trainer `trainer` and end it succeeded, as a trainer process does."""
    claimed = store.claim(trainer, owner=f"{trainer}:1", slots=1)
    assert claimed is not None and claimed.id == job.id
    assert store.update(
        job.id, f"{trainer}:1", status=JobStatus.SUCCEEDED, model_version="v"
    )  # as trainers do


def test_jobs_fit_the_live_trainers_slots_across_processes(records_url: str) -> None:
    a, b = opened(records_url), opened(records_url)
    with pytest.raises(NoTrainer) as none:  # nothing could run it, and nothing may wait
        a.create({"epochs": 1})
    assert str(none.value) == (
        "no trainer is running to take the job: start one (MNIST_ROLE=trainer or all), "
        "or set MNIST_TRAIN_QUEUE to let jobs wait for one"
    )
    a.check_in("t1", slots=1)
    job = a.create({"epochs": 1})
    assert job == Job(  # as made: queued, owned by nobody, nothing asked of it yet
        id=job.id,
        status=JobStatus.QUEUED,
        params={"epochs": 1},
        created_at=job.created_at,
        heartbeat=job.heartbeat,
    )
    with pytest.raises(JobConflict) as info:
        b.create({"epochs": 2})
    assert info.value.job_id == job.id
    assert info.value.detail == (
        f"training job(s) {job.id} (queued) hold every trainer slot: 1 job(s) run at a time; "
        "try again when one ends"
    )
    b.check_in("t2", slots=1)  # a second trainer: a second slot
    second = b.create({"epochs": 2})
    with pytest.raises(JobConflict):
        a.create({"epochs": 3})
    finished(a, job)
    assert b.create({"epochs": 3}).status == "queued"
    assert {j.id for j in a.recent() if j.status == "queued"} >= {second.id}


def test_the_queue_lets_jobs_wait_for_a_trainer(records_url: str) -> None:
    store = opened(records_url)
    waiting = [store.create({"epochs": n}, queue=2) for n in (1, 2)]  # no trainer yet: they wait
    with pytest.raises(JobConflict) as info:
        store.create({"epochs": 3}, queue=2)
    first, second = (job.id for job in waiting)  # named oldest first
    assert (info.value.job_id, info.value.detail) == (
        first,
        f"training job(s) {first} (queued), {second} (queued) hold every trainer slot and the 2 queue "
        "place(s): 0 job(s) run at a time; try again when one ends",
    )
    store.check_in("t1", slots=1)
    claimed = store.claim("t1", owner="t1:1", slots=1)
    assert claimed is not None and claimed.id == waiting[0].id and claimed.status == "running"
    assert store.claim("t1", owner="t1:1", slots=1) is None  # its one slot is busy
    assert store.claim("t2", owner="t2:1", slots=1).id == waiting[1].id  # type: ignore[union-attr]
    assert store.claim("t2", owner="t2:1", slots=1) is None  # nothing left queued


def test_racing_creates_make_exactly_one_job(records_url: str) -> None:
    """Eight processes' worth of stores asking at once for one slot: exactly one gets through."""
    stores = [opened(records_url) for _ in range(8)]
    stores[0].check_in("t1", slots=1)
    outcomes = race(stores, lambda store: store.create({}))
    assert sorted(outcomes) == ["conflict"] * 7 + ["created"]
    assert len(stores[0].recent()) == 1


def test_racing_claims_give_a_job_to_exactly_one_trainer(records_url: str) -> None:
    stores = [opened(records_url) for _ in range(6)]
    job = stores[0].create({}, queue=1)
    claims = race(stores, lambda store: store.claim(f"t{id(store)}", owner=f"o{id(store)}", slots=1))
    assert sorted(claims) == ["created"] + ["none"] * 5
    assert stores[0].get(job.id).status == "running"


def race(stores: list[JobStore], call: Callable[[JobStore], object]) -> list[str]:
    """Run `call` on every store at the same moment; "created" where it returned something."""
    start = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def ask(store: JobStore) -> None:
        start.wait()
        try:
            outcomes.append("created" if call(store) is not None else "none")
        except JobConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=ask, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_odd_ids_are_not_found_before_the_database_sees_them(records_url: str) -> None:
    store = opened(records_url)
    for job_id in ("a\x00b", "'; DROP TABLE jobs; --", "0123456789AB", ""):
        with pytest.raises(JobNotFound):
            store.get(job_id)
        with pytest.raises(JobNotFound):
            store.request_cancel(job_id)
    with pytest.raises(JobNotFound) as long:
        store.get("z" * 100)
    assert str(long.value) == f"no training job {'z' * 64!r}"  # echoed at most 64 characters
    with pytest.raises(JobNotFound) as unknown:
        store.get("0123456789ab")
    assert str(unknown.value) == "no training job 0123456789ab"


def test_a_silent_owner_is_reaped_and_finds_its_job_lost(records_url: str) -> None:
    clock = Later()
    store = opened(records_url, stale_after_s=STALE, clock=clock)
    store.check_in("t1", slots=1)
    job = store.create({})
    assert store.claim("t1", owner="a", slots=1) is not None
    assert store.update(job.id, "a", pid=4242)  # its child started
    clock.advance(0.6 * STALE)
    assert store.beat(job.id, "a") is Beat.ALIVE
    clock.advance(0.6 * STALE)
    store.reap()
    assert store.get(job.id).status == "running"  # claimed 1.2 windows ago, but beat 0.6 ago: alive
    assert store.beat(job.id, "b") is Beat.LOST  # only its owner keeps it alive
    clock.advance(0.3 * STALE)
    store.reap()
    assert store.get(job.id).status == "running"  # 0.9 windows since it beat
    clock.advance(0.2 * STALE)
    store.reap()
    reaped = store.get(job.id)
    assert reaped.status == "failed" and reaped.error is not None and reaped.error.startswith("interrupted")
    # The owner comes back (an outage longer than the stale window): the job is no longer its own.
    assert store.beat(job.id, "a") is Beat.LOST
    assert store.update(job.id, "a", status="succeeded") is False
    assert store.get(job.id).status == "failed"


def test_reads_and_cancels_settle_a_silent_owners_job_at_once(records_url: str) -> None:
    """No reaper timer runs here: the read and the cancel themselves see the owner is gone."""
    clock = Later()
    store = opened(records_url, stale_after_s=STALE, clock=clock)
    store.check_in("t1", slots=2)
    for owner in ("a", "b"):
        store.create({})
        claimed = store.claim("t1", owner=owner, slots=2)
        assert claimed is not None and store.update(claimed.id, owner, pid=4242)
    to_cancel, to_read = (job.id for job in store.recent())
    clock.advance(1.2 * STALE)  # both owners silent past the stale window (killed, say)
    read = store.get(to_read)
    assert read.status == "failed" and read.error is not None and read.error.startswith("interrupted")
    assert stored_status(store, to_cancel) == "failed"  # the read settled every silent owner's job
    store.create({}, queue=1)  # and a queued job, never silent, is left as it is by reads
    clock.advance(2 * STALE)
    assert [job.status for job in store.recent()] == ["queued", "failed", "failed"]
    store.check_in("t1", slots=2)
    claimed = store.claim("t1", owner="c", slots=2)
    assert claimed is not None and store.update(claimed.id, "c", pid=4242)
    clock.advance(1.2 * STALE)  # its owner silent too: a cancel ends it at once, cancelled
    cancelled = store.request_cancel(claimed.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None


def test_the_stale_line_itself_is_still_alive(records_url: str) -> None:
    """A heartbeat exactly a window old is not yet silent, a trainer's neither; a process that
    has had the database exactly a window judges; a read of a live job reaps nothing."""
    clock = Frozen(now=1000.0)
    store = opened(records_url, stale_after_s=STALE, clock=clock)
    store.check_in("t1", slots=2)
    older, newer = store.create({}), store.create({})
    clock.now = 999.0
    assert store.claim("t1", owner="a", slots=2) is not None and store.update(older.id, "a", pid=1)
    clock.now = 1000.0
    assert store.claim("t1", owner="b", slots=2) is not None and store.update(newer.id, "b", pid=2)
    store.check_in("t1", slots=2)
    clock.now, clock.since = 1000.0 + STALE, STALE
    assert store.get(newer.id).status == "running"  # on the line: alive, and its read reaps nothing
    assert stored_status(store, older.id) == "running"
    assert store.get(older.id).status == "failed"  # a second past it: settled by its own read
    assert stored_status(store, newer.id) == "running"  # the reaping spared the one on the line
    assert store.create({}).status == "queued"  # and the trainer on the line keeps its slot


def test_a_claim_whose_child_never_started_goes_back_to_the_queue(records_url: str) -> None:
    clock = Later()
    store = opened(records_url, stale_after_s=STALE, clock=clock)
    store.check_in("t1", slots=1)
    job = store.create({})
    assert store.claim("t1", owner="died-before-its-child-started", slots=1) is not None
    clock.advance(1.2 * STALE)
    store.check_in("t2", slots=1)
    again = store.claim("t2", owner="b", slots=1)
    assert again is not None and again.id == job.id and again.owner == "b"


def test_only_silent_owners_jobs_are_settled(records_url: str) -> None:
    """Reaping judges heartbeats alone: a live owner's job stays running whatever it carries (a
    cancel it has yet to carry out, no child yet); once silent, a cancelled job ends cancelled, one
    with no child goes back to the queue, any other (a shutting-down server's too, which sets an
    error beside its cancel) ends failed, interrupted."""
    clock = Later()
    store = opened(records_url, stale_after_s=STALE, clock=clock)
    store.check_in("t1", slots=4)
    made = {kind: store.create({"kind": kind}) for kind in ("cancel", "shutdown", "no child", "plain")}
    for kind, job in made.items():
        claimed = store.claim("t1", owner=kind, slots=4)
        assert claimed is not None and claimed.id == job.id
        if kind != "no child":
            assert store.update(job.id, kind, pid=4242)
    assert store.request_cancel(made["cancel"].id).status == "running"
    assert store.update(
        made["shutdown"].id, "shutdown", cancel_requested=True, error="interrupted: shut down"
    )
    clock.advance(0.6 * STALE)
    for kind, job in made.items():  # alive, past this process's own first window
        expected = Beat.CANCEL if kind in ("cancel", "shutdown") else Beat.ALIVE
        assert store.beat(job.id, kind) is expected, kind
    clock.advance(0.6 * STALE)
    store.reap()
    assert {job.status for job in store.recent()} == {"running"}
    clock.advance(0.6 * STALE)  # silent for 1.2 windows now
    store.reap()
    ended = {kind: store.get(job.id) for kind, job in made.items()}
    assert (ended["cancel"].status, ended["cancel"].error) == ("cancelled", None)
    interrupted = "interrupted: the trainer running this job stopped before it finished"
    assert (ended["shutdown"].status, ended["shutdown"].error) == ("failed", interrupted)
    assert (ended["plain"].status, ended["plain"].error) == ("failed", interrupted)
    assert (ended["no child"].status, ended["no child"].owner) == ("queued", "")
    for kind in ("cancel", "shutdown", "plain"):
        assert ended[kind].finished_at is not None
    assert ended["no child"].finished_at is None


def test_a_claim_released_at_shutdown_is_queued_as_new_for_the_next_trainer(records_url: str) -> None:
    store = opened(records_url)
    store.check_in("t1", slots=1)
    job = store.create({"epochs": 2})
    claimed = store.claim("t1", owner="a", slots=1)
    assert claimed is not None and claimed.started_at is not None
    assert store.update(job.id, "a", progress={"epoch": 1})
    store.release(job.id, "b")  # only its owner gives it back
    assert store.get(job.id).status == "running"
    store.release(job.id, "a")
    assert store.get(job.id) == Job(
        id=job.id,
        status=JobStatus.QUEUED,
        params={"epochs": 2},
        created_at=job.created_at,
        heartbeat=claimed.heartbeat,
    )
    again = store.claim("t1", owner="c", slots=1)
    assert again is not None and (again.id, again.owner, again.trainer) == (job.id, "c", "t1")


def test_an_owner_of_two_jobs_changes_only_the_one_it_names(records_url: str) -> None:
    clock = Later()
    store = opened(records_url, stale_after_s=STALE, clock=clock)
    store.check_in("t1", slots=2)
    first, second = store.create({}), store.create({})
    assert store.claim("t1", owner="a", slots=2) is not None
    assert store.claim("t1", owner="a", slots=2) is not None
    before = store.get(second.id)
    clock.advance(0.5 * STALE)
    assert store.beat(first.id, "a") is Beat.ALIVE
    assert store.get(first.id).heartbeat > before.heartbeat
    assert store.get(second.id).heartbeat == before.heartbeat
    assert store.update(first.id, "a", progress={"epoch": 1}, status=JobStatus.SUCCEEDED)
    assert store.update(second.id, "b", progress={"epoch": 9}) is False  # not b's job
    assert store.get(first.id).status == "succeeded"
    assert store.get(first.id).progress == {"epoch": 1}
    assert store.get(second.id).progress == before.progress
    store.release(first.id, "a")  # a finished job is not given back to the queue
    assert store.get(first.id).status == "succeeded"
    assert store.get(second.id).status == "running"


def rewrite(store: JobStore, job_id: str, **values: Any) -> None:
    """Set a job's columns as another machine's store could have written them."""
    with store.database.write() as db:
        db.execute(update(jobs).where(jobs.c.id == job_id).values(**values))


def tied_against_write_order(store: JobStore) -> tuple[str, str]:
    """Two queued jobs made in the same microsecond (on two machines), the one written first
    holding the larger id: the order a database falls back on for ties (the order rows were
    written) is then the reverse of the id order the store promises."""
    made = [store.create({}, queue=64).id for _ in range(2)]
    for job_id, new_id in zip(made, ("f" * 12, "0" * 12), strict=True):
        rewrite(store, job_id, id=new_id, created_at="2999-01-01T00:00:00")
    return "f" * 12, "0" * 12


def test_the_newest_twenty_by_default_ties_broken_by_id(records_url: str) -> None:
    store = opened(records_url)
    store.check_in("t1", slots=1)
    made = [store.create({}, queue=30).id for _ in range(21)]
    assert [job.id for job in store.recent()] == made[:0:-1]
    first_written, second_written = tied_against_write_order(store)
    assert [job.id for job in store.recent(limit=2)] == [first_written, second_written]  # larger id first


def test_trainers_claim_the_oldest_job_first_ties_broken_by_id(records_url: str) -> None:
    store = opened(records_url)
    store.check_in("t1", slots=2)
    first_written, second_written = tied_against_write_order(store)
    claimed = [store.claim("t1", owner="a", slots=2) for _ in range(2)]
    assert [job.id for job in claimed if job is not None] == [second_written, first_written]


def test_a_full_store_names_the_active_jobs_oldest_first(records_url: str) -> None:
    store = opened(records_url)
    store.check_in("t1", slots=1)  # as many waiting places as slots: a conflict, not "no trainer"
    running = store.create({}, queue=1)
    assert store.claim("t1", owner="t1:1", slots=1) is not None
    waiting = store.create({}, queue=1)  # newer, though "queued" sorts before "running"
    with pytest.raises(JobConflict) as info:
        store.create({}, queue=1)
    assert info.value.job_id == running.id
    assert info.value.detail == (
        f"training job(s) {running.id} (running), {waiting.id} (queued) hold every trainer slot and "
        "the 1 queue place(s): 1 job(s) run at a time; try again when one ends"
    )


def test_a_trainer_checking_in_again_refreshes_its_slots_and_its_heartbeat(records_url: str) -> None:
    clock = Later()
    store = opened(records_url, stale_after_s=STALE, clock=clock)
    store.check_in("t1", slots=1)
    store.create({})
    clock.advance(0.6 * STALE)
    store.check_in("t1", slots=2)  # restarted with more processes
    clock.advance(0.6 * STALE)  # 1.2 windows since it first checked in, 0.6 since it last did
    store.create({})  # its second slot: it is alive, with two
    with pytest.raises(JobConflict):
        store.create({})


def test_a_trainer_checking_out_takes_only_its_own_slots_away(records_url: str) -> None:
    store = opened(records_url)
    store.check_in("t1", slots=2)
    store.check_in("t2", slots=1)
    store.check_out("t1")
    store.create({})  # t2's one slot
    with pytest.raises(JobConflict):
        store.create({})


def test_nothing_to_claim_and_reads_take_no_write_lock(records_url: str) -> None:
    """Every trainer asks for work each second and every page reads jobs: when there is nothing
    to claim or settle they only read, so they never wait behind a writer (or hold one up). Here
    another store holds the write lock throughout: anything that asked for it would time out."""
    clock = Frozen(now=1000.0)
    store = opened(records_url, stale_after_s=STALE, clock=clock)
    store.check_in("t1", slots=2)
    done = store.create({})
    finished(store, done)  # long finished: its heartbeat is old, but it is not running
    clock.now = 1000.0 + 9 * STALE
    store.check_in("t1", slots=2)
    running = store.create({})
    assert store.claim("t1", owner="t1:1", slots=2) is not None and store.update(running.id, "t1:1", pid=1)
    clock.now, clock.since = 1000.0 + 10 * STALE, 10 * STALE  # its heartbeat exactly on the stale line
    writer = opened(records_url)
    with writer.database.write():
        assert store.claim("t1", owner="t1:2", slots=2) is None
        assert [job.status for job in store.recent()] == ["running", "succeeded"]
        assert store.get(done.id).status == "succeeded"


def test_heartbeats_are_judged_only_a_stale_window_after_an_outage(tmp_path: Path) -> None:
    """PostgreSQL out for longer than the stale window: when it is back, every heartbeat is old.
    A process that lost the database waits a window before reaping, so live owners beat first."""
    server = PostgresServer()
    try:
        clock = Later()
        owner, reaper = (opened(server.url(), stale_after_s=STALE, clock=clock) for _ in range(2))
        owner.check_in("t1", slots=1)
        job = owner.create({})
        assert owner.claim("t1", owner="a", slots=1) is not None
        owner.update(job.id, "a", pid=4242)  # its child runs
        server.stop()
        with pytest.raises(RecordsUnavailable):
            reaper.reap()
        clock.advance(1.2 * STALE)  # longer than the stale window
        server.start()
        reaper.reap()
        assert reaper.get(job.id).status == "running"  # not judged yet: owners get their window
        assert owner.beat(job.id, "a") is Beat.ALIVE
        clock.advance(0.9 * STALE)
        reaper.reap()
        assert reaper.get(job.id).status == "running"  # not yet a window since the owner beat
        clock.advance(0.2 * STALE)  # a window after the outage, and the owner silent all of it
        reaper.reap()
        assert reaper.get(job.id).status == "failed"
    finally:
        server.remove()


def test_a_process_that_just_started_gives_owners_a_window_too(records_url: str) -> None:
    """A replica starting as the database comes back never saw the outage, yet owners have not
    beaten again either: it judges no heartbeat before it has been up a stale window."""
    clock = Later()
    owner = opened(records_url, stale_after_s=STALE, clock=clock)
    owner.check_in("t1", slots=1)
    job = owner.create({})
    assert owner.claim("t1", owner="a", slots=1) is not None
    assert owner.update(job.id, "a", pid=4242)
    clock.advance(1.2 * STALE)  # the owner silent for longer than the window (as during an outage)
    newcomer = opened(records_url, stale_after_s=STALE, clock=clock)
    newcomer.reap()
    assert newcomer.get(job.id).status == "running"
    clock.advance(0.9 * STALE)
    newcomer.reap()
    assert newcomer.get(job.id).status == "running"  # up less than a window
    clock.advance(0.2 * STALE)
    newcomer.reap()
    assert newcomer.get(job.id).status == "failed"


def test_a_silent_trainer_leaves_no_slot(records_url: str) -> None:
    clock = Later()
    store = opened(records_url, stale_after_s=STALE, clock=clock)
    store.check_in("t1", slots=3)
    store.create({})  # alive, it has room
    clock.advance(1.2 * STALE)
    with pytest.raises(NoTrainer):
        store.create({})


def test_records_persist_and_list_newest_first(records_url: str) -> None:
    store = opened(records_url)
    store.check_in("t1", slots=1)
    ids = []
    for epochs in (1, 2, 3):
        job = store.create({"epochs": epochs, "lr": 0.5})
        finished(store, job)
        store.database.engine.dispose()
        ids.append(job.id)
    reopened = opened(records_url)
    assert [job.id for job in reopened.recent(limit=10)] == ids[::-1]
    assert [job.id for job in reopened.recent(limit=2)] == ids[:0:-1]
    assert reopened.get(ids[1]).params == {"epochs": 2, "lr": 0.5}
    assert reopened.get(ids[1]).status == "succeeded" and reopened.get(ids[1]).trainer == "t1"
    with pytest.raises(JobNotFound):
        reopened.get("missing")


def test_cancel_ends_a_queued_job_and_reaches_a_running_ones_owner(records_url: str) -> None:
    owner, other = opened(records_url), opened(records_url)
    owner.check_in("t1", slots=1)
    queued = owner.create({}, queue=1)
    waiting = owner.create({}, queue=1)
    cancelled = other.request_cancel(waiting.id)  # nobody runs it: it ends now
    assert (cancelled.status, cancelled.cancel_requested) == ("cancelled", True)
    assert cancelled.finished_at is not None and cancelled.finished_at >= cancelled.created_at
    assert owner.get(waiting.id) == cancelled
    assert owner.claim("t1", owner="a", slots=1).id == queued.id  # type: ignore[union-attr]
    assert owner.beat(queued.id, "a") is Beat.ALIVE
    assert other.request_cancel(queued.id).status == "running"  # its owner stops it
    assert owner.beat(queued.id, "a") is Beat.CANCEL
    with pytest.raises(JobNotFound) as unknown:
        other.request_cancel("0123456789ab")
    assert str(unknown.value) == "no training job 0123456789ab"


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
    store.check_in("t1", slots=1)
    assert store.create({"epochs": 2}).status == "queued"  # and it takes new jobs
