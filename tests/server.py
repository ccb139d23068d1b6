"""A real server process on a free local port, for tests over real HTTP."""

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

import httpx

from models.checkpoint import metadata_path
from tests.tools import polled

REPO = Path(__file__).resolve().parent.parent
FAST_CLOCKS = {"MNIST_JOB_HEARTBEAT_S": "0.5", "MNIST_MODEL_POLL_S": "0.5"}


def fresh_deployment(tmp_path: Path, checkpoint: Path) -> dict[str, str]:
    """A model folder holding a copy of `checkpoint`, and an empty state folder."""
    models = tmp_path / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint, models / "mnist_cnn.pt")
    shutil.copy(metadata_path(checkpoint), models / "mnist_cnn.json")
    return {
        "MNIST_MODEL_PATH": str(models / "mnist_cnn.pt"),
        "MNIST_STATE_DIR": str(tmp_path / "state"),
        **FAST_CLOCKS,
    }


def two_versions(tmp_path: Path, first: Path, second: Path) -> dict[str, str]:
    """A deployment that keeps two model versions, `second` active: a server first starts on
    `first` (recording it), then the returned settings start one on `second` over the same state."""
    env = fresh_deployment(tmp_path / "first", first)
    with ServerProcess(env, ready_path="/readyz"):
        pass
    return {**fresh_deployment(tmp_path / "second", second), "MNIST_STATE_DIR": env["MNIST_STATE_DIR"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PortTaken(RuntimeError):
    """The server could not bind the port chosen for it."""


class ServerProcess:
    """`uvicorn app.main:app` (or `python -m app`) with the given MNIST_* settings."""

    def __init__(
        self,
        env: dict[str, str],
        production: bool = False,
        ready_path: str = "/healthz",
        open_files: int | None = None,
    ) -> None:
        self.ready_path = ready_path
        self.production = production
        # The repository first, then whatever path the caller runs with (a --target folder of wheels).
        python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": python_path, **env}
        self._use_port(free_port())
        self.open_files = open_files  # a soft limit on open files for the server to start under
        self.process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a chatty server must never block on a pipe nobody reads.
        self.output = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server

    def _use_port(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env["MNIST_PORT"] = str(port)
        if self.production:
            self.command = [sys.executable, "-m", "app"]
        else:
            self.command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)]

    def start(self, timeout_s: float = 60, tries: int = 3) -> "ServerProcess":
        """Start and wait until ready. A free port can be taken by another process between our
        choosing it and the server binding it: then the server is started again on another."""
        for _ in range(tries - 1):
            try:
                return self._start(timeout_s)
            except PortTaken:
                self.output.seek(0)
                self.output.truncate()
                self._use_port(free_port())
        return self._start(timeout_s)

    def _start(self, timeout_s: float) -> "ServerProcess":
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=REPO,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._limit_open_files if self.open_files else None,
        )
        try:
            polled(self._ready, timeout_s=timeout_s)
        except AssertionError:
            raise RuntimeError(f"server not up within {timeout_s} s: {self.stop()}") from None
        return self

    def _ready(self) -> bool:
        """Whether the server answers on its readiness path; if it exited instead, why."""
        assert self.process is not None
        if self.process.poll() is not None:
            log = self.stop()
            if "error while attempting to bind" in log:  # uvicorn's words for EADDRINUSE
                raise PortTaken(log)
            raise RuntimeError(f"server exited with {self.process.returncode}: {log}")
        try:
            return httpx.get(self.url + self.ready_path, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def stop(self, timeout_s: float = 30, whole_group: bool = True) -> str:
        """SIGTERM (as an orchestrator would: to the process group, or to the server alone, which
        must then stop its own children), wait, and return everything the server printed."""
        if self.process is not None and self.process.poll() is None:
            if whole_group:
                os.killpg(self.process.pid, signal.SIGTERM)
            else:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.read_log()

    def read_log(self) -> str:
        """Everything the server printed so far. Read without moving the file's offset, which the
        server shares: a seek back would have its next lines written over the first ones."""
        fd = self.output.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class DualStackServer(ServerProcess):
    """`python -m app` on `::`, gRPC included: 127.0.0.1 and ::1 reach it as two client addresses
    (gRPC takes IPv4 clients there too; uvicorn, through asyncio, only IPv6 ones)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.grpc_port = free_port()
        env = {**env, "MNIST_HOST": "::", "MNIST_GRPC_PORT": str(self.grpc_port)}
        super().__init__(env, production=True, ready_path="/readyz")

    def _use_port(self, port: int) -> None:
        super()._use_port(port)
        self.url = f"http://[::1]:{port}"

    @property
    def grpc_ipv4(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def grpc_ipv6(self) -> str:
        return f"[::1]:{self.grpc_port}"


def impatient_server(checkpoint: Path, timeout_s: float) -> ServerProcess:
    """`python -m app`, one process, waiting at most `timeout_s` for a request's head and for its
    body, started under the common soft limit of 1024 open files."""
    env = {
        "MNIST_MODEL_PATH": str(checkpoint),
        "MNIST_WORKERS": "1",
        "MNIST_HEADER_TIMEOUT_S": str(timeout_s),
        "MNIST_BODY_TIMEOUT_S": str(timeout_s),
    }
    return ServerProcess(env, production=True, ready_path="/readyz", open_files=1024)
