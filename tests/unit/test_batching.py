"""The batching engine: batch collection, real forward passes, queue bounds, timeouts, shutdown."""

import asyncio
import threading
import time
from collections import deque
from typing import Any

import pytest
import torch
from torch import nn

from app.errors import InferenceFailed, InferenceTimeout, NoModel, QueueFull, ShuttingDown
from app.predict.batching import BatchingEngine, EngineObservers, Pending, collect_batch
from models.checkpoint import LoadedCheckpoint
from models.cnn import Net
from tests.tolerances import assert_log_probs_close

CPU = torch.device("cpu")


def checkpoint(model: nn.Module, version: str = "v1") -> LoadedCheckpoint:
    return LoadedCheckpoint(model=model.eval(), metadata={"version": version, "arch": "net"})


def engine_for(loaded: LoadedCheckpoint | None, device: torch.device, **settings: Any) -> BatchingEngine:
    """An engine with the server's default limits, `settings` changing some."""
    defaults: dict[str, Any] = {
        "max_batch_size": 64,
        "queue_size": 1024,
        "timeout_s": 10.0,
        "stop_grace_s": 5.0,
        "unavailable_reason": "no checkpoint given",
    }
    return BatchingEngine(loaded, device, **{**defaults, **settings})


class GatedNet(Net):
    """The real network, held at the gate until the test opens it (to fill the queue on purpose)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.finished = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        self.gate.wait(timeout=10)
        output = super().forward(x)
        self.finished.set()
        return output

    async def held(self) -> None:
        """Until the engine's worker has taken a batch and is held at the gate."""
        assert await asyncio.to_thread(self.entered.wait, 10), "the worker never ran the model"


async def test_collect_batch_respects_rows_and_skips_abandoned() -> None:
    loop = asyncio.get_running_loop()
    items = [Pending(torch.zeros(rows, 1, 28, 28), loop.create_future()) for rows in (3, 2, 4, 1)]
    items[1].future.cancel()  # its caller gave up
    waiting = deque(items)
    assert collect_batch(waiting, max_rows=8) == [items[0], items[2], items[3]]
    assert not waiting
    waiting = deque(items[2:])
    assert collect_batch(waiting, max_rows=3) == [items[2]]  # one item always goes, even if larger
    assert collect_batch(waiting, max_rows=3) == [items[3]]
    assert collect_batch(deque(), max_rows=3) == []


async def test_concurrent_requests_share_forward_passes_and_get_their_own_rows() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    sizes: list[int] = []
    inputs = torch.randn(48, 1, 28, 28)
    async with engine_for(
        checkpoint(model), CPU, max_batch_size=16, observers=EngineObservers(batch_rows=sizes.append)
    ) as engine:
        lone, served = await engine.infer(inputs[:1])
        assert sizes == [1]  # a lone request runs at once, alone
        results = await asyncio.gather(*(engine.infer(inputs[i : i + 1]) for i in range(48)))
    with torch.inference_mode():
        expected = model(inputs)
    got = torch.cat([rows for rows, _ in results])
    assert_log_probs_close(got, expected)
    assert_log_probs_close(lone, expected[:1])
    assert served.version == "v1"
    assert max(sizes[1:]) > 1 and max(sizes) <= 16
    assert sum(sizes[1:]) == 48


async def test_large_requests_are_split_into_max_batch_chunks_and_put_back_in_order() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    inputs = torch.randn(20, 1, 28, 28)
    sizes: list[int] = []
    async with engine_for(
        checkpoint(model), CPU, max_batch_size=8, observers=EngineObservers(batch_rows=sizes.append)
    ) as engine:
        rows, _ = await engine.infer(inputs)
    assert sizes == [8, 8, 4]
    with torch.inference_mode():
        assert_log_probs_close(rows, model(inputs))  # row by row: chunks joined in their order


class SwappingNet(Net):
    """The real network, which swaps the engine to `replacement` during its first forward pass: a
    swap that lands between the chunks of one request."""

    def __init__(self, engine_box: list[BatchingEngine], replacement: LoadedCheckpoint) -> None:
        super().__init__()
        self.engine_box, self.replacement = engine_box, replacement

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.engine_box:
            self.engine_box.pop().swap(self.replacement)
        return super().forward(x)


