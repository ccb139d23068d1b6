"""Sending image files the way clients do: one multipart field per file, many requests at once."""

import asyncio

import httpx


def image_file(body: bytes, name: str = "digit.png") -> dict[str, tuple[str, bytes, str]]:
    """The `files` argument of one /predict upload."""
    return {"file": (name, body, "image/png")}


async def post_all(
    client: httpx.AsyncClient, bodies: list[bytes], concurrency: int = 32
) -> list[httpx.Response]:
    """POST /predict once per body, `concurrency` at a time, answers in the order of `bodies`."""
    limit = asyncio.Semaphore(concurrency)

    async def one(body: bytes) -> httpx.Response:
        async with limit:
            return await client.post("/predict", files=image_file(body))

    return await asyncio.gather(*(one(body) for body in bodies))
