"""Closed-loop clients for the reliability tests: each sends /predict requests one after another."""

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Tally:
    statuses: dict[int | str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def count(self, outcome: int | str) -> None:
        self.statuses[outcome] = self.statuses.get(outcome, 0) + 1

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def failed(self) -> int:
        return sum(count for outcome, count in self.statuses.items() if outcome != 200)


async def predict_load(
    url: str, body: bytes, clients: int, requests: int | None = None, seconds: float | None = None
) -> Tally:
    """`clients` keep-alive clients POST /predict until `requests` are sent or `seconds` pass."""
    tally = Tally()
    stop_at = time.monotonic() + seconds if seconds is not None else float("inf")
    left = [requests if requests is not None else 10**12]

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while left[0] > 0 and time.monotonic() < stop_at:
                left[0] -= 1
                started = time.perf_counter()
                try:
                    response = await http.post("/predict", files={"file": ("d.png", body, "image/png")})
                    tally.count(response.status_code)
                except httpx.HTTPError as exc:
                    tally.count(type(exc).__name__)
                tally.latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client() for _ in range(clients)))
    return tally


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def workers_of(pid: int) -> list[int]:
    """uvicorn's server processes under `pid` (spawned by multiprocessing; not its resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in command:
                found.append(int(entry))
    return found
