"""A real PostgreSQL server for tests: its own cluster in a temporary folder (initdb, pg_ctl), on a
free port, run as the `postgres` user when the tests run as root. Where the server is not installed
(`apt-get install postgresql`) its tests are skipped, saying why, except in CI, where they fail."""

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.server import free_port
from tests.tools import not_installed


def postgres_binary(name: str) -> str | None:
    """Debian keeps the server's programs off PATH, in /usr/lib/postgresql/<version>/bin."""
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # the newest version last
    return shutil.which(name) or (installed[-1] if installed else None)


class PostgresServer:
    """One cluster; `new_database()` gives each test a database of its own."""

    def __init__(self) -> None:
        initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            not_installed("PostgreSQL is not installed (apt-get install postgresql)")
        self.pg_ctl = pg_ctl
        self.folder = Path(tempfile.mkdtemp(prefix="mnist-pg-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"
        self.port = free_port()
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "server.log")
        self._run(self.pg_ctl, "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg  # here, not above: machines without PostgreSQL need not carry the driver

        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
