"""Uploads: the multipart parser on real bodies, the content type, the upload budget, and the body
reader through Starlette's own Request (fed by an ASGI receive channel, as a server feeds it)."""

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from app.errors import (
    BadRequest,
    ClientBusy,
    PayloadTooLarge,
    RequestTimeout,
    TooManyFiles,
    UnsupportedMediaType,
    UploadsBusy,
)
from app.predict.uploads import Bodies, Upload, boundary_of, client_of_peer, parse_multipart


def part(disposition: bytes | None, data: bytes) -> bytes:
    head = b"" if disposition is None else b"Content-Disposition: " + disposition + b"\r\n"
    return b"--B\r\n" + head + b"\r\n" + data + b"\r\n"


def test_parts_keep_their_names_filenames_and_bytes_in_order() -> None:
    body = (
        part(b'form-data; name="files"; filename="a.png"', b"one\r\n-\r\n--Bx two")  # boundary lookalikes
        + part(b'form-data; name="invert"', b"true")
        + part(b'form-data; name="\xff"; filename="\xfe.png"', b"")  # not UTF-8: replaced, not refused
        + part(b"form-data", b"nameless")
        + part(None, b"no disposition")
        + b"--B--\r\n"
    )
    assert parse_multipart(body, b"B", max_parts=5) == [
        Upload("files", "a.png", b"one\r\n-\r\n--Bx two"),
        Upload("invert", None, b"true"),
        Upload("\ufffd", "\ufffd.png", b""),
        Upload("", None, b"nameless"),
        Upload("", None, b"no disposition"),
    ]


def test_parts_beyond_the_limit_are_refused_and_a_body_must_close() -> None:
    three = part(b'form-data; name="a"', b"1") * 3
    assert len(parse_multipart(three + b"--B--\r\n", b"B", max_parts=3)) == 3
    with pytest.raises(TooManyFiles) as refused:
        parse_multipart(three + b"--B--\r\n", b"B", max_parts=2)
    assert str(refused.value) == "the multipart body has more than 2 parts"
    with pytest.raises(BadRequest) as unclosed:
        parse_multipart(three, b"B", max_parts=3)
    assert str(unclosed.value) == "the multipart/form-data body ends before its closing boundary"


def test_only_multipart_with_a_boundary_is_an_upload() -> None:
    assert boundary_of('multipart/form-data; boundary="xyz"') == b"xyz"
    for content_type, shown in ((None, "none"), ("", "none"), ("application/json", "application/json")):
        with pytest.raises(UnsupportedMediaType) as refused:
            boundary_of(content_type)
        assert str(refused.value) == f"expected a multipart/form-data upload, got content type {shown}"
    with pytest.raises(BadRequest) as bare:
        boundary_of("multipart/form-data")
    assert str(bare.value) == "multipart/form-data content type without a boundary"


def test_the_budget_holds_exactly_its_size() -> None:
    bodies = Bodies(timeout_s=5, budget=100)
    with bodies.reserved(60, "a"), bodies.reserved(40, "b"):  # exactly full
        with pytest.raises(UploadsBusy) as busy, bodies.reserved(1, "c"):
            pass
        assert str(busy.value) == "this server is holding 100 bytes of uploads already; try again shortly"
    assert bodies.held == 0 and not bodies.by_client
    with pytest.raises(UploadsBusy), bodies.reserved(101, "a"):
        pass


def test_one_client_holds_at_most_its_share_and_the_others_keep_the_rest() -> None:
    bodies = Bodies(timeout_s=5, budget=100, client_share=0.25)
    with bodies.reserved(20, "10.0.0.1") as first, bodies.reserved(5, "10.0.0.1"):  # exactly its 25
        with pytest.raises(ClientBusy) as busy, bodies.reserved(1, "10.0.0.1"):
            pass
        assert str(busy.value) == (
            "this client is sending 25 bytes of uploads at once already, its share of this server; "
            "send the next when one is answered"
        )
        with bodies.reserved(25, "10.0.0.2"), bodies.reserved(25, "10.0.0.3"), bodies.reserved(25, "::1"):
            assert bodies.held == 100
        first.resize(3)  # a message took less than the room held for it: the rest is given back
        assert bodies.held == 8 and bodies.by_client == {"10.0.0.1": 8}
        with bodies.reserved(17, "10.0.0.1"):
            pass
        first.resize(20)  # and grows by what it takes more, up to its share again
        assert bodies.held == 25 and bodies.by_client == {"10.0.0.1": 25}
    assert bodies.held == 0 and not bodies.by_client
    tiny = Bodies(timeout_s=5, budget=4, client_share=0.25)  # a share below one byte is one byte
    with tiny.reserved(1, "a"), pytest.raises(ClientBusy), tiny.reserved(1, "a"):
        pass
    with bodies.reserved(10, "10.0.0.9") as alone:
        alone.resize(1)  # down to its last byte: still this client's, counted
        assert bodies.held == 1 and bodies.by_client == {"10.0.0.9": 1}
    assert bodies.held == 0 and not bodies.by_client


async def test_an_upload_that_passes_the_budget_mid_body_gives_back_what_it_held() -> None:
    bodies = Bodies(timeout_s=5, budget=1000)
    with bodies.reserved(500, "other"):  # another request's upload
        with pytest.raises(UploadsBusy):
            async with bodies.holding(Sent({}, [b"x" * 300, b"x" * 300]).request, 1000):
                pass
        assert bodies.held == 500
    assert bodies.held == 0


