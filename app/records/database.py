"""The database that holds job records: SQLite in the state folder by default, PostgreSQL when
MNIST_DATABASE_URL names one (several machines). One code path serves both, through SQLAlchemy Core.

Writes that must see a consistent table (the one-job rule, claiming, reaping) run in `write()`:
on SQLite an immediate transaction (one writer at a time across processes), on PostgreSQL a
transaction holding an advisory lock, so the rule is enforced by the database, not by a process.
The schema is versioned with Alembic (app/records/migrations) and brought up to date before the first
transaction that needs it: at startup when the database answers, else when it first does (the
server serves predictions meanwhile), and on SQLite again if the state folder is deleted under a
running server.
"""

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import ColumnElement, Connection, Engine, create_engine, event, func, inspect, literal, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.errors import RecordsUnavailable
from app.records.pools import Threads, on_records

log = logging.getLogger("app.records.database")

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: the key of the advisory lock that serialises job-table writes on PostgreSQL.
WRITE_LOCK_KEY = 0x6D6E697374  # "mnist"
# Today's first schema: a store made before migrations existed holds exactly this.
FIRST_REVISION = "0001"
# Threads for record calls (app/records/pools.py says why they have their own).
RECORD_THREADS = 4


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")  # sorts jobs made in one millisecond


def database_url(url: str | None, state_dir: Path) -> str:
    """MNIST_DATABASE_URL as SQLAlchemy takes it; unset means SQLite in the state folder."""
    if not url:
        return f"sqlite:///{state_dir / 'jobs.sqlite3'}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):  # the usual spelling; psycopg 3 is our driver
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


class Clock:
    """The two clocks the records are judged by. Heartbeats are stamped and compared in SQL on the
    database's clock, so every machine shares one; how long this process has had the database
    back is measured on its own monotonic clock. A test passes one that it moves forward."""

    def database_now(self, sqlite: bool) -> ColumnElement[Any]:
        """The database's time in seconds since the epoch, as an SQL expression."""
        if sqlite:
            return (func.julianday("now") - literal(2440587.5)) * literal(86400.0)
        return func.extract("epoch", func.clock_timestamp())

    def monotonic(self) -> float:
        return time.monotonic()


