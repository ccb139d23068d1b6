"""Reading multipart uploads with hard limits, before any of it reaches the image decoder.

The body is read as a stream and counted: past the limit the rest is read and thrown away (up to a
bound, as nginx does) so that the client receives the 413 rather than a connection reset, and is
never held in memory. The multipart parsing itself is python-multipart's parser, fed from memory.
"""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.config import MULTIPART_OVERHEAD
from app.errors import (
    BadRequest,
    ClientBusy,
    PayloadTooLarge,
    RequestTimeout,
    TooManyFiles,
    UnsupportedMediaType,
    UploadsBusy,
)


@dataclass
class Upload:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    data: bytes = b""


@dataclass
class _PartBuilder:
    parts: list[Upload] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    header_field: bytes = b""
    header_value: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    begun: int = 0  # parts started
    complete: bool = False  # the closing boundary was seen


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary, or 415 for any other kind of body."""
    media_type, options = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        shown = media_type.decode("latin-1") or "none"
        raise UnsupportedMediaType(f"expected a multipart/form-data upload, got content type {shown}")
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data content type without a boundary")
    return boundary


class Bodies:
    """Reads request bodies within this process's bounds: each must arrive within `timeout_s`,
    with no gap longer than `idle_s` between its bytes (a client that dribbles or stalls gets a
    408), and upload bytes held at once stay within `budget` over all requests (past it a 503 with
    Retry-After) and within `client_share` of it for one client address (past it a 429), so that
    one client cannot take the budget from the others. An upload counts from its first byte until
    its request is answered, so neither slow senders nor fast ones can pile up memory."""

    def __init__(
        self, timeout_s: float, budget: int, idle_s: float | None = None, client_share: float = 1.0
    ) -> None:
        self.timeout_s, self.budget = timeout_s, budget
        self.idle_s = idle_s if idle_s is not None and idle_s < timeout_s else None  # None: no gap bound
        self.client_budget = max(1, int(budget * client_share))
        # Bytes of uploads whose requests are not answered yet, in all and per client address;
        # one event loop, no lock.
        self.held = 0
        self.by_client: Counter[str] = Counter()

    async def read(self, request: Request, limit: int) -> bytes:
        """A small body (a JSON document), outside the upload budget."""
        return await self._receive(request, limit, limit, budgeted=False)

    @asynccontextmanager
    async def uploads(self, request: Request, limit: int, max_parts: int) -> AsyncIterator[list[Upload]]:
        """`async with bodies.uploads(...) as parts:` the multipart body read within `limit` (+
        multipart overhead) and parsed; its bytes count against the budget until the block ends."""
        boundary = boundary_of(request.headers.get("content-type"))
        async with self.holding(request, limit + MULTIPART_OVERHEAD, limit) as body:
            yield parse_multipart(body, boundary, max_parts)

    @asynccontextmanager
    async def holding(
        self, request: Request, limit: int, shown_limit: int | None = None
    ) -> AsyncIterator[bytes]:
        """`async with bodies.holding(request, limit) as body:` a body of at most `limit` bytes,
        counted against the budget until the block ends."""
        body = await self._receive(request, limit, shown_limit or limit, budgeted=True)
        try:
            yield body
        finally:
            self._release(len(body), client_of(request))

    @contextmanager
    def reserved(self, size: int, client: str) -> Iterator["Reservation"]:
        """`with bodies.reserved(most, client) as held:` room for a message that is yet to arrive
        another way (a gRPC call's, which gRPC buffers whole), held against the budget until the
        block ends; `held.resize(n)` once it is known to take n. Past the budget (or the client's
        share) UploadsBusy or ClientBusy, and nothing is held."""
        reservation = Reservation(self, client, 0)
        reservation.resize(size)
        try:
            yield reservation
        finally:
            reservation.resize(0)

    async def _receive(self, request: Request, limit: int, shown_limit: int, budgeted: bool) -> bytes:
        """The whole body, or PayloadTooLarge once it passes `limit` bytes (the rest is drained, up
        to a bound, so the client reads the 413; a client waiting on `Expect: 100-continue` for a
        declared oversize body gets it before sending anything). Budgeted, the bytes stay held on
        success: the caller gives them back."""
        declared = request.headers.get("content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > limit
        refusal = PayloadTooLarge(f"upload is larger than the limit of {shown_limit} bytes")
        if too_large and request.headers.get("expect", "").lower() == "100-continue":
            raise refusal
        client = client_of(request)
        received = bytearray()
        drained = 0
        drain_bound = max(16 * limit, 64 * 1024 * 1024)
        chunks = request.stream().__aiter__()
        gap = asyncio.timeout(None)
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    gap = asyncio.timeout(self.idle_s)
                    async with gap:
                        chunk = await anext(chunks, None)
                    if chunk is None:
                        break
                    if too_large:
                        drained += len(chunk)
                        if drained > drain_bound:
                            break  # a client that keeps sending gets its 413 and a closed connection
                        continue
                    if budgeted:
                        self._hold(len(chunk), client)
                    received += chunk
                    if len(received) > limit:
                        too_large, drained = True, len(received)
                        self._give_back(received, budgeted, client)
        except ClientDisconnect:
            self._give_back(received, budgeted, client)
            raise BadRequest("the client disconnected before the upload was complete") from None
        except TimeoutError:
            self._give_back(received, budgeted, client)
            if gap.expired():
                raise RequestTimeout(f"no byte of the request body arrived for {self.idle_s:g} s") from None
            raise RequestTimeout(f"the request body did not arrive within {self.timeout_s:g} s") from None
        except BaseException:
            self._give_back(received, budgeted, client)
            raise
        if too_large:
            raise refusal
        return bytes(received)

    def _hold(self, size: int, client: str) -> None:
        if self.held + size > self.budget:
            raise UploadsBusy(
                f"this server is holding {self.budget} bytes of uploads already; try again shortly"
            )
        if self.by_client[client] + size > self.client_budget:
            raise ClientBusy(
                f"this client is sending {self.client_budget} bytes of uploads at once already, its "
                "share of this server; send the next when one is answered"
            )
        self.held += size
        self.by_client[client] += size

    def _release(self, size: int, client: str) -> None:
        self.held -= size
        self.by_client[client] -= size
        if self.by_client[client] <= 0:
            del self.by_client[client]

    def _give_back(self, received: bytearray, budgeted: bool, client: str) -> None:
        if budgeted:
            self._release(len(received), client)
        received.clear()


@dataclass
class Reservation:
    """Bytes held for one message of one client, resized as what it takes becomes known."""

    bodies: Bodies
    client: str
    size: int

    def resize(self, size: int) -> None:
        if size > self.size:
            self.bodies._hold(size - self.size, self.client)
        else:
            self.bodies._release(self.size - size, self.client)
        self.size = size


def client_of(request: Request) -> str:
    """An HTTP client's address as the server sees it (a proxy's, behind one)."""
    return request.client.host if request.client else ""


def client_of_peer(peer: str) -> str:
    """A gRPC client's address, from gRPC's peer string: `ipv4:10.0.0.7:5123` -> `10.0.0.7`,
    `ipv6:[::1]:5123` (or percent-encoded, `ipv6:%5B::1%5D:5123`) -> `::1`; anything else (a
    Unix socket) as it is."""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return peer


def parse_multipart(body: bytes, boundary: bytes, max_parts: int) -> list[Upload]:
    """Split a multipart/form-data body into its parts, in order. More than `max_parts` parts is a
    413 found while parsing (so a body of a million empty parts
    costs no more than the first few); a body without its closing boundary is a 400."""
    state = _PartBuilder()

    def on_part_begin() -> None:
        state.begun += 1
        if state.begun > max_parts:
            raise TooManyFiles(f"the multipart body has more than {max_parts} parts")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[state.header_field.lower()] = state.header_value
        state.header_field = state.header_value = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state.chunks.append(data[start:end])

    def on_part_end() -> None:
        _, options = parse_options_header(state.headers.get(b"content-disposition", b""))
        filename = options.get(b"filename")
        state.parts.append(
            Upload(
                name=options.get(b"name", b"").decode("utf-8", "replace"),
                filename=filename.decode("utf-8", "replace") if filename is not None else None,
                data=b"".join(state.chunks),
            )
        )
        state.chunks, state.headers = [], {}

    def on_end() -> None:
        state.complete = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as error:  # its words (it also bounds part headers) are safe to show
        raise BadRequest(f"malformed multipart/form-data body: {error}") from None
    if not state.complete:
        raise BadRequest("the multipart/form-data body ends before its closing boundary")
    return state.parts
