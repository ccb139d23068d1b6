"""Service settings from `MNIST_*` environment variables, each with a default that works on a laptop."""

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from models.signature import SIGNATURE

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Room for multipart boundaries and part headers on top of the file bytes themselves.
MULTIPART_OVERHEAD = 16 * 1024
# A 2048x2048 image already costs ~60 MB to decode; digits need a few thousand pixels.
DEFAULT_MAX_PIXELS = 2048 * 2048
# Encoders write 1 to 3 scans, or about 10 when progressive; each is a pass over every pixel, and a
# file can repeat one thousands of times in a few bytes each.
DEFAULT_MAX_JPEG_SCANS = 100
# Predictions less sure than this are flagged: chosen from the tutorial model's test set (docs: predicting).
LOW_CONFIDENCE = 0.9
# How long a stopping server lets requests in flight finish: uvicorn for HTTP connections, then the
# batching engine for its queue (deployments give the pod or container longer than this).
SHUTDOWN_GRACE_S = 30


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """One server process per core, at most 4: past that, HTTP parsing stops being the limit."""
    return max(1, min(4, available_cores()))


class Settings(BaseSettings):
    """Everything the service can be told; `GET /model` and the startup log show what is in force."""

    model_config = SettingsConfigDict(env_prefix="MNIST_", extra="ignore")

    # Each description is the settings reference page's text (docs/reference/settings.md, generated).
    model_path: Path = Field(
        Path("mnist_cnn.pt"),
        description="the checkpoint to serve; on one machine, a model written there while the server "
        "runs is adopted as a version, and activating a version copies it there",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when present; cuda refuses to start without it"
    )
    max_batch_size: int = Field(64, ge=1, le=4096, description="largest forward pass of the batching engine")
    queue_size: int = Field(
        1024, ge=1, description="requests waiting for inference before a 503 with Retry-After: 1"
    )
    request_timeout_s: float = Field(
        10.0, gt=0, description="longest wait for inference before a 504 (the request leaves the queue)"
    )
    max_upload_bytes: int = Field(1024 * 1024, ge=1024, description="largest image file (413)")
    max_batch_files: int = Field(64, ge=1, description="most files in one /predict/batch (413)")
    max_batch_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest /predict/batch body (413)")
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=SIGNATURE.input.pixels,
        description="most pixels decoded for one image, read from its header before any decoding: its "
        "size, or for a tiled TIFF its whole tiles, which libtiff decodes however small the image (413)",
    )
    max_request_pixels: int = Field(
        4 * DEFAULT_MAX_PIXELS,
        ge=SIGNATURE.input.pixels,
        description="most pixels in all images of one request together (413)",
    )
    max_jpeg_scans: int = Field(
        DEFAULT_MAX_JPEG_SCANS,
        ge=1,
        description="most scans in one JPEG (413): each scan of a progressive JPEG is a pass over every "
        "pixel, and encoders write 1-3, or about 10 when progressive",
    )
    # 64 digits of the model's input size decode in about a millisecond, less than a hand-off to a
    # thread would cost.
    inline_decode_pixels: int = Field(
        64 * 1024,
        ge=0,
        description="a request's images are decoded on the event loop up to this many pixels in all, "
        f"times each JPEG's scans (64 digits of {SIGNATURE.input.height}x{SIGNATURE.input.width}), on a "
        "thread beyond",
    )
    decode_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="requests decoding on threads at once, per process; more wait their turn (a "
        "2048x2048 RGBA image costs about 60 MB while it decodes) for at most MNIST_REQUEST_TIMEOUT_S, "
        "then a 503 with Retry-After: 1",
    )
    # What one connection may hold: a reverse proxy in front should bound the same (docs: behind a proxy).
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="largest request head, trailers of a chunked body included, and longest line of "
        "either while it is still arriving (431 and closed)",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request head must arrive whole within this of the connection opening, or of its "
        "first byte on a kept-alive connection (408, closed: slowloris)",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="the rest of a request after its head (body and trailers) must arrive within this "
        "(408 from a route that reads it; closed either way)",
    )
    body_idle_s: float = Field(
        10.0,
        gt=0,
        description="longest gap between two reads of a request body (408 and closed: a stalled upload "
        "gives its bytes back early); not applied when not shorter than MNIST_BODY_TIMEOUT_S",
    )
    keep_alive_s: int = Field(5, ge=1, description="idle keep-alive connections are closed after this")
    max_connections: int = Field(
        2048,
        ge=16,
        description="open connections per process before new requests get a 503 (capped below the "
        "open-file limit, which python -m app raises to its hard limit)",
    )
    max_buffered_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="upload bytes held at once per process (HTTP bodies and gRPC messages), each from "
        "its first byte until its request is answered; past it a 503 with Retry-After: 1",
    )
    client_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="the share of that budget one client address may hold at once; past it a 429 "
        "(gRPC: RESOURCE_EXHAUSTED). It must hold one full batch and one gRPC message. Behind a proxy "
        "every client has the proxy's address: set 1 there and let the proxy bound each client",
    )
    grpc_max_message_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        description="largest gRPC request message (RESOURCE_EXHAUSTED); every call holds room for one in "
        "the upload budget from its start until answered; the largest FP32 request must fit it. Raise "
        "it (and the budget) for larger BYTES batches, or send them over HTTP",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads per server process",
        json_schema_extra={"shown_default": "cores / workers"},
    )
    low_confidence: float = Field(
        LOW_CONFIDENCE,
        ge=0,
        le=1,
        description="a prediction less sure than this carries low_confidence: true",
    )
    not_a_digit_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="an image whose ood_score is above this carries not_a_digit: true",
        json_schema_extra={"shown_default": "the model's own, chosen when it was trained"},
    )
    refuse_not_a_digit: bool = Field(
        False,
        description="answer an image flagged not_a_digit with a 422 that says so, instead of its best digit",
    )
    feedback_per_minute: int = Field(
        20,
        ge=0,
        description="corrections (POST /feedback) one client may send a minute without the token, "
        "counted across every process and replica (429 with Retry-After past it); 0: no limit",
    )
    feedback_max_pending: int = Field(
        1000,
        ge=0,
        description="corrections that may wait for review at once; past it, one sent without the "
        "token is a 503 with Retry-After",
    )
    feedback_recent_bytes: int = Field(
        16 * 1024 * 1024,
        ge=0,
        description="memory each server process holds the inputs of its recent predictions in, so "
        "a correction may name a prediction instead of sending its image; 0: none held",
    )
    feedback_recent_s: float = Field(
        600.0,
        gt=0,
        description="how long a prediction's input is held for a correction that names it",
    )
    promote_mnist_tolerance: float = Field(
        0.25,
        ge=0,
        le=100,
        description="where corrections have a held-out split, how many points a new model may be "
        "below the active one on MNIST's test set and still be promoted (if_better), being at "
        "least as accurate on the held-out corrections",
    )
    train_token: str | None = Field(
        None,
        description="bearer token for POST /train, DELETE /train/{id}, activating a version, and "
        "reviewing or deleting corrections (401 without it; corrections sent with it are accepted at "
        "once, others wait for review); unset: anyone who can reach the server may train, swap models "
        "and teach it",
    )
    state_dir: Path = Field(
        Path("state"), description="job records (SQLite), kept model versions, caches and scratch space"
    )
    database_url: str | None = Field(
        None,
        description="job and model-version records: postgresql://user:password@host:5432/name (or "
        "postgres://) for PostgreSQL, shown as postgresql://host:5432/name alone; unset: SQLite in the "
        "state folder; any other kind of URL stops startup",
    )
    model_store: str | None = Field(
        None,
        description="model weights: s3://bucket/prefix for any S3-compatible store, configured by "
        "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (the bucket is created "
        "when missing); unset: <state>/models/",
    )
    role: Literal["all", "api", "trainer"] = Field(
        "all",
        description="all: serve and run jobs (one machine); api: serve, accept and report jobs, never "
        "train; trainer: claim and run queued jobs, answering only /healthz, /readyz, /metrics",
    )
    train_slots: int = Field(1, ge=1, le=64, description="jobs one trainer runs at once")
    train_queue: int = Field(
        0,
        ge=0,
        le=10_000,
        description="jobs that may wait queued for a free trainer slot; 0: a job beyond the free slots "
        "is a 409",
    )
    trainer_name: str | None = Field(
        None,
        max_length=200,
        description="trainer processes of one name share its slots (the processes of one machine do)",
        json_schema_extra={"shown_default": "the host name"},
    )
    data_dir: Path | None = Field(
        None,
        description="MNIST's IDX files for training jobs; unset: ./data, else a download by torchvision "
        "(training reads the same variable)",
    )
    train_threads: int = Field(1, ge=1, description="torch threads of a training job (shared by its ranks)")
    train_priority: Literal["idle", "normal"] = Field(
        "idle",
        description="CPU class of a job's processes: idle (the OS's idle class, nice 19 where there is "
        "none: serving keeps the cores) or normal (a machine that only trains)",
    )
    train_max_procs: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="processes (DDP ranks) a job may ask for with nproc_per_node (422 beyond it); "
        "0 = the GPU count where jobs train on CUDA, else 1",
    )
    job_heartbeat_s: float = Field(2.0, gt=0, description="how often a job's owner proves it is alive")
    job_stale_after_s: float = Field(
        15.0, gt=0, description="silence after which a job is failed as interrupted"
    )
    model_poll_s: float = Field(1.0, gt=0, description="how often a server checks the active version")
    host: str = Field("127.0.0.1", description="where python -m app listens")
    port: int = Field(8000, ge=1, le=65535, description="the HTTP port of python -m app")
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="the v2 protocol's gRPC port, served by every server process (0: no gRPC); python -m "
        "app refuses to start when it is taken",
    )
    workers: int = Field(
        default_factory=default_workers,
        ge=1,
        description="server processes started by python -m app",
        json_schema_extra={"shown_default": "one per core, at most 4"},
    )
    log_level: str = Field("info", description="the server's log level (debug, info, warning, error)")

    @model_validator(mode="after")
    def room_for_a_batch(self) -> "Settings":
        if self.max_buffered_bytes < self.max_batch_bytes + MULTIPART_OVERHEAD:
            raise ValueError(
                "MNIST_MAX_BUFFERED_BYTES must hold at least one full batch "
                f"(MNIST_MAX_BATCH_BYTES + {MULTIPART_OVERHEAD}), else a valid batch is refused for ever"
            )
        return self

    @model_validator(mode="after")
    def room_for_a_client(self) -> "Settings":
        share = int(self.max_buffered_bytes * self.client_share)
        if share < max(self.max_batch_bytes + MULTIPART_OVERHEAD, self.grpc_max_message_bytes):
            raise ValueError(
                "one client's share (MNIST_MAX_BUFFERED_BYTES x MNIST_CLIENT_SHARE) must hold a full "
                f"batch (MNIST_MAX_BATCH_BYTES + {MULTIPART_OVERHEAD}) and a gRPC message "
                "(MNIST_GRPC_MAX_MESSAGE_BYTES), else a valid request is refused for ever"
            )
        return self

    @model_validator(mode="after")
    def procs_for_the_hardware(self) -> "Settings":
        if self.train_max_procs == 0:
            gpus = torch.cuda.device_count() if self.device != "cpu" else 0
            self.train_max_procs = max(1, gpus)
        return self

    @field_validator("database_url")
    @classmethod
    def known_database(cls, url: str | None) -> str | None:
        if not url:
            return None
        try:
            backend = make_url(url).get_backend_name()
        except ArgumentError:
            raise ValueError("not a database URL (postgresql://user:password@host:5432/name)") from None
        if backend not in ("postgresql", "postgres", "sqlite"):
            raise ValueError(f"{backend} is not supported: use postgresql://... or sqlite:///path")
        return url

    @field_validator("model_store")
    @classmethod
    def known_store(cls, url: str | None) -> str | None:
        if not url:
            return None
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError("MNIST_MODEL_STORE must be s3://bucket/prefix (or unset for the state folder)")
        return url

    def public(self, paths: bool = True) -> dict[str, object]:
        """The settings in force, safe to show: the token is never echoed, and the database is shown
        by its location alone (no user, password or other parameter, whatever the URL's form);
        with `paths=False` (what HTTP clients see) neither is where files live on the server: the
        model file by its name only, the state and data folders as set or not."""
        shown = self.model_dump(mode="json")
        shown["train_token"] = "set" if self.train_token else None
        if self.database_url:
            shown["database_url"] = database_location(self.database_url)
        if not paths:
            shown["model_path"] = self.model_path.name
            shown["state_dir"] = "set"
            shown["data_dir"] = "set" if self.data_dir else None
        return shown


def database_location(url: str) -> str:
    """Where the records live, for people to see: backend, host, port and database name, and
    nothing else. A URL can carry secrets in more places than its password field (`?password=`,
    `sslpassword`, a `passfile`'s path...), so what is shown is built from the parts that are safe,
    never by removing the parts that are not."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return f"sqlite:///{Path(parsed.database).name}" if parsed.database else "sqlite://"
    # The driver lets query parameters override the URL's own parts: show what it will use.
    host = _first(parsed.query.get("host")) or parsed.host or ""
    port = _first(parsed.query.get("port")) or parsed.port
    database = _first(parsed.query.get("dbname")) or parsed.database or ""
    where = f"{host}:{port}" if port else host
    return f"{backend}://{where}/{database}"


def _first(value: str | tuple[str, ...] | None) -> str | None:
    """A query parameter given once or repeated (libpq takes a list of hosts): its first value."""
    if isinstance(value, tuple):
        return value[0] if value else None
    return value