async def test_a_swap_between_the_chunks_of_one_request_redoes_it_on_the_new_model() -> None:
    torch.manual_seed(0)
    new = Net().eval()
    box: list[BatchingEngine] = []
    inputs = torch.randn(20, 1, 28, 28)
    sizes: list[int] = []
    engine = engine_for(
        checkpoint(SwappingNet(box, checkpoint(new, "new")), "old"),
        CPU,
        max_batch_size=8,
        observers=EngineObservers(batch_rows=sizes.append),
    )
    box.append(engine)
    async with engine:
        rows, served = await engine.infer(inputs)
    assert served.version == "new"
    assert sizes == [8, 8, 4, 8, 8, 4]  # the first chunk ran on the old model: the whole request again
    with torch.inference_mode():
        assert_log_probs_close(rows, new(inputs))  # every row from the model the version names


async def test_a_cancelled_request_takes_its_chunks_out_of_the_queue() -> None:
    model = GatedNet()
    sizes: list[int] = []
    async with engine_for(
        checkpoint(model), CPU, max_batch_size=4, observers=EngineObservers(batch_rows=sizes.append)
    ) as engine:
        blocker = asyncio.create_task(engine.infer(torch.randn(1, 1, 28, 28)))
        await model.held()
        gone = asyncio.create_task(engine.infer(torch.randn(12, 1, 28, 28)))  # three chunks
        await asyncio.sleep(0)
        gone.cancel()  # a gRPC client cancels, or its deadline passes
        with pytest.raises(asyncio.CancelledError):
            await gone
        model.gate.set()
        await blocker
        await engine.infer(torch.randn(2, 1, 28, 28))
    assert sizes == [1, 2]  # none of the cancelled request's chunks was computed


