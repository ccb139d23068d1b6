"""Dynamic batching: one inference worker owns the model; requests share its forward passes.

Policy (greedy, no fixed delay): the worker sleeps until a request arrives, then takes it and
everything already waiting, up to `max_batch_size` rows, and runs one forward pass. A lone request
therefore never waits for company, and every request that arrives while a forward pass runs
shares the next one: under load the batch grows by itself to match the arrival rate.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from app.errors import InferenceFailed, InferenceTimeout, NoModel, QueueFull, ShuttingDown
from models.checkpoint import LoadedCheckpoint
from models.signature import SIGNATURE

log = logging.getLogger("app.predict.batching")


def for_serving(checkpoint: LoadedCheckpoint) -> LoadedCheckpoint:
    """Channels-last weights: the convolutions run 2.2-2.4x faster at batches of 8-32 on one CPU
    thread (figures in docs/explanation/batching.md), with outputs equal to within 5e-7."""
    checkpoint.model.to(memory_format=torch.channels_last)
    return checkpoint


def no_model_detail(reason: str) -> str:
    return (
        f"no model loaded: {reason}. Train one with `python -m training` "
        "(then restart or wait for the server to pick it up) or start a job with `POST /train`"
    )


@dataclass(eq=False)
class Pending:
    """Some preprocessed rows waiting for inference, and where their answer goes."""

    inputs: torch.Tensor  # k images, each of the signature's input shape
    future: "asyncio.Future[tuple[torch.Tensor, LoadedCheckpoint]]"
    enqueued: float = field(default_factory=time.perf_counter)


def collect_batch(waiting: deque[Pending], max_rows: int) -> list[Pending]:
    """Take requests from the front of `waiting` while they fit in `max_rows` (at least one).

    Requests whose caller gave up (timed out, disconnected) are dropped, not computed.
    """
    batch: list[Pending] = []
    rows = 0
    while waiting:
        item = waiting[0]
        if item.future.done():
            waiting.popleft()
            continue
        if batch and rows + len(item.inputs) > max_rows:
            break
        batch.append(waiting.popleft())
        rows += len(item.inputs)
    return batch


def shutting_down() -> ShuttingDown:
    return ShuttingDown("the server is shutting down")


def inference_failed() -> InferenceFailed:
    return InferenceFailed("inference failed")


def fail(requests: Iterable[Pending], error: Callable[[], Exception]) -> None:
    """Answer each of `requests` whose caller still waits with a fresh `error()`."""
    for item in requests:
        if not item.future.done():
            item.future.set_exception(error())


@dataclass
class EngineObservers:
    """Where the engine reports what it does (metrics); no-ops by default."""

    batch_rows: Callable[[int], None] = lambda rows: None
    queue_wait: Callable[[float], None] = lambda seconds: None
    inference: Callable[[float], None] = lambda seconds: None
    queue_depth: Callable[[int], None] = lambda depth: None


class BatchingEngine:
    """Owns the model and its device; `infer` is the only way in. Start and stop it with `async with`."""

    def __init__(
        self,
        checkpoint: LoadedCheckpoint | None,
        device: torch.device,
        *,
        max_batch_size: int,
        queue_size: int,
        timeout_s: float,
        stop_grace_s: float,
        unavailable_reason: str,
        observers: EngineObservers | None = None,
    ) -> None:
        self.device = device
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self.stop_grace_s = stop_grace_s
        self.observe = observers or EngineObservers()
        self._checkpoint = for_serving(checkpoint) if checkpoint else None
        self._unavailable_reason = unavailable_reason
        self._waiting: deque[Pending] = deque()
        self._wakeup = asyncio.Event()
        self._settled = asyncio.Event()  # nothing queued and no forward pass running (set by the worker)
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # One thread: the model runs off the event loop, and never on two threads at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._pinned: torch.Tensor | None = None  # pragma: no mutate (the CUDA staging buffer)

    @property
    def checkpoint(self) -> LoadedCheckpoint | None:
        return self._checkpoint

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    def serving(self) -> LoadedCheckpoint:
        """The checkpoint in use, or NoModel saying why there is none: readiness, /model and
        /predict all give this one reason."""
        if self._checkpoint is None:
            raise NoModel(no_model_detail(self._unavailable_reason))
        return self._checkpoint

    def ready(self) -> LoadedCheckpoint:
        """The checkpoint answers come from, or NoModel saying why none will: no model, or no worker
        (not started, or stopping). Every readiness check (/readyz, v2 over HTTP and gRPC) asks this."""
        checkpoint = self.serving()
        if not self.running:
            raise NoModel("the inference engine is not running")
        return checkpoint

    def unavailable(self, reason: str) -> None:
        """Why no model could be loaded (a file that failed to load); ignored while one is served."""
        if self._checkpoint is None:
            self._unavailable_reason = reason

    def swap(self, checkpoint: LoadedCheckpoint) -> None:
        """Serve `checkpoint` from the next batch on; the batch in flight finishes on the old one."""
        self._checkpoint = for_serving(checkpoint)

    async def __aenter__(self) -> "BatchingEngine":
        self._task = asyncio.create_task(self._run(), name="inference-worker")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(self.stop_grace_s)

    async def stop(self, grace_s: float) -> None:
        """Refuse new work and finish what is queued; what is left after `grace_s` is answered
        "shutting down". Returns once no forward pass runs any more."""
        self._closing = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._settled.wait()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        fail(self._waiting, shutting_down)
        self._waiting.clear()
        self._executor.shutdown(wait=True)

    async def infer(self, inputs: torch.Tensor) -> tuple[torch.Tensor, LoadedCheckpoint]:
        """Log-probabilities (k x classes, on the CPU) for k preprocessed images, and the model that
        computed them (its version, and how its answers are calibrated)."""
        self.serving()  # NoModel when there is none
        if self._closing:
            raise shutting_down()
        chunks = torch.split(inputs, self.max_batch_size)
        if len(self._waiting) + len(chunks) > self.queue_size:
            raise QueueFull(f"inference queue is full ({self.queue_size} requests waiting); retry shortly")
        loop = asyncio.get_running_loop()
        pending = [Pending(chunk, loop.create_future()) for chunk in chunks]
        self._waiting.extend(pending)
        self._settled.clear()
        self.observe.queue_depth(len(self._waiting))
        self._wakeup.set()
        try:
            async with asyncio.timeout(self.timeout_s):
                results = [await item.future for item in pending]
        except TimeoutError:
            for item in pending:
                item.future.cancel()
            raise InferenceTimeout(f"inference did not finish within {self.timeout_s:g} s") from None
        except asyncio.CancelledError:  # the caller is gone (a gRPC client cancelled): drop its chunks
            for item in pending:
                item.future.cancel()
            raise
        models = {id(served): served for _, served in results}
        if len(models) > 1:  # a model swap fell between chunks of one request: redo on one model
            return await self.infer(inputs)
        return torch.cat([rows for rows, _ in results]), results[0][1]

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                self._settled.set()
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = collect_batch(self._waiting, self.max_batch_size)
            try:
                self.observe.queue_depth(len(self._waiting))
                if batch:
                    await self._serve(batch)
            except asyncio.CancelledError:  # stopped past its grace: no result will answer this batch
                fail(batch, shutting_down)
                raise
            except Exception:  # the worker never dies: a fault fails what it holds, not later requests
                log.exception("the inference worker failed; failing the requests it held")
                fail([*batch, *self._waiting], inference_failed)
                self._waiting.clear()

    async def _serve(self, batch: list[Pending]) -> None:
        """One forward pass for `batch`, each caller answered with its own rows; a failed forward
        fails only this batch."""
        checkpoint = self._checkpoint
        assert checkpoint is not None
        started = time.perf_counter()
        for item in batch:
            self.observe.queue_wait(started - item.enqueued)
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._forward, checkpoint, batch
            )
        except Exception:
            log.exception("inference failed on a batch of %d requests", len(batch))
            fail(batch, inference_failed)
            return
        self.observe.inference(time.perf_counter() - started)
        self.observe.batch_rows(len(outputs))
        start = 0
        for item in batch:
            rows = len(item.inputs)
            if not item.future.done():
                item.future.set_result((outputs[start : start + rows], checkpoint))
            start += rows

    def _forward(self, checkpoint: LoadedCheckpoint, batch: list[Pending]) -> torch.Tensor:
        """Runs on the inference thread: one stacked forward pass."""
        with torch.inference_mode():
            # Only a GPU runs this: `make mutation` (on CPUs) leaves it alone, the GPU tests check it.
            if self.device.type == "cuda":  # pragma: no mutate block
                x = self._stage_pinned([item.inputs for item in batch]).to(self.device, non_blocking=True)
                output: torch.Tensor = checkpoint.model(x).float().cpu()
                return output
            x = batch[0].inputs if len(batch) == 1 else torch.cat([item.inputs for item in batch])
            output = checkpoint.model(x)
            return output

    def _stage_pinned(self, parts: list[torch.Tensor]) -> torch.Tensor:  # pragma: no mutate block
        """Copy the batch into a reused page-locked buffer, so the host-to-GPU copy is asynchronous."""
        rows = sum(len(part) for part in parts)
        if self._pinned is None:
            self._pinned = torch.empty(SIGNATURE.input.shape(self.max_batch_size)).pin_memory()
        return torch.cat(parts, out=self._pinned[:rows])
