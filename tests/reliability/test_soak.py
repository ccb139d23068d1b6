"""A soak: many predictions through one server process, its memory measured after a warm-up and at
the end. Every answer is a 200 and memory stays flat."""

import asyncio

from tests.images import encode
from tests.load import predict_load
from tests.reliability.scale import scaled
from tests.server import ServerProcess
from tests.tools import rss_mib
from training.data import Mnist

GROWTH_BOUND_MIB = 30


def test_memory_stays_flat_under_a_long_run(server: ServerProcess, mnist: Mnist) -> None:
    assert server.process is not None
    body = encode(mnist.test_images[0])
    requests = scaled(3000, 60000)
    warm = asyncio.run(predict_load(server.url, body, clients=16, requests=requests // 10))
    before = rss_mib(server.process.pid)
    tally = asyncio.run(predict_load(server.url, body, clients=16, requests=requests))
    after = rss_mib(server.process.pid)
    print(f"soak: {warm.ok + tally.ok} requests, RSS {before:.1f} -> {after:.1f} MiB after the warm-up")
    assert warm.failed == tally.failed == 0, tally.statuses
    assert after - before < GROWTH_BOUND_MIB
