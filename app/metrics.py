"""Prometheus metrics: HTTP traffic by route and status, gRPC calls by method and status code, and
what the batching engine does.

With several server processes (`python -m app` with MNIST_WORKERS > 1), prometheus-client's
multiprocess mode is used: each process writes its values to PROMETHEUS_MULTIPROC_DIR and
`/metrics` adds them up, so one scrape sees the whole server.
"""

import contextlib
import os
import re
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.predict.batching import EngineObservers

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# prometheus-client's files for live-only gauges: gauge_liveall_<pid>.db, gauge_livesum_<pid>.db...
LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The service's metrics, in a registry of their own (one per app, so tests can build many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mnist_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mnist_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mnist_batch_size", "images per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "mnist_queue_wait_seconds",
            "time from enqueue to forward pass",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "mnist_inference_seconds", "forward pass time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "mnist_queue_depth", "requests waiting for inference", multiprocess_mode="livesum", registry=r
        )
        self.model_info = Gauge(
            "mnist_model_info",
            "the model being served (value 1)",
            ["version", "arch"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.grpc_requests = Counter(
            "mnist_grpc_requests", "gRPC calls by method and status code", ["method", "code"], registry=r
        )
        self.grpc_latency = Histogram(
            "mnist_grpc_request_duration_seconds",
            "gRPC call latency",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._model_labels: tuple[str, str] | None = None

    def engine_observers(self) -> EngineObservers:
        return EngineObservers(
            batch_rows=self.batch_size.observe,
            queue_wait=self.queue_wait.observe,
            inference=self.inference.observe,
            queue_depth=self.queue_depth.set,
        )

    def observe_grpc(self, method: str, code: str, seconds: float) -> None:
        self.grpc_requests.labels(method, code).inc()
        self.grpc_latency.labels(method, code).observe(seconds)

    def set_model(self, version: str | None, arch: str | None) -> None:
        if self._model_labels is not None:
            if multiprocess_dir():  # values live in files there: zero the old series, per process
                self.model_info.labels(*self._model_labels).set(0)
            else:
                self.model_info.remove(*self._model_labels)
            self._model_labels = None
        if version is not None and arch is not None:
            self._model_labels = (version, arch)
            self.model_info.labels(version, arch).set(1)

    def exposition(self) -> tuple[bytes, str]:
        """The text to serve at /metrics, for this process or, in multiprocess mode, all of them."""
        if folder := multiprocess_dir():
            forget_dead_processes(folder)
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def forget_dead_processes(folder: str) -> None:
    """Drop the live-only gauges (model info, queue depth) of server processes that died: uvicorn
    replaces a killed worker but, unlike gunicorn's child_exit hook, tells nobody, and their files
    would report a dead process's model for ever."""
    pids = {int(match[1]) for name in os.listdir(folder) if (match := LIVE_GAUGE_FILE.fullmatch(name))}
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):  # another process scraping forgot it first
                mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, as another user


class MetricsMiddleware:
    """Pure ASGI (no per-request task or body copy): counts and times every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            # The route's template, not the raw path: job ids must not explode the label set.
            path = getattr(route, "path", None) or "unmatched"
            labels = (scope["method"], path, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
