"""Keeps each server process serving the database's active model version, and adopts a checkpoint
written by hand at MNIST_MODEL_PATH.

Every process of every replica polls the one-row `active_model` table (a primary-key read) every
MNIST_MODEL_POLL_S. When the version there is not the one served, its weights come from the model
store (verified against their sha256, cached on local disk), are loaded off the event loop, and
`BatchingEngine.swap` serves them from the next batch. Anything that goes wrong (database or store
out, an object that fails verification, weights that do not load) is logged once and retried with
backoff; the model being served stays. The predict path never waits on any of it.
"""

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from app.errors import ModelObjectCorrupt, ModelStoreUnavailable, RecordsUnavailable
from app.metrics import Metrics
from app.predict.batching import BatchingEngine
from app.records.versions import Adopt, ModelVersions
from models.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint, metadata_path

log = logging.getLogger("app.records.follower")

Fingerprint = tuple[tuple[int, int, int], ...]
# Longest wait before a failed swap is tried again.
MAX_BACKOFF_S = 30.0


def fingerprint(path: Path) -> Fingerprint:
    """What changes when either file of the checkpoint is replaced (rename gives a new inode)."""
    stamps = []
    for file in (path, metadata_path(path)):
        try:
            stat = os.stat(file)
            stamps.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            stamps.append((0, 0, 0))
    return tuple(stamps)


def fallback_reason(active: dict[str, Any], why: str, served: str) -> str:
    return (
        f"the active version {active['version']} cannot be served ({why}): serving "
        f"{served}, the newest kept version that loads, until it can"
    )


class ModelFollower:
    """Swaps the engine's model to the active version whenever the database names another."""

    def __init__(
        self,
        versions: ModelVersions,
        engine: BatchingEngine,
        device: torch.device,
        metrics: Metrics,
        interval_s: float,
    ) -> None:
        self.versions, self.engine, self.device, self.metrics = versions, engine, device, metrics
        self.path = versions.model_path
        self.interval_s = interval_s
        self.seen = fingerprint(self.path)
        self._settling: Fingerprint | None = None
        # One machine: the file is what the user serves (a known version copied there included).
        # Shared records: only a new model written there by hand; a known one is a stale copy.
        self.adopt = Adopt.ALWAYS if versions.database.sqlite else Adopt.NEW
        self._failed: tuple[str, float, float] | None = None  # (sha256, retry at, backoff)
        self.fallback: str | None = None  # why a version other than the active one is served
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="model-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> None:
        """Adopt a hand-written checkpoint, then serve the active version if it is not served."""
        async with self._lock:
            await self._adopt_changed_file()
            try:
                active = await self.versions.aactive_metadata()
            except RecordsUnavailable:
                return  # logged by app.records.database; keep serving what we serve
            if active is not None:
                await self._follow(active)

    async def _adopt_changed_file(self) -> None:
        current = fingerprint(self.path)
        if current == self.seen:
            return
        if current != self._settling:
            agrees, sha256 = await self.versions.amodel_file()
            if not agrees:
                self._settling = current  # weights and metadata disagree: maybe mid-write; look again
                return
            try:  # an activation's own copy of the active version: nothing to adopt
                active = await self.versions.aactive_metadata()
            except RecordsUnavailable:
                return  # looked at again on the next poll
            if sha256 is not None and active is not None and active["sha256"] == sha256:
                self.seen = current
                return
        try:
            # A new model written there by hand is served; a known one is a stale copy.
            await self.versions.aadopt(self.path, f"{self.path.name} changed", self.adopt)
        except CheckpointError as exc:
            self.engine.unavailable(str(exc))
            log.warning("not adopting %s: %s", self.path, exc)
        except (RecordsUnavailable, ModelStoreUnavailable, ModelObjectCorrupt, OSError) as exc:
            log.warning("adopting %s waits: %s", self.path, getattr(exc, "detail", exc))
            return  # tried again on the next poll (a file still being written settles)
        self.seen = current

    async def _follow(self, active: dict[str, Any]) -> None:
        serving = self.engine.checkpoint
        sha256 = str(active["sha256"])
        if serving is not None and serving.metadata.get("sha256") == sha256:
            self._failed, self.fallback = None, None
            if any(serving.metadata.get(key) != value for key, value in active.items()):
                # Figures added to its record since it was loaded (measured for a comparison).
                self.engine.swap(LoadedCheckpoint(serving.model, {**serving.metadata, **active}))
            return
        loop = asyncio.get_running_loop()
        if self._failed and self._failed[0] == sha256 and loop.time() < self._failed[1]:
            return
        try:
            weights = await self.versions.alocal_copy(active)
            checkpoint = await asyncio.to_thread(load_checkpoint, weights, self.device)
        except (ModelObjectCorrupt, ModelStoreUnavailable, CheckpointError, OSError) as exc:
            detail = getattr(exc, "detail", None) or getattr(exc, "strerror", None) or str(exc)
            detail = detail or type(exc).__name__
            backoff = self._failed[2] * 2 if self._failed and self._failed[0] == sha256 else self.interval_s
            backoff = min(backoff, MAX_BACKOFF_S)
            if not (self._failed and self._failed[0] == sha256):
                log.warning("not serving active version %s: %s", active["version"], detail)
            self._failed = (sha256, loop.time() + backoff, backoff)
            self.engine.unavailable(f"the active version {active['version']} cannot be served: {detail}")
            if self.engine.checkpoint is None or self.fallback:  # nothing, or a fallback, is served
                await self._fall_back(active, detail)
            return
        self._failed, self.fallback = None, None
        self.engine.swap(checkpoint)
        self.metrics.set_model(checkpoint.version, checkpoint.arch)
        log.info("now serving model %s", checkpoint.version)

    async def _fall_back(self, active: dict[str, Any], why: str) -> None:
        """Nothing is served and the active version cannot be (its weights are corrupt, say): serve
        the newest kept version that loads, saying so in the log and /model, until the active one
        can be served again (retried with backoff). The active record itself is left alone."""
        try:
            kept = await self.versions.alist()
        except RecordsUnavailable:
            return
        serving = self.engine.checkpoint
        for metadata in kept:
            if metadata.get("sha256") == active["sha256"]:
                continue
            if serving is not None and serving.metadata.get("sha256") == metadata.get("sha256"):
                self.fallback = fallback_reason(active, why, serving.version)  # no reload
                return
            try:
                weights = await self.versions.alocal_copy(metadata)
                checkpoint = await asyncio.to_thread(load_checkpoint, weights, self.device)
            except (ModelObjectCorrupt, ModelStoreUnavailable, CheckpointError, OSError):
                continue
            self.fallback = fallback_reason(active, why, checkpoint.version)
            log.warning("%s", self.fallback)
            self.engine.swap(checkpoint)
            self.metrics.set_model(checkpoint.version, checkpoint.arch)
            return

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:
                log.exception("model follower failed; it keeps polling")
