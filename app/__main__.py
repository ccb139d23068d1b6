"""`python -m app`: the server as it should run in production (settings from MNIST_* variables)."""

import logging
import os
import resource
import shutil
import socket
import tempfile

import uvicorn

from app.config import LOG_FORMAT, SHUTDOWN_GRACE_S, Settings, available_cores
from app.http import PROTOCOL

log = logging.getLogger("app")
# Requests beyond MNIST_MAX_CONNECTIONS get a 503 (uvicorn's limit_concurrency counts connections);
# kept this far below the open-file limit, there is room left for the model, the database, logs
# and the training child. Idle connections are closed by the head and keep-alive timeouts.
RESERVED_FDS = 128


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one where allowed (a default of 1024 lets a
    thousand idle connections lock every new client out); the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = 1024 * 1024 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft


def grpc_port_taken(host: str, port: int) -> str | None:
    """Why the gRPC port cannot be had, if it cannot. Every server process binds it with
    SO_REUSEPORT, which would silently share it with another server already there: look first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed port in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    serves_grpc = settings.grpc_port and settings.role != "trainer"
    if serves_grpc and (why := grpc_port_taken(settings.host, settings.grpc_port)):
        log.error(
            "cannot serve gRPC on %s:%d (%s): stop what holds it, or set MNIST_GRPC_PORT "
            "to another port (0 turns gRPC off)",
            settings.host,
            settings.grpc_port,
            why,
        )
        raise SystemExit(1)
    if settings.role == "trainer" and settings.workers != 1:
        # A trainer's port only answers probes and metrics: one process is plenty.
        os.environ["MNIST_WORKERS"] = "1"
        settings = Settings()
    # Server processes share the cores: give each its slice, so torch's threads don't fight.
    os.environ.setdefault("MNIST_TORCH_THREADS", str(max(1, available_cores() // settings.workers)))
    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="mnist-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    fds = raise_fd_limit()
    connections = min(settings.max_connections, fds - RESERVED_FDS)
    if connections < settings.max_connections:
        log.warning("open-file limit %d: at most %d connections per process", fds, connections)
    try:
        uvicorn.run(
            "app.main:app",
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            http=PROTOCOL,
            h11_max_incomplete_event_size=settings.max_header_bytes,
            timeout_keep_alive=settings.keep_alive_s,
            limit_concurrency=max(16, connections),
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
