"""The one load loop: clients that POST one digit to /predict again and again, each sending its next
request once its last is answered, and a tally of every answer. `predict_load` for a test on the
event loop (or under asyncio.run); `load_meanwhile` runs it on a thread of its own while a
synchronous test does something under load."""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from tests.uploads import image_file

# After a request that got no answer (a refused connection, say) a client waits this long before its
# next: a server that is down is not asked thousands of times a second.
PAUSE_AFTER_ERROR_S = 0.01


@dataclass
class Tally:
    """Every answer of a load in the order it came: its status code, or the name of the httpx error
    where no answer came; and the model version of each 200. It fills while the load runs."""

    outcomes: list[int | str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # its counts: the lists run to thousands of answers
        return f"Tally({self.statuses})"

    @property
    def statuses(self) -> dict[int | str, int]:
        return dict(Counter(self.outcomes))

    @property
    def ok(self) -> int:
        return self.outcomes.count(200)

    @property
    def failed(self) -> int:
        return len(self.outcomes) - self.ok


async def predict_load(
    server: str | httpx.AsyncClient,
    body: bytes,
    clients: int = 1,
    requests: int | None = None,
    seconds: float | None = None,
    until: Callable[[], bool] = lambda: False,
    tally: Tally | None = None,
) -> Tally:
    """`clients` clients POST `body` to /predict until `requests` are sent in all, `seconds` pass, or
    `until()` holds. `server` is a URL (each client then keeps a connection of its own) or a client
    to share (an app in this process, or connection limits of the test's choosing). Every answer is
    counted in `tally` (a new one by default), which is returned."""
    tally = Tally() if tally is None else tally
    stop_at = time.monotonic() + seconds if seconds is not None else float("inf")
    left = [float("inf") if requests is None else requests]

    async def send(http: httpx.AsyncClient) -> None:
        while left[0] > 0 and time.monotonic() < stop_at and not until():
            left[0] -= 1
            try:
                response = await http.post("/predict", files=image_file(body))
            except httpx.HTTPError as exc:
                tally.outcomes.append(type(exc).__name__)
                await asyncio.sleep(PAUSE_AFTER_ERROR_S)
                continue
            if response.status_code == 200:
                tally.versions.append(response.json()["model_version"])
            tally.outcomes.append(response.status_code)

    async def own_client(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await send(http)

    if isinstance(server, httpx.AsyncClient):
        await asyncio.gather(*(send(server) for _ in range(clients)))
    else:
        await asyncio.gather(*(own_client(server) for _ in range(clients)))
    return tally


@contextmanager
def load_meanwhile(url: str, body: bytes, clients: int = 1) -> Iterator[Tally]:
    """`predict_load` on a thread of its own for as long as the `with` block runs; the tally it
    yields fills meanwhile. An error that stops the load is raised here when the block ends."""
    tally, stop = Tally(), threading.Event()
    with ThreadPoolExecutor(1) as thread:
        load = predict_load(url, body, clients, until=stop.is_set, tally=tally)
        running = thread.submit(asyncio.run, load)
        try:
            yield tally
        finally:
            stop.set()
            running.result()
