"""What a server process runs besides HTTP: the records, the model store and versions, the model,
the batching engine, the follower of the active version, and the job manager; started and stopped
together by the lifespan. MNIST_ROLE decides which of them work: `api` trains nothing, `trainer`
serves no model."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import torch

from app.config import SHUTDOWN_GRACE_S, Settings
from app.errors import ModelObjectCorrupt, ModelStoreUnavailable, RecordsUnavailable
from app.jobs.scheduler import JobManager
from app.jobs.store import JobStore
from app.metrics import Metrics
from app.predict.batching import BatchingEngine
from app.predict.not_a_digit import NotADigitPolicy
from app.predict.preprocess import DecodeLimits, Decoder
from app.predict.recent import RecentInputs
from app.predict.uploads import Bodies
from app.records.database import Database, database_url
from app.records.feedback import FeedbackStore
from app.records.follower import ModelFollower
from app.records.model_store import open_model_store
from app.records.versions import Adopt, ModelVersions
from models.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from models.device import resolve_device

log = logging.getLogger("app")
GRPC_GRACE_S = 5.0


@dataclass(frozen=True)
class Services:
    """Everything a request may need, put on `app.state.services` by the lifespan."""

    settings: Settings
    metrics: Metrics
    engine: BatchingEngine
    bodies: Bodies
    decoder: Decoder
    store: JobStore
    versions: ModelVersions
    follower: ModelFollower
    jobs: JobManager
    recent: RecentInputs
    feedback: FeedbackStore


def try_load(settings: Settings, device: torch.device) -> tuple[LoadedCheckpoint | None, str]:
    """The checkpoint, or None and the reason it could not be loaded (the server starts anyway)."""
    try:
        return load_checkpoint(settings.model_path, device), ""
    except CheckpointError as exc:
        log.warning("no model loaded from %s: %s", settings.model_path, exc)
        return None, str(exc)


def decoder_for(settings: Settings) -> Decoder:
    return Decoder(DecodeLimits.of(settings), settings.decode_threads, settings.request_timeout_s)


async def nothing_to_swap() -> None:
    """A trainer serves no model: a promotion there has nothing to swap."""


@asynccontextmanager
async def open_records(settings: Settings) -> AsyncIterator[tuple[JobStore, ModelVersions]]:
    """The database (migrated) with its job store, and the model versions over the model store;
    closed on exit, also when startup fails half-way."""
    database = Database(database_url(settings.database_url, settings.state_dir))
    try:
        # Serving needs none of the records: a database that is out (or a full state disk) is
        # logged, and the schema is made when it first answers.
        with contextlib.suppress(RecordsUnavailable):
            await database.aensure_schema()
        store = JobStore(database, stale_after_s=settings.job_stale_after_s)
        model_store = open_model_store(settings.model_store, settings.state_dir)
        versions = ModelVersions(database, model_store, settings.state_dir, settings.model_path)
        try:
            with contextlib.suppress(ModelStoreUnavailable):  # logged; serving starts without it
                await versions.aopen_store()
            try:
                await versions.arecord_kept_files()  # a state folder from before version records
            except (RecordsUnavailable, OSError) as exc:
                log.warning("kept model files not recorded at startup: %s", exc)
            yield store, versions
        finally:
            versions.close()
    finally:
        database.dispose()


@asynccontextmanager
async def running_services(settings: Settings, metrics: Metrics) -> AsyncIterator[Services]:
    """Open the records and the model store, load the model off the event loop, start everything;
    on exit stop jobs, follower and engine."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device, setting="MNIST_DEVICE")
    if not settings.train_token:
        log.warning("MNIST_TRAIN_TOKEN is not set: anyone who can reach the server can train and swap models")
    async with (
        open_records(settings) as (store, versions),
        serving(settings, metrics, device, store, versions) as services,
    ):
        yield services
    log.info("inference engine stopped")


