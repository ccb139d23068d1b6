"""Handing memory back to the operating system after large gRPC messages.

grpc.aio reads a message into many buffers, some kept alive by reference cycles in its abort path
until a full collection, and glibc's allocator keeps what is freed: after hundreds of calls of a
few megabytes a process holds gigabytes it no longer uses. So after a large message the process
collects cycles and asks glibc to return what is free (`malloc_trim`), at most once a second, on a
thread (the collection holds the GIL for some milliseconds; the trim does not). Where the C library
has no `malloc_trim` (musl, macOS), only the collection runs."""

import asyncio
import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

LARGE_MESSAGE = 1024 * 1024  # smaller ones are served from memory the allocator reuses anyway


def malloc_trim() -> Callable[[], object]:
    """glibc's malloc_trim(0), or a no-op where the C library has none."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def give_back(trim: Callable[[], object]) -> None:
    gc.collect()
    trim()


class Trimmer:
    """Gives memory back after large messages, at most once every `interval_s`, one at a time."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s, self.trim = interval_s, malloc_trim()
        self._last = float("-inf")
        self._running: asyncio.Future[None] | None = None

    def after(self, message_bytes: int) -> None:
        """Called when a message of this size is done with."""
        now = time.monotonic()
        if message_bytes < LARGE_MESSAGE or now - self._last < self.interval_s:
            return
        if self._running is not None and not self._running.done():
            return
        self._last = now
        self._running = asyncio.ensure_future(asyncio.to_thread(give_back, self.trim))
