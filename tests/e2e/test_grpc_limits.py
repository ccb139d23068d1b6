"""What one gRPC client may hold, against a real `python -m app` listening on IPv4 and IPv6 (so a
test has two client addresses): a call's message must arrive within MNIST_BODY_TIMEOUT_S, a client
may keep only its share of calls waiting for their message, a malformed message is
INVALID_ARGUMENT, and what a request declares is checked before its elements are converted."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.server import DualStackServer
from tests.tools import polled
from tests.v2_client import call_grpc, one_digit_request

TIMEOUT_S = 2.0
INFER = "/inference.GRPCInferenceService/ModelInfer"
# With these, a client's share (a quarter of 64 MiB) holds room for 4 messages of 4 MiB.
BUDGET = {
    "MNIST_MAX_BUFFERED_BYTES": str(64 * 1024 * 1024),
    "MNIST_MAX_BATCH_BYTES": str(8 * 1024 * 1024),  # within the share too
    "MNIST_GRPC_MAX_MESSAGE_BYTES": str(4 * 1024 * 1024),
}


@pytest.fixture(scope="module")
def server(small_checkpoint: Path) -> Iterator[DualStackServer]:
    env = {
        "MNIST_MODEL_PATH": str(small_checkpoint),
        "MNIST_WORKERS": "1",
        "MNIST_BODY_TIMEOUT_S": str(TIMEOUT_S),
        **BUDGET,
    }
    with DualStackServer(env) as running:
        yield running


class Stalled:
    """Calls that send their headers and never their message, as many as asked, on one channel."""

    def __init__(self, url: str, calls: int) -> None:
        self.release = threading.Event()
        self.channel = grpc.insecure_channel(url)
        call = self.channel.stream_unary(INFER)

        def nothing() -> Iterator[bytes]:
            self.release.wait(60)
            return
            yield b""  # a generator that sends no message

        self.started = time.monotonic()
        self.futures = [call.future(nothing(), timeout=30) for _ in range(calls)]

    def outcomes(self) -> list[tuple[grpc.StatusCode, str, float]]:
        ended = []
        for future in self.futures:
            error = future.exception()
            assert error is not None
            ended.append((error.code(), error.details() or "", time.monotonic() - self.started))
        return ended

    def close(self) -> None:
        self.release.set()
        self.channel.close()


def grpc_outcome(url: str) -> grpc.RpcError | None:
    """A one-digit ModelInfer call: its error, or None when it was answered."""
    try:
        call_grpc(url, "ModelInfer", one_digit_request())
    except grpc.RpcError as error:
        return error
    return None


def test_a_call_whose_message_never_comes_ends_at_the_body_timeout(server: DualStackServer) -> None:
    stalled = Stalled(server.grpc_ipv4, 1)
    try:
        [(code, details, after)] = stalled.outcomes()
    finally:
        stalled.close()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
    assert details == "the request message did not arrive within 2 s"
    assert TIMEOUT_S - 0.2 < after < TIMEOUT_S + 2


def test_a_client_keeps_only_its_share_of_calls_waiting_while_others_are_served(
    server: DualStackServer,
) -> None:
    stalled = Stalled(server.grpc_ipv4, 4)
    try:
        # The same client's next call: refused at once, once the four hold their room.
        refused = polled(
            lambda: grpc_outcome(server.grpc_ipv4), lambda error: error is not None, 10, 0.1, "a refusal"
        )
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.details() == (
            "this client is sending 16777216 bytes of uploads at once already, its share of this server; "
            "send the next when one is answered"
        )
        answer = call_grpc(server.grpc_ipv6, "ModelInfer", one_digit_request())  # another client: served
        assert answer.model_name == "mnist"
        outcomes = stalled.outcomes()
    finally:
        stalled.close()
    assert {code for code, _, _ in outcomes} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    assert (
        call_grpc(server.grpc_ipv4, "ModelInfer", one_digit_request()).model_name == "mnist"
    )  # its share is back


def test_a_malformed_message_is_invalid_argument(server: DualStackServer) -> None:
    with grpc.insecure_channel(server.grpc_ipv4) as channel:
        for method in ("ModelInfer", "ServerLive", "ModelMetadata"):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as refused:
                call(b"\xff\xff\xff", timeout=10)  # a field tag with no end
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert refused.value.details().startswith("the request is not a valid ")
        assert (
            service_pb2_grpc.GRPCInferenceServiceStub(channel)
            .ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
            .live
        )


def test_what_a_request_declares_is_checked_before_its_elements_are_converted(
    server: DualStackServer,
) -> None:
    """Rows past the limit are refused from the shape, before any element is read: typed contents
    of 20,000 rows (15.7 M elements) took seconds to convert before their 413. The elements here
    are also in the wrong field, which converting would have found first (a 400)."""
    request = service_pb2.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add(name="pixels", datatype="UINT8", shape=[2000, 28, 28])
    tensor.contents.fp32_contents.extend([0.0] * 784)
    with pytest.raises(grpc.RpcError) as refused:
        call_grpc(server.grpc_ipv4, "ModelInfer", request)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
    assert "2000 images in one request; at most 1024" in (refused.value.details() or "")
