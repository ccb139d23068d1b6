"""The HTTP connection layer under the app: uvicorn's own protocol, with bounds on a request's head.

uvicorn reads request headers without a size limit (httptools) and waits for them for ever: one
client with a 100 MB header, or many that send a byte a second (slowloris), tie up a worker or its
file descriptors. Each connection here must deliver a complete head within MNIST_HEADER_TIMEOUT_S
of opening, or of the first byte of its next request, and within MNIST_MAX_HEADER_BYTES; else it
gets a 408 or 431 and is closed. What the app reads after the head (bodies) is bounded in
app/uploads.py; idle keep-alive connections are closed by uvicorn after MNIST_KEEP_ALIVE_S.

`python -m app` runs uvicorn with `http=PROTOCOL` (httptools when installed, else h11, as uvicorn's
own "auto" picks).
"""

import asyncio
from typing import Any, ClassVar

from app.config import Settings

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class BoundedHead:
    """Mixin for uvicorn's HTTP protocol classes (before them in the bases)."""

    # Read from the MNIST_* environment once per server process, on its first connection.
    max_header_bytes: ClassVar[int | None] = None
    header_timeout_s: ClassVar[float] = 0.0

    cycle: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if BoundedHead.max_header_bytes is None:
            settings = Settings()
            BoundedHead.max_header_bytes = settings.max_header_bytes
            BoundedHead.header_timeout_s = settings.header_timeout_s
        super().connection_made(transport)  # type: ignore[misc]
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._timed_cycle: Any = None
        self._time_head()  # a connection that never sends a byte is closed too

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._time_head()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)  # type: ignore[misc]
        if self._head_timer is None or self.transport.is_closing():
            return
        if self.cycle is not self._timed_cycle:  # the head is complete: a request cycle began
            self._stop_timing()
            return
        self._head_bytes += len(data)  # nothing of a body yet: all of it was head
        assert BoundedHead.max_header_bytes is not None
        if self._head_bytes > BoundedHead.max_header_bytes:
            self._refuse(431, f"request headers over {BoundedHead.max_header_bytes} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timing()
        super().connection_lost(exc)  # type: ignore[misc]

    def _time_head(self) -> None:
        self._head_bytes, self._timed_cycle = 0, self.cycle
        self._head_timer = self.loop.call_later(BoundedHead.header_timeout_s, self._head_too_slow)

    def _stop_timing(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.cycle is self._timed_cycle and not self.transport.is_closing():
            self._refuse(408, f"request headers not received within {BoundedHead.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._stop_timing()
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, REASONS[status], len(body), body)
        )
        self.transport.close()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(BoundedHead, HttpToolsProtocol):
        """httptools (the faster parser), with bounded request heads."""

    PROTOCOL: type = BoundedHttpToolsProtocol
except ImportError:  # uvicorn without its [standard] extras
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(BoundedHead, H11Protocol):
        """h11, with bounded request heads (h11 also bounds them itself, through uvicorn's
        h11_max_incomplete_event_size)."""

    PROTOCOL = BoundedH11Protocol