async def test_an_upload_past_its_clients_share_mid_body_is_a_429_and_holds_nothing() -> None:
    bodies = Bodies(timeout_s=5, budget=1000, client_share=0.5)
    with bodies.reserved(300, "10.0.0.9"):  # the same client's other upload
        with pytest.raises(ClientBusy):
            async with bodies.holding(Sent({}, [b"x" * 150, b"x" * 100], client="10.0.0.9").request, 1000):
                pass
        async with bodies.holding(
            Sent({}, [b"x" * 150, b"x" * 100], client="10.0.0.8").request, 1000
        ) as body:
            assert len(body) == 250 and bodies.by_client == {"10.0.0.9": 300, "10.0.0.8": 250}
    assert bodies.held == 0 and not bodies.by_client


class Sent:
    """A request as a server hands it over: headers, then the body in chunks as they arrive; then,
    if the client `stops` ("disconnects" or "stalls"), that instead of the body's end."""

    def __init__(
        self, headers: dict[str, str], chunks: list[bytes], stops: str = "", client: str = ""
    ) -> None:
        self.chunks, self.stops, self.read = chunks, stops, 0
        raw = [(key.encode(), value.encode()) for key, value in headers.items()]
        scope = {"type": "http", "method": "POST", "path": "/", "headers": raw, "client": (client, 5000)}
        self.request = Request(scope, self.receive)

    async def receive(self) -> dict[str, Any]:
        self.read += 1
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks or self.stops)}
        if self.stops == "stalls":
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}


async def test_a_declared_oversize_body_waiting_to_be_continued_is_refused_unread() -> None:
    bodies = Bodies(timeout_s=5, budget=10_000)
    waiting = Sent({"content-length": "1001", "expect": "100-Continue"}, [b"x" * 1001])
    with pytest.raises(PayloadTooLarge) as refused:
        await bodies.read(waiting.request, limit=1000)
    assert str(refused.value) == "upload is larger than the limit of 1000 bytes"
    assert waiting.read == 0  # not a byte asked for: the client never sends it
    # Without the Expect header the body is drained, never held, and refused all the same.
    sending = Sent({"content-length": "1001"}, [b"x" * 600, b"x" * 401])
    with pytest.raises(PayloadTooLarge):
        await bodies.read(sending.request, limit=1000)
    assert sending.read == 2
    # Exactly the limit, declared and waiting to be continued: read.
    exact = Sent({"content-length": "1000", "expect": "100-continue"}, [b"x" * 1000])
    assert await bodies.read(exact.request, limit=1000) == b"x" * 1000
    assert bodies.held == 0


@pytest.mark.parametrize(
    ("limit", "chunk", "reads"),
    [
        (1000, 16 * 1024, 64 * 64 + 1),  # small limits: 64 MiB drained, then the connection closes
        (8 * 1024 * 1024, 1024 * 1024, 16 * 8 + 1),  # large ones: 16 times the limit
    ],
)
async def test_an_oversize_body_is_drained_up_to_a_bound(limit: int, chunk: int, reads: int) -> None:
    sending = Sent({"content-length": str(10 * 1024**3)}, [bytes(chunk)] * (reads + 50))
    with pytest.raises(PayloadTooLarge):
        await Bodies(timeout_s=30, budget=limit).read(sending.request, limit)
    assert sending.read == reads  # the first chunk past the bound is the last read


async def test_a_body_of_exactly_the_limit_is_read_with_or_without_a_length() -> None:
    bodies = Bodies(timeout_s=5, budget=1000)
    async with bodies.holding(Sent({}, [b"x" * 600, b"x" * 400]).request, 1000) as body:
        assert body == b"x" * 1000 and bodies.held == 1000
    assert bodies.held == 0
    with pytest.raises(PayloadTooLarge):
        await bodies.read(Sent({}, [b"x" * 600, b"x" * 401]).request, 1000)


async def test_a_client_that_leaves_or_stalls_mid_body_gets_an_answer_and_holds_nothing() -> None:
    bodies = Bodies(timeout_s=0.5, budget=10_000)
    with pytest.raises(BadRequest) as left:
        async with bodies.holding(Sent({}, [b"x" * 600], stops="disconnects").request, 1000):
            pass
    assert str(left.value) == "the client disconnected before the upload was complete"
    assert bodies.held == 0
    with pytest.raises(RequestTimeout) as stalled:
        async with asyncio.timeout(10):  # the reader's own timeout must end it, well before this
            async with bodies.holding(Sent({}, [b"x" * 600], stops="stalls").request, 1000):
                pass
    assert str(stalled.value) == "the request body did not arrive within 0.5 s"
    assert bodies.held == 0


async def test_a_body_that_stops_arriving_is_cut_off_after_the_idle_gap_not_the_whole_timeout() -> None:
    bodies = Bodies(timeout_s=30, budget=10_000, idle_s=0.3)
    with pytest.raises(RequestTimeout) as stalled:
        async with asyncio.timeout(10):
            async with bodies.holding(Sent({}, [b"x" * 600], stops="stalls").request, 1000):
                pass
    assert str(stalled.value) == "no byte of the request body arrived for 0.3 s"
    assert bodies.held == 0 and not bodies.by_client
    assert Bodies(timeout_s=5, budget=1, idle_s=5).idle_s is None  # no shorter than the whole: unused


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("ipv4:10.0.0.7:5123", "10.0.0.7"),
        ("ipv6:[::1]:5123", "::1"),
        ("ipv6:%5B::1%5D:5123", "::1"),  # as gRPC core writes it
        ("ipv6:[::ffff:127.0.0.1]:40000", "::ffff:127.0.0.1"),
        ("unix:/run/mnist.sock", "unix:/run/mnist.sock"),
    ],
)
def test_a_grpc_peer_is_counted_by_its_address_alone(peer: str, client: str) -> None:
    assert client_of_peer(peer) == client
