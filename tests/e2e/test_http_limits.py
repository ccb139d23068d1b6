"""What one connection may hold, over real sockets against `python -m app`: a request head must
arrive whole within MNIST_HEADER_TIMEOUT_S and MNIST_MAX_HEADER_BYTES, a body within
MNIST_BODY_TIMEOUT_S; a declared oversize body behind `Expect: 100-continue` is refused before it is
sent; and the open-file limit is raised so idle connections cannot lock new clients out."""

import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import ServerProcess, impatient_server
from tests.tools import read_until_closed

SLOW = 1.5  # seconds: the head and body timeouts these servers run with


@pytest.fixture(scope="module")
def server(small_checkpoint: Path) -> Iterator[ServerProcess]:
    with impatient_server(small_checkpoint, SLOW) as running:
        yield running


def reply_to(
    server: ServerProcess, *pieces: bytes, pause_s: float = 0.0, wait_s: float = 10.0
) -> tuple[bytes, float]:
    """Send `pieces` (pausing between them, stopping if the server closes), then read until the
    server closes; what it answered and how long the connection lived."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait_s) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_until_closed(sock)
    return answer, time.monotonic() - started


def test_an_oversized_head_gets_431(server: ServerProcess) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    answer, _ = reply_to(server, head)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"65536 bytes" in answer
    assert httpx.get(server.url + "/healthz").status_code == 200  # others are served as before


def test_a_head_sent_a_line_at_a_time_is_cut_off(server: ServerProcess) -> None:
    """Slowloris: a header line every 0.3 s, for ever; the server answers 408 once SLOW is up."""
    lines = [b"GET /healthz HTTP/1.1\r\n"] + [b"X-Slow: %d\r\n" % n for n in range(30)]
    answer, lived = reply_to(server, *lines, pause_s=0.3)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert lived < SLOW + 2.0


def test_a_connection_that_says_nothing_is_closed(server: ServerProcess) -> None:
    answer, lived = reply_to(server)
    assert answer.startswith(b"HTTP/1.1 408")
    assert SLOW - 0.2 < lived < SLOW + 2.0


def test_a_kept_alive_connection_still_serves_requests(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(SLOW / 2)  # idle between requests: not a slow head


def test_expect_100_continue_for_an_oversize_body_is_refused_before_it_is_sent(server: ServerProcess) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 10000000000\r\nExpect: 100-continue\r\n\r\n"
    )
    answer, lived = reply_to(server, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]  # no "100 Continue" first
    assert lived < SLOW


def test_a_body_that_stops_arriving_gets_408(server: ServerProcess) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    answer, lived = reply_to(server, head, b"--b\r\n" + b"x" * 95)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive within 1.5 s" in answer
    assert lived < SLOW + 2.0


def test_the_open_file_limit_is_raised(server: ServerProcess) -> None:
    """Started under a soft limit of 1024, the server raises it to the hard limit."""
    assert server.process is not None
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] <= 1024:
        pytest.skip("the hard limit on open files here is 1024: nothing to raise")
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    soft, hard = next(line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files"))
    assert soft == hard


def test_an_early_answer_before_a_large_body_is_the_only_answer(server: ServerProcess) -> None:
    """The app refuses before reading the body (a bad parameter): the body that follows is the
    request's own, not the head of a next one, whatever its size."""
    body = b"x" * 300_000
    head = (
        b"POST /predict?invert=sometimes HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    answer, _ = reply_to(server, head + body)  # read until the server closes the kept-alive connection
    assert answer.startswith(b"HTTP/1.1 422"), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, answer


def streamed(
    server: ServerProcess, start: bytes, piece: bytes, for_s: float, pause_s: float = 0.0
) -> tuple[bytes, float, int]:
    """Send `start`, then `piece` again and again for up to `for_s` (as fast as the server reads,
    or every `pause_s`) until the server closes; what it answered, how long the connection lived
    and how many bytes were sent."""
    started = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=for_s + 10) as sock:
        sock.settimeout(for_s + 10)
        try:
            sock.sendall(start)
            while time.monotonic() - started < for_s:
                sock.sendall(piece)
                sent += len(piece)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_until_closed(sock)
    return answer, time.monotonic() - started, sent


def test_a_header_line_that_never_ends_is_refused_as_it_arrives(server: ServerProcess) -> None:
    """The parser buffers a line until it ends: the bytes that have not ended one are counted."""
    answer, lived, sent = streamed(server, b"GET /healthz HTTP/1.1\r\nX-Long: ", b"a" * 16384, for_s=SLOW * 3)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"a request header or trailer line over 65536 bytes" in answer
    assert lived < SLOW, f"closed after {lived:.1f} s ({sent} bytes): by the head's timeout, not its size"


def test_a_trailer_line_that_never_ends_is_cut_off_as_it_arrives(server: ServerProcess) -> None:
    """A request that needs no body is answered at once; a chunked body's trailer line that never
    ends is cut off by its size, long before any timeout."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: "
    answer, lived, sent = streamed(server, head, b"a" * 16384, for_s=SLOW * 3)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # closed, with no second answer to confuse it
    assert lived < SLOW, f"closed after {lived:.1f} s ({sent} bytes): by a timeout, not the line's size"


def test_a_body_trickled_after_the_answer_is_cut_off_by_the_body_timeout(server: ServerProcess) -> None:
    """Answered before its body (a route that never reads it), the request is still not whole:
    chunks trickling in keep it from idling, so the body's own deadline closes it."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer, lived, _ = streamed(server, head, b"1\r\na\r\n", for_s=SLOW * 4, pause_s=0.2)
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1 ") == 1, answer[:300]
    assert SLOW - 0.2 < lived < SLOW + 2.0