class Database:
    """An engine, transactions for reads and for serialised writes, and schema migrations."""

    def __init__(self, url: str, clock: Clock | None = None) -> None:
        self._clock = clock or Clock()
        self.url = make_url(url)
        self.sqlite = self.url.get_backend_name() == "sqlite"
        self._file = (
            Path(self.url.database)
            if self.sqlite and self.url.database not in (None, "", ":memory:")
            else None
        )
        if self.sqlite:
            self.engine: Engine = create_engine(self.url, connect_args={"timeout": 10})
            self._take_over_sqlite_transactions(self.engine)
        else:
            # pre_ping: after a database restart, pooled connections are found dead and replaced.
            # Timeouts: a database that hangs must become a 503 soon, not hold a thread for ever.
            self.engine = create_engine(
                self.url,
                pool_pre_ping=True,
                pool_size=2,
                max_overflow=4,
                pool_timeout=10,
                connect_args={"connect_timeout": 5, "options": "-c statement_timeout=15000"},
            )
        self.records = Threads(RECORD_THREADS, "records")
        # When this process last got the database back after losing it, or started: a process
        # that starts as the database returns has not seen the outage, but owners still need
        # a stale window to beat again.
        self._back_since = self._clock.monotonic()
        self._lost = False
        self._schema_ready = False
        self._schema_lock = threading.RLock()
        self._migrating = False  # only ever True in the thread that holds _schema_lock
        self._migrated_file: tuple[int, int] | None = None

    def clock(self) -> ColumnElement[Any]:
        """The database's time in seconds since the epoch: heartbeats of every machine are stamped
        and judged on this one clock, so a host whose clock is off cannot look alive or dead."""
        return self._clock.database_now(self.sqlite)

    @staticmethod
    def _take_over_sqlite_transactions(engine: Engine) -> None:
        """Let us emit BEGIN ourselves (the driver's own is deferred), as SQLAlchemy documents."""

        @event.listens_for(engine, "connect")
        def connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA busy_timeout = 10000")

        @event.listens_for(engine, "begin")
        def begin(connection: Connection) -> None:
            immediate = connection.get_execution_options().get("write", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        self.ensure_schema()
        with self._reachable(), self.engine.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction no other writer runs beside, in any process on any machine."""
        self.ensure_schema()
        with self._reachable(), self.engine.connect() as connection:
            connection.execution_options(write=True)
            with connection.begin():
                if not self.sqlite:
                    connection.execute(select(func.pg_advisory_xact_lock(WRITE_LOCK_KEY)))
                yield connection

    def reachable_for(self) -> float:
        """Seconds since this process started or got the database back after an outage. Judging
        silence by heartbeats is only fair once owners have had time to beat again."""
        return 0.0 if self._lost else self._clock.monotonic() - self._back_since

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """A lost or refused connection is RecordsUnavailable (503 to clients); the pool replaces
        dead connections, so the next call after the database is back simply works."""
        try:
            yield
            if self._lost:
                self._lost, self._back_since = False, self._clock.monotonic()
                log.info("database reachable again")
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            self._lost = True
            log.warning("database unavailable: %s", str(exc).splitlines()[0])
            raise RecordsUnavailable(
                "job and model-version records are unavailable: the database cannot be reached "
                "(predictions are not affected); try again shortly"
            ) from exc

    def _file_identity(self) -> tuple[int, int] | None:
        """Which file the SQLite path names now (device, inode); None when there is none."""
        try:
            stat = os.stat(self._file) if self._file is not None else None
        except FileNotFoundError:
            return None
        return (stat.st_dev, stat.st_ino) if stat is not None else None

    def _schema_in_place(self) -> bool:
        """Migrated, and on SQLite still on the file we migrated: a file deleted and made again
        (by another process of this server, say) is a new database our pooled connections miss."""
        return self._schema_ready and (self._file is None or self._file_identity() == self._migrated_file)

    def ensure_schema(self) -> None:
        """Migrate unless done: once per process, or again when the SQLite file was deleted or
        replaced (its folder is made again, and the pool's connections, which still point at the
        old file, are dropped). RecordsUnavailable while the database cannot be reached or
        written; the next transaction tries again. A stat per transaction on SQLite."""
        if self._schema_in_place():
            return
        with self._schema_lock:
            if self._migrating or self._schema_in_place():
                return
            if self._schema_ready and self._file is not None:
                log.warning("the records database %s is gone or replaced (state folder deleted?)", self._file)
                self.engine.dispose()
            self._schema_ready = False  # until a migration succeeds: a failed one is tried again
            self._migrating = True
            try:
                if self._file is not None:
                    self._make_folder()
                self.migrate()
            finally:
                self._migrating = False
            self._migrated_file = self._file_identity()
            self._schema_ready = True

    def _make_folder(self) -> None:
        assert self._file is not None
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordsUnavailable(
                f"job and model-version records are unavailable: {exc.strerror}"
            ) from None

    def migrate(self) -> None:
        """Bring the schema to the newest revision; a store from before migrations is adopted as
        the first revision, its rows kept. Safe when several processes start at once (one writer)."""
        with self.write() as connection:
            tables = set(inspect(connection).get_table_names())
            config = alembic_config()
            config.attributes["connection"] = connection
            if "jobs" in tables and "alembic_version" not in tables:
                command.stamp(config, FIRST_REVISION)
            command.upgrade(config, "head")

    def revision(self) -> str | None:
        with self.read() as connection:
            if "alembic_version" not in inspect(connection).get_table_names():
                return None
            return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

    def ping(self) -> None:
        """RecordsUnavailable unless the database answers."""
        with self.read() as connection:
            connection.execute(select(literal(1)))

    aensure_schema = on_records(ensure_schema)
    aping = on_records(ping)

    def dispose(self) -> None:
        self.records.shutdown()
        self.engine.dispose()
