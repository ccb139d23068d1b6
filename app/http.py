"""The HTTP connection layer under the app: uvicorn's httptools protocol, with bounds on each request.

uvicorn reads request headers without a size limit (httptools) and waits for them for ever: one
client with a 100 MB header, or many that send a byte a second (slowloris), tie up a worker or its
file descriptors. Here each connection must deliver a complete head within MNIST_HEADER_TIMEOUT_S
of opening, or of the first byte of its next request, and within MNIST_MAX_HEADER_BYTES (the URL
and every header name and value, trailers included, counted by the parser as it goes); else it gets
a 408 or 431 and is closed. httptools buffers a header or trailer line until it ends, so the bytes
that arrive without the parser getting anywhere are counted too: past MNIST_MAX_HEADER_BYTES the
connection is refused while the line is still arriving. After its head, the rest of a request (its
body, chunked or not, and its trailers) must arrive within MNIST_BODY_TIMEOUT_S, whether the app
reads it or not; a request answered before its body came is then closed. What the app reads of a
body is bounded in app/predict/uploads.py; idle keep-alive connections are closed by uvicorn after
MNIST_KEEP_ALIVE_S.

`python -m app` runs uvicorn with `http=PROTOCOL`. Without httptools (uvicorn without its
[standard] extras, which this project depends on) it is plain h11, whose own bound on a head's size
(uvicorn's h11_max_incomplete_event_size: a 400) is all that applies.
"""

import asyncio
from collections.abc import Callable
from typing import ClassVar

from app.config import Settings

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class HeadRefused(Exception):
    """Raised in a parser callback to stop parsing a connection that was just refused."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """httptools with bounded requests: a head timed from the connection (or the next request's
        first byte) to its last header and measured by the parser's own callbacks, no line longer
        than the head's bound while it arrives, and the rest of a request timed from its head."""

        # Read from the MNIST_* environment once per server process, on its first connection.
        max_header_bytes: ClassVar[int | None] = None
        header_timeout_s: ClassVar[float] = 0.0
        body_timeout_s: ClassVar[float] = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            cls = BoundedHttpToolsProtocol
            if cls.max_header_bytes is None:
                settings = Settings()
                cls.max_header_bytes, cls.header_timeout_s, cls.body_timeout_s = (
                    settings.max_header_bytes,
                    settings.header_timeout_s,
                    settings.body_timeout_s,
                )
            # One deadline at a time: the head's (from the connection, or the next request's first
            # byte), then the rest of the request's (from its head), none between requests.
            self._deadline: asyncio.TimerHandle | None = None
            self._head_bytes = 0
            self._unparsed = 0  # bytes received since the parser last got somewhere
            self._refused = False
            self._in_head = True  # between a request's first byte (or the connection's) and its body
            super().connection_made(transport)
            self._time(self.header_timeout_s, self._head_too_slow)  # a connection that says nothing too

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timing()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._unparsed += len(data)
            super().data_received(data)
            assert self.max_header_bytes is not None
            closed = self._refused or self.transport.is_closing()
            if self._unparsed > self.max_header_bytes and not closed:
                # A header or trailer line that does not end: httptools would buffer all of it.
                self._refuse(431, f"a request header or trailer line over {self.max_header_bytes} bytes")

        def on_message_begin(self) -> None:
            self._parsed()
            if self._deadline is None:  # the next request on a kept-alive connection
                self._time(self.header_timeout_s, self._head_too_slow)
            self._head_bytes = 0
            self._in_head = True
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._parsed()
            self._count(len(name) + len(value))  # trailers too: they count with the head
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._parsed()
            self._in_head = False
            self._time(self.body_timeout_s, self._rest_too_slow)
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._parsed()
            super().on_body(body)

        def on_chunk_header(self) -> None:
            self._parsed()

        def on_chunk_complete(self) -> None:
            self._parsed()

        def on_message_complete(self) -> None:
            self._parsed()
            self._stop_timing()
            super().on_message_complete()
            # Answered before its body was read (a refusal): the body's arrival cancelled uvicorn's
            # keep-alive timer, which nothing would start again; idle from now on, so time it.
            answered = self.cycle is not None and self.cycle.response_complete
            if answered and self.timeout_keep_alive_task is None and not self.transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

        def send_400_response(self, msg: str) -> None:
            if not self._refused:  # a refusal stops the parser with an error: answered already
                super().send_400_response(msg)

        def _count(self, size: int) -> None:
            self._head_bytes += size
            assert self.max_header_bytes is not None
            if self._head_bytes > self.max_header_bytes:
                self._refuse(431, f"request headers over {self.max_header_bytes} bytes")
                raise HeadRefused

        def _parsed(self) -> None:
            self._unparsed = 0

        def _time(self, delay_s: float, too_slow: Callable[[], None]) -> None:
            self._stop_timing()
            self._deadline = self.loop.call_later(delay_s, too_slow)

        def _stop_timing(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _rest_too_slow(self) -> None:
            """The request's body or trailers did not arrive whole in time. A request the app
            has answered is closed; one it has not is answered first (a route reading the body
            says 408 on its own, at about this time), then closed."""
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()
            else:
                self.cycle.keep_alive = False

        def _head_too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s")

        def _refuse(self, status: int, message: str) -> None:
            self._stop_timing()
            self._refused = True
            body = message.encode()
            if self._in_head:  # past its head, a request may be mid-answer: close only
                self.transport.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n%s" % (status, REASONS[status], len(body), body)
                )
            self.transport.close()

    PROTOCOL: type | str = BoundedHttpToolsProtocol
except ImportError:
    PROTOCOL = "h11"
