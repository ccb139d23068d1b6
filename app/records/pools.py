"""Thread pools for blocking record and store calls, and the async twins of the methods that make
them. Each kind of call has a pool of its own: a database that hangs cannot take the threads that
decode uploads (asyncio's default pool) away from /predict, and a slow model store cannot delay
the heartbeats and check-ins that run on the records' threads. The class that owns a method says
which pool its twin runs on, so no caller chooses."""

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")


class Threads:
    """A small thread pool of its own for blocking calls of one kind, awaited from the event loop."""

    def __init__(self, size: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(size, thread_name_prefix=name)

    async def run(self, call: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(call, *args, **kwargs))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def off_loop(
    pool: str,
) -> Callable[[Callable[Concatenate[S, P], T]], Callable[Concatenate[S, P], Awaitable[T]]]:
    """`aname = on_records(name)`: an async twin of a blocking method, run on the `Threads` its
    instance holds as the attribute `pool`."""

    def twin_of(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], Awaitable[T]]:
        async def twin(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
            threads: Threads = getattr(self, pool)
            return await threads.run(method, self, *args, **kwargs)

        functools.update_wrapper(twin, method)
        twin.__name__ = twin.__qualname__ = f"a{method.__name__}"
        return twin

    return twin_of


# Record calls (the database), and model-store calls (downloads, uploads, hashing weights).
on_records = off_loop("records")
on_transfers = off_loop("transfers")
