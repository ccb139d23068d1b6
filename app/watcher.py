"""Keeps each server process serving the active checkpoint: polls MNIST_MODEL_PATH and swaps.

Every process and replica that shares the model folder watches the same file, so a model promoted
by any of them (or written by `python -m training`) is served everywhere within a poll interval.
A file that fails to load is logged and ignored: the model being served stays.
"""

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from app.batching import BatchingEngine
from models.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint, metadata_path

log = logging.getLogger("app.watcher")

Fingerprint = tuple[tuple[int, int, int], ...]


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


class ModelWatcher:
    """Polls the checkpoint and swaps the engine's model when it changes."""

    def __init__(
        self,
        path: Path,
        engine: BatchingEngine,
        device: torch.device,
        on_swap: Callable[[LoadedCheckpoint], None],
        interval_s: float = 1.0,
    ) -> None:
        self.path, self.engine, self.device = path, engine, device
        self.on_swap, self.interval_s = on_swap, interval_s
        self.seen = fingerprint(path)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="model-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> None:
        """Load and swap in the checkpoint if it changed since we last looked."""
        async with self._lock:
            current = fingerprint(self.path)
            if current == self.seen:
                return
            try:
                checkpoint = await asyncio.to_thread(load_checkpoint, self.path, self.device)
            except CheckpointError as exc:
                self.engine.unavailable(str(exc))
                log.warning("not swapping to %s: %s", self.path, exc)
                self.seen = current  # retried once either file changes again
                return
            self.seen = current  # if it changed again while loading, the next poll sees that
            serving = self.engine.checkpoint
            if serving is None or serving.metadata != checkpoint.metadata:
                self.engine.swap(checkpoint)
                try:  # bookkeeping (metrics, version records) must not undo or fail the swap
                    await asyncio.to_thread(self.on_swap, checkpoint)
                except Exception:
                    log.exception("swapped to %s, but recording it failed", checkpoint.version)
                log.info("now serving model %s", checkpoint.version)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:
                log.exception("model watcher failed; it keeps polling")