async def test_full_queue_refuses_at_once() -> None:
    model = GatedNet()
    async with engine_for(checkpoint(model), CPU, max_batch_size=1, queue_size=2) as engine:
        first = asyncio.create_task(engine.infer(torch.randn(1, 1, 28, 28)))
        await model.held()
        queued = [asyncio.create_task(engine.infer(torch.randn(1, 1, 28, 28))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await engine.infer(torch.randn(1, 1, 28, 28))
        model.gate.set()
        assert all(rows.shape == (1, 10) for rows, _ in await asyncio.gather(first, *queued))


async def test_a_request_that_waits_too_long_gets_a_timeout_and_is_not_computed() -> None:
    model = GatedNet()
    sizes: list[int] = []
    async with engine_for(
        checkpoint(model),
        CPU,
        max_batch_size=4,
        timeout_s=0.1,
        observers=EngineObservers(batch_rows=sizes.append),
    ) as engine:
        blocker = asyncio.create_task(engine.infer(torch.randn(1, 1, 28, 28)))
        await model.held()
        with pytest.raises(InferenceTimeout):
            await engine.infer(torch.randn(1, 1, 28, 28))
        model.gate.set()
        with pytest.raises(InferenceTimeout):
            await blocker  # it too waited past its deadline
        engine.timeout_s = 5
        await engine.infer(torch.randn(1, 1, 28, 28))
    assert sizes == [1, 1]  # the abandoned second request was dropped, not computed


async def test_stop_answers_what_is_queued_and_refuses_new_work() -> None:
    model = GatedNet()
    engine = engine_for(checkpoint(model), CPU, max_batch_size=2)
    await engine.__aenter__()
    pending = [asyncio.create_task(engine.infer(torch.randn(1, 1, 28, 28))) for _ in range(5)]
    await model.held()
    stopping = asyncio.create_task(engine.stop(grace_s=60))
    await asyncio.sleep(0)  # stop() has begun: it refuses new work before it waits
    with pytest.raises(ShuttingDown, match=r"^the server is shutting down$"):
        await engine.infer(torch.randn(1, 1, 28, 28))
    model.gate.set()
    async with asyncio.timeout(10):  # it returns once the queue is done, not at the end of its grace
        await stopping
    assert all(rows.shape == (1, 10) for rows, _ in await asyncio.gather(*pending))


async def test_what_is_left_after_the_grace_is_told_the_server_is_shutting_down() -> None:
    model = GatedNet()
    async with (
        asyncio.timeout(5),
        engine_for(checkpoint(model), CPU, max_batch_size=1, stop_grace_s=0.1) as engine,
    ):
        in_flight = asyncio.create_task(engine.infer(torch.randn(1, 1, 28, 28)))
        await model.held()
        queued = [asyncio.create_task(engine.infer(torch.randn(1, 1, 28, 28))) for _ in range(2)]
        await asyncio.sleep(0)
        opener = threading.Timer(0.5, model.gate.set)  # the forward pass outlasts the grace
        opener.start()
    assert model.finished.is_set()  # stopping ends only once no forward pass runs
    answers = await asyncio.gather(in_flight, *queued, return_exceptions=True)
    assert [type(answer) for answer in answers] == [ShuttingDown] * 3  # none left waiting for a timeout
    assert {str(answer) for answer in answers} == {"the server is shutting down"}


def worker_tasks() -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "inference-worker"]


async def test_the_worker_is_a_named_task_that_stop_ends() -> None:
    never_started = engine_for(checkpoint(Net()), CPU)
    assert not never_started.running
    async with asyncio.timeout(5):
        await never_started.stop(grace_s=30)  # nothing to wait for
    engine = engine_for(checkpoint(Net()), CPU)
    async with asyncio.timeout(5), engine:
        assert engine.running and len(worker_tasks()) == 1  # named, for task dumps
    assert not engine.running and not worker_tasks()


class ThreadRecordingNet(Net):
    """The real network, noting the thread each forward pass runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.threads.append(threading.current_thread().name)
        return super().forward(x)


async def test_observers_see_each_batch_its_rows_waits_and_time_on_one_inference_thread() -> None:
    model = ThreadRecordingNet()
    rows: list[int] = []
    waits: list[float] = []
    inference: list[float] = []
    observers = EngineObservers(batch_rows=rows.append, queue_wait=waits.append, inference=inference.append)
    started = time.perf_counter()
    async with engine_for(checkpoint(model), CPU, max_batch_size=4, observers=observers) as engine:
        # queued together: 1 + 2 rows fit in one batch of 4, the 3 rows after them do not
        await asyncio.gather(*(engine.infer(torch.randn(n, 1, 28, 28)) for n in (1, 2, 3)))
        await engine.infer(torch.randn(1, 1, 28, 28))
    elapsed = time.perf_counter() - started
    assert rows == [3, 3, 1]
    assert len(waits) == 4 and all(0 <= wait <= elapsed for wait in waits)  # one per request
    assert len(inference) == 3 and all(0 < seconds <= elapsed for seconds in inference)
    assert model.threads == ["inference_0"] * 3  # never on the event loop, never on two threads


async def test_every_forward_pass_runs_on_the_one_inference_thread() -> None:
    """One thread, not merely one at a time: a pool of more would now and then hand the next pass
    to a new thread while the last one is still on its way back to idle."""
    model = ThreadRecordingNet()
    async with engine_for(checkpoint(model), CPU) as engine:
        for _ in range(200):
            await engine.infer(torch.randn(1, 1, 28, 28))
    assert set(model.threads) == {"inference_0"}


class RefusesNaN(Net):
    """The real network, raising on a batch that holds a NaN (as a model can fail on some input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.isnan().any():
            raise RuntimeError("NaN in the batch")
        return super().forward(x)


async def test_a_failed_forward_fails_only_its_batch(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = RefusesNaN().eval()
    good = torch.randn(3, 1, 28, 28)
    # timeout_s: an answer that never came would be a timeout, not the failure checked here
    async with engine_for(checkpoint(model), CPU, max_batch_size=1, timeout_s=10) as engine:
        bad, rows = await asyncio.gather(
            engine.infer(torch.full((1, 1, 28, 28), float("nan"))), engine.infer(good), return_exceptions=True
        )
        assert isinstance(bad, InferenceFailed) and str(bad) == "inference failed"
        [logged] = [record for record in caplog.records if record.levelname == "ERROR"]
        assert logged.getMessage() == "inference failed on a batch of 1 requests"
        assert "RuntimeError: NaN in the batch" in caplog.text  # with its traceback
        after, _ = await engine.infer(good)
    with torch.inference_mode():
        expected = model(good)
    assert not isinstance(rows, BaseException)
    assert_log_probs_close(rows[0], expected)  # the request queued behind the failure was served
    assert_log_probs_close(after, expected)


async def test_a_fault_outside_the_forward_fails_what_the_worker_holds_and_it_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    faults = [RuntimeError("a metric hook broke")]

    def queue_wait(seconds: float) -> None:
        if faults:
            raise faults.pop()

    async with engine_for(
        checkpoint(Net()),
        CPU,
        max_batch_size=1,
        timeout_s=10,
        observers=EngineObservers(queue_wait=queue_wait),
    ) as engine:
        # three requests queued before the worker wakes: the first batch's fault fails all three
        # (none is left waiting forever, and the worker does not spin on a fault that repeats)
        answers = await asyncio.gather(
            *(engine.infer(torch.randn(1, 1, 28, 28)) for _ in range(3)), return_exceptions=True
        )
        assert [type(answer) for answer in answers] == [InferenceFailed] * 3
        assert {str(answer) for answer in answers} == {"inference failed"}
        [logged] = [record for record in caplog.records if record.levelname == "ERROR"]
        assert logged.getMessage() == "the inference worker failed; failing the requests it held"
        assert "RuntimeError: a metric hook broke" in caplog.text  # with its traceback
        rows, served = await engine.infer(torch.randn(2, 1, 28, 28))  # the worker is still there
    assert rows.shape == (2, 10) and served.version == "v1"


def channels_last(engine: BatchingEngine) -> bool:
    """Served channels-last: faster convolutions on the CPU (docs: the batching engine)."""
    model = engine.serving().model
    assert isinstance(model, Net)
    return model.conv2.weight.is_contiguous(memory_format=torch.channels_last)


async def test_swap_takes_effect_from_the_next_batch() -> None:
    async with engine_for(checkpoint(Net(), "old"), CPU) as engine:
        assert (await engine.infer(torch.randn(1, 1, 28, 28)))[1].version == "old"
        assert channels_last(engine)
        engine.swap(checkpoint(Net(), "new"))
        assert (await engine.infer(torch.randn(1, 1, 28, 28)))[1].version == "new"
        assert channels_last(engine)


async def test_no_model_says_how_to_make_one() -> None:
    async with engine_for(None, CPU, unavailable_reason="no checkpoint file mnist_cnn.pt") as engine:
        with pytest.raises(NoModel) as refused:
            await engine.infer(torch.randn(1, 1, 28, 28))
        assert str(refused.value) == (
            "no model loaded: no checkpoint file mnist_cnn.pt. Train one with `python -m training` "
            "(then restart or wait for the server to pick it up) or start a job with `POST /train`"
        )
        engine.unavailable("mnist_cnn.pt is corrupt or truncated")  # a later load failed too
        with pytest.raises(NoModel, match=r"^no model loaded: mnist_cnn\.pt is corrupt or truncated\. "):
            await engine.infer(torch.randn(1, 1, 28, 28))
        engine.swap(checkpoint(Net(), "v1"))
        engine.unavailable("a newer file failed to load")  # while one is served: ignored
        assert (await engine.infer(torch.randn(1, 1, 28, 28)))[1].version == "v1"


async def test_ready_only_with_a_model_and_a_running_worker_and_says_why_not() -> None:
    loaded = checkpoint(Net(), "v1")
    engine = engine_for(loaded, CPU)
    with pytest.raises(NoModel) as refused:
        engine.ready()  # not started yet
    assert str(refused.value) == "the inference engine is not running"
    async with engine:
        assert engine.ready() is loaded
    with pytest.raises(NoModel, match=r"^the inference engine is not running$"):
        engine.ready()  # stopped
    async with engine_for(None, CPU, unavailable_reason="no checkpoint file mnist_cnn.pt") as empty:
        with pytest.raises(NoModel, match=r"^no model loaded: no checkpoint file mnist_cnn\.pt\. "):
            empty.ready()
