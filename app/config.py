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
# Predictions less sure than this are flagged: chosen from the tutorial model's test set (README).
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

    model_path: Path = Field(Path("mnist_cnn.pt"), description="the active checkpoint")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch_size: int = Field(64, ge=1, le=4096, description="largest inference batch")
    queue_size: int = Field(1024, ge=1, description="requests waiting for inference before 503")
    request_timeout_s: float = Field(10.0, gt=0, description="longest wait for inference before 504")
    max_upload_bytes: int = Field(1024 * 1024, ge=1024, description="largest accepted image file")
    max_batch_files: int = Field(64, ge=1, description="most files in one /predict/batch")
    max_batch_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest /predict/batch body")
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=SIGNATURE.input.pixels,
        description="most pixels in one image, read from its header (bombs)",
    )
    max_request_pixels: int = Field(
        4 * DEFAULT_MAX_PIXELS,
        ge=SIGNATURE.input.pixels,
        description="most pixels in all images of one request",
    )
    max_jpeg_scans: int = Field(
        DEFAULT_MAX_JPEG_SCANS, ge=1, description="most scans in one JPEG (each decodes every pixel again)"
    )
    # Images up to this many pixels in all (times each JPEG's scans) are decoded on the event loop: 64
    # digits of the model's input size decode in about a millisecond, less than a hand-off to a
    # thread would cost.
    inline_decode_pixels: int = Field(64 * 1024, ge=0)
    decode_threads: int = Field(
        2, ge=1, le=64, description="requests decoding on threads at once, per process"
    )
    # What one connection may hold: a reverse proxy in front should bound the same (README).
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="largest request head (431)")
    header_timeout_s: float = Field(10.0, gt=0, description="longest wait for a request's head (408)")
    body_timeout_s: float = Field(60.0, gt=0, description="longest wait for a request's body (408)")
    body_idle_s: float = Field(
        10.0, gt=0, description="longest gap between two reads of a request's body (408: a stalled upload)"
    )
    keep_alive_s: int = Field(5, ge=1, description="idle keep-alive connections are closed after this")
    max_connections: int = Field(
        2048, ge=16, description="open connections per process before new requests get a 503"
    )
    max_buffered_bytes: int = Field(
        256 * 1024 * 1024, ge=1024 * 1024, description="upload bytes held at once per process (503 past it)"
    )
    client_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="share of the upload budget (HTTP bodies, gRPC messages) one client address may hold",
    )
    grpc_max_message_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        description="largest gRPC request message; each call holds room for one in the upload budget",
    )
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads per server process")
    low_confidence: float = Field(
        LOW_CONFIDENCE,
        ge=0,
        le=1,
        description="predictions less sure than this carry low_confidence: true",
    )
    train_token: str | None = None
    state_dir: Path = Path("state")
    database_url: str | None = Field(
        None, description="job records: unset = SQLite in state_dir; postgresql://user:pass@host/db"
    )
    model_store: str | None = Field(
        None, description="model weights: unset = <state_dir>/models; s3://bucket/prefix (AWS_* settings)"
    )
    role: Literal["all", "api", "trainer"] = Field(
        "all", description="all: serve and train; api: serve and accept jobs; trainer: run jobs only"
    )
    train_slots: int = Field(1, ge=1, le=64, description="jobs one trainer runs at once")
    train_queue: int = Field(0, ge=0, le=10_000, description="jobs that may wait for a free trainer slot")
    trainer_name: str | None = Field(
        None, max_length=200, description="trainers of one name share its slots (default: host name)"
    )
    data_dir: Path | None = None
    train_threads: int = Field(1, ge=1, description="torch threads of a training job (shared by its ranks)")
    train_priority: Literal["idle", "normal"] = Field(
        "idle",
        description="CPU class of a job's processes: idle (serving keeps the cores it needs) "
        "or normal (a machine that only trains, where nothing else should outrank it)",
    )
    train_max_procs: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="processes (DDP ranks) a job may ask for with nproc_per_node; "
        "0 = the GPU count where jobs train on CUDA, else 1",
    )
    job_heartbeat_s: float = Field(2.0, gt=0, description="how often a job's owner proves it is alive")
    job_stale_after_s: float = Field(15.0, gt=0, description="silence after which a job is 'interrupted'")
    model_poll_s: float = Field(1.0, gt=0, description="how often the active checkpoint is checked")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="the v2 protocol's gRPC port, in every server process; 0 = off"
    )
    workers: int = Field(default_factory=default_workers, ge=1)
    log_level: str = "info"

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