@asynccontextmanager
async def serving(
    settings: Settings, metrics: Metrics, device: torch.device, store: JobStore, versions: ModelVersions
) -> AsyncIterator[Services]:
    """The model, the engine, the follower and the job manager, over open records."""
    serves = settings.role != "trainer"
    checkpoint, reason = None, "this process is a trainer (MNIST_ROLE=trainer): it serves no predictions"
    if serves:
        checkpoint, reason = await asyncio.to_thread(try_load, settings, device)
    if checkpoint is not None:
        # One machine (SQLite): the file it starts with is served, as it always was. Shared
        # records: the active version wins; the file is the first version only when there is none.
        when = Adopt.ALWAYS if store.database.sqlite else Adopt.FIRST
        try:
            await versions.aadopt(settings.model_path, f"{settings.model_path.name} at startup", when)
        except (ModelStoreUnavailable, ModelObjectCorrupt, RecordsUnavailable, OSError) as exc:
            log.warning("serving %s without recording it as a version: %s", settings.model_path, exc)
    metrics.set_model(checkpoint.version if checkpoint else None, checkpoint.arch if checkpoint else None)

    engine = BatchingEngine(
        checkpoint,
        device,
        max_batch_size=settings.max_batch_size,
        queue_size=settings.queue_size,
        timeout_s=settings.request_timeout_s,
        stop_grace_s=SHUTDOWN_GRACE_S,
        unavailable_reason=reason,
        observers=metrics.engine_observers(),
    )
    async with engine:
        follower = ModelFollower(versions, engine, device, metrics, settings.model_poll_s)
        if serves:
            await follower.check()  # the active version, before the first request
            follower.start()
        log.info(
            "serving model %s on %s (torch threads %d, role %s); settings: %s",
            engine.checkpoint.version if engine.checkpoint else f"NONE ({reason})",
            device,
            torch.get_num_threads(),
            settings.role,
            settings.public(),
        )
        policy = NotADigitPolicy.of(settings)
        if policy.refuse and engine.checkpoint and policy.threshold(engine.checkpoint) is None:
            log.warning(
                "MNIST_REFUSE_NOT_A_DIGIT is on, but model %s records no not-a-digit threshold and "
                "MNIST_NOT_A_DIGIT_THRESHOLD is not set: nothing is flagged, so nothing is refused",
                engine.checkpoint.version,
            )
        feedback = FeedbackStore(store.database)
        jobs = JobManager(store, versions, follower.check if serves else nothing_to_swap, settings, feedback)
        await jobs.start()
        decoder = decoder_for(settings)
        bodies = Bodies(
            settings.body_timeout_s, settings.max_buffered_bytes, settings.body_idle_s, settings.client_share
        )
        recent = RecentInputs(settings.feedback_recent_bytes, settings.feedback_recent_s)
        try:
            async with grpc_serving(settings, engine, decoder, bodies, metrics, recent, serves):
                yield Services(
                    settings,
                    metrics,
                    engine,
                    bodies,
                    decoder,
                    store,
                    versions,
                    follower,
                    jobs,
                    recent,
                    feedback,
                )
        finally:
            await jobs.stop()
            await follower.stop()


@asynccontextmanager
async def grpc_serving(
    settings: Settings,
    engine: BatchingEngine,
    decoder: Decoder,
    bodies: Bodies,
    metrics: Metrics,
    recent: RecentInputs,
    serves: bool,
) -> AsyncIterator[None]:
    """The v2 protocol's gRPC server beside HTTP, unless MNIST_GRPC_PORT is 0 or nothing is served;
    calls in flight get a few seconds to finish on shutdown."""
    if not serves or not settings.grpc_port:
        yield
        return
    # Imported only here: its protobuf messages then exist only in processes that serve gRPC (a
    # client library's copy of the same protocol can live in a test process without a clash).
    from app.v2.grpc_service import start_grpc_server

    server = await start_grpc_server(settings, engine, decoder, bodies, metrics, recent)
    try:
        yield
    finally:
        await server.stop(GRPC_GRACE_S)
