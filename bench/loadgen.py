"""A closed-loop HTTP load generator in Python, for machines without `wrk`.

Each client is one keep-alive connection that sends the same request, reads the whole answer and
sends again, as `wrk -c N` does. Clients are spread over several processes, each running its own
event loop (uvloop when installed), so the generator is not the bottleneck on a machine with
cores to spare. Only the standard library is needed.

    python -m bench.loadgen --port 8000 --path /predict --body body.bin --content-type ... -c 64 -d 5
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class LoadResult:
    """Requests per second, latency percentiles (ms) and failures over one measurement."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def build_request(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one whole HTTP/1.1 response with a Content-Length body; return its status code.

    The servers measured here always send Content-Length; a chunked answer counts as a failure."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked responses are not read")
    if length:
        await reader.readexactly(length)
    return status


async def client(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float], failures: list[int]
) -> None:
    """One connection sending `request` back to back until `deadline`; reconnects after an error."""
    writer = None
    while time.perf_counter() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            started = time.perf_counter()
            writer.write(request)
            status = await asyncio.wait_for(read_response(reader), timeout=30)
            if 200 <= status < 300:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(status)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
            IndexError,
        ):
            failures.append(0)
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def run_clients(
    host: str, port: int, request: bytes, clients: int, duration_s: float
) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    failures: list[int] = []
    started = time.perf_counter()
    deadline = started + duration_s
    await asyncio.gather(
        *(client(host, port, request, deadline, latencies, failures) for _ in range(clients))
    )
    return latencies, failures, time.perf_counter() - started


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed and works, else asyncio's own."""
    try:
        import uvloop  # type: ignore[import-not-found]

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    except Exception:
        return None


def worker(
    host: str,
    port: int,
    request: bytes,
    clients: int,
    duration_s: float,
    out: "multiprocessing.Queue[object]",
) -> None:
    """One process of clients; puts ("ok", measurements) or ("error", what went wrong) on `out`."""
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            out.put(("ok", runner.run(run_clients(host, port, request, clients, duration_s))))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))
        raise


def default_processes(concurrency: int) -> int:
    """About one process per 16 clients, at most half the cores (the server needs the rest)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min((concurrency + 15) // 16, cores // 2 or 1))


def load(
    port: int,
    path: str,
    body: bytes,
    content_type: str,
    concurrency: int,
    duration_s: float,
    host: str = "127.0.0.1",
    processes: int | None = None,
) -> LoadResult:
    """`concurrency` closed-loop clients against host:port for `duration_s` seconds."""
    request = build_request(host, port, path, body, content_type)
    procs = processes or default_processes(concurrency)
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[object] = context.Queue()
    workers = [
        context.Process(target=worker, args=(host, port, request, n, duration_s, out), daemon=True)
        for n in shares
    ]
    for process in workers:
        process.start()
    latencies: list[float] = []
    failures = 0
    elapsed = 0.0
    try:
        for _ in workers:
            kind, payload = out.get(timeout=duration_s + 60)  # type: ignore[misc]
            if kind == "error":
                raise RuntimeError(f"a load generator process failed: {payload}")
            lat, fail, seconds = payload
            latencies.extend(lat)
            failures += len(fail)
            elapsed = max(elapsed, seconds)
    finally:
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    if not latencies:
        return LoadResult(0.0, float("nan"), float("nan"), failures, 0)
    cuts = (
        statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    )
    return LoadResult(
        rps=len(latencies) / elapsed,
        p50_ms=cuts[49] * 1e3,
        p99_ms=cuts[98] * 1e3,
        errors=failures,
        requests=len(latencies),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--content-type", required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--processes", type=int)
    args = parser.parse_args()
    with open(args.body, "rb") as f:
        body = f.read()
    result = load(
        args.port,
        args.path,
        body,
        args.content_type,
        args.concurrency,
        args.duration,
        args.host,
        args.processes,
    )
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
