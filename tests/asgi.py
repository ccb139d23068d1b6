"""The app in this process: `create_app(Settings(...))` with its lifespan running, reached through
httpx's ASGI transport. No socket and no second process, so API behaviour is tested in milliseconds;
what needs real processes (several workers, signals, training jobs, hot swap) stays in tests/e2e."""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx

from app.config import Settings
from app.main import create_app

# `async with serve(checkpoint, SETTING="value") as client:` (the api tests' `serve` fixture)
Serve = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def settings_from(env: dict[str, str]) -> Settings:
    """The Settings a server started with these MNIST_* variables would read."""
    return Settings(**{key.removeprefix("MNIST_").lower(): value for key, value in env.items()})


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a freshly started app; the app shuts down (lifespan and all) on exit. Whatever
    the test sent, the app must not have answered 500 by then."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://mnist-serve", timeout=30
        ) as client:
            yield client
            assert not await answered(client, "500"), "the app answered 500"


async def answered(client: httpx.AsyncClient, status: str) -> bool:
    """Whether the app ever answered a status starting with `status` (its own metrics count every
    response by status)."""
    return f'status="{status}' in (await client.get("/metrics")).text
