"""What one request may cost the server: pixels, multipart parts, JSON bodies and error answers are
bounded before the work is done, and big decodes never stall the event loop."""

import asyncio
import base64
import io
import threading
import time
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from app.predict import preprocess
from app.predict.preprocess import Invert
from tests.asgi import Serve
from tests.images import encode, saved, scan_bomb, tile_bomb
from tests.uploads import image_file

MULTIPART = {"content-type": "multipart/form-data; boundary=b"}


def big_digit_png(mode: str = "RGBA", size: int = 2048) -> bytes:
    """A 2048x2048 image with a bar drawn on it: 21 KB of PNG, 0.2 s of decoding as RGBA."""
    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[size // 2 - 100 : size // 2 + 100, size // 2 - 20 : size // 2 + 20] = 255
    return saved(Image.fromarray(pixels).convert(mode))


def batch_of(bodies: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{index}.png", body, "image/png")) for index, body in enumerate(bodies)]


async def test_pixels_of_a_whole_request_are_bounded(api: httpx.AsyncClient) -> None:
    """Each image is within the 2048x2048 limit; five of them are not, together."""
    big = big_digit_png("L")
    response = await api.post("/predict/batch", files=batch_of([big] * 5))
    assert response.status_code == 413
    assert "20971520 pixels together; the limit per request is 16777216" in response.json()["detail"]
    assert (await api.post("/predict/batch", files=batch_of([big] * 2))).status_code == 200


async def test_decode_bombs_are_refused_from_their_headers_on_every_route(
    api: httpx.AsyncClient, digit: bytes
) -> None:
    """A 28x28 TIFF stored in one 4096x4096 tile (16 MB of pixels in 16 KB), and a JPEG of 101
    scans: 413 before a pixel is decoded, on /predict, in a batch (naming the file) and as the v2
    protocol's image input, which shares the decoder."""
    tiles = tile_bomb(28, 28, 4096)
    scans = scan_bomb(encode(np.asarray(Image.open(io.BytesIO(digit))), "JPEG", progressive=True), 101)
    for body, said in ((tiles, "4096x4096 tiles, which decode 16777216 pixels"), (scans, "holds 101 scans")):
        single = await api.post("/predict", files=image_file(body, "bomb"))
        assert single.status_code == 413 and said in single.json()["detail"], single.text
        batch = await api.post("/predict/batch", files=batch_of([digit, body]))
        assert batch.status_code == 413 and batch.json()["detail"].startswith("files[1] (1.png): ")
        v2 = await api.post(
            "/v2/models/mnist/infer",
            json={
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": [base64.b64encode(body).decode()],
                    }
                ]
            },
        )
        assert v2.status_code == 413 and v2.json()["error"].startswith("image[0]: ") and said in v2.text
    assert (await api.post("/predict", files=image_file(digit))).status_code == 200


async def test_a_file_past_the_upload_limit_is_refused_on_every_route(
    api: httpx.AsyncClient, digit: bytes
) -> None:
    """One byte past MNIST_MAX_UPLOAD_BYTES (1 MiB here), in a body with room for it: 413 on
    /predict, in a batch and as the v2 protocol's image input (naming the file in both), which share
    the decoder's check; a file of exactly the limit is decoded (a PNG's trailing bytes are ignored)."""
    limit = 1024 * 1024
    at_limit = digit + bytes(limit - len(digit))
    over = at_limit + b"\0"
    assert (await api.post("/predict", files=image_file(at_limit))).status_code == 200
    single = await api.post("/predict", files=image_file(over))
    assert single.status_code == 413
    assert single.json()["detail"] == f"file is larger than the limit of {limit} bytes"
    batch = await api.post("/predict/batch", files=batch_of([digit, over]))
    assert batch.status_code == 413
    assert batch.json()["detail"] == f"files[1] (1.png): file is larger than the limit of {limit} bytes"
    images = [base64.b64encode(data).decode() for data in (digit, over)]
    v2 = await api.post(
        "/v2/models/mnist/infer",
        json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": images}]},
    )
    assert v2.status_code == 413
    assert v2.json()["error"] == f"image[1]: file is larger than the limit of {limit} bytes"


async def test_big_decodes_leave_the_event_loop_free(api: httpx.AsyncClient) -> None:
    """Small in bytes (3 x 21 KB), large in pixels (3 x 2048x2048): decoded on a thread, so the
    loop keeps its rhythm. Inline, each of these requests would hold it for about 0.6 s."""
    body = big_digit_png("RGBA")
    gaps = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        answers = await asyncio.gather(
            *(api.post("/predict/batch", files=batch_of([body] * 3)) for _ in range(6))
        )
    finally:
        ticker.cancel()
    assert [answer.status_code for answer in answers] == [200] * 6
    print(f"longest event-loop stall: {max(gaps) * 1000:.0f} ms")
    assert max(gaps) < 0.3, f"the event loop stalled for {max(gaps):.2f} s"


async def test_multipart_parts_are_counted_while_parsing(api: httpx.AsyncClient, digit: bytes) -> None:
    empty_parts = b"--b\r\n\r\n\r\n" * 1_500_000 + b"--b--\r\n"  # 13.5 MB of nothing
    response = await api.post("/predict/batch", content=empty_parts, headers=MULTIPART)
    assert response.status_code == 413
    assert "more than 72 parts" in response.json()["detail"]
    response = await api.post("/predict", content=b"--b\r\n\r\n\r\n" * 10 + b"--b--\r\n", headers=MULTIPART)
    assert response.status_code == 413
    assert "more than 9 parts" in response.json()["detail"]
    headers = b"".join(b"X-%d: y\r\n" % index for index in range(20))  # python-multipart's bound
    many_headers = b"--b\r\n" + headers + b"\r\ndata\r\n--b--\r\n"
    response = await api.post("/predict", content=many_headers, headers=MULTIPART)
    assert response.status_code == 400
    assert response.json()["detail"] == "malformed multipart/form-data body: Maximum header count exceeded"


async def test_a_multipart_body_without_its_closing_boundary_is_a_400(
    api: httpx.AsyncClient, digit: bytes
) -> None:
    opened = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + digit + b"\r\n"
    )
    response = await api.post("/predict", content=opened, headers=MULTIPART)
    assert response.status_code == 400
    assert "closing boundary" in response.json()["detail"]
    assert (await api.post("/predict", content=opened + b"--b--\r\n", headers=MULTIPART)).status_code == 200


async def test_train_bodies_are_bounded_and_never_echoed(api: httpx.AsyncClient) -> None:
    secret = "S" * 10_000
    response = await api.post("/train", json={"epochs": secret})
    assert response.status_code == 422
    assert secret[:100] not in response.text and len(response.content) < 1024
    assert response.json()["errors"][0] == {
        "loc": ["body", "epochs"],
        "msg": "Input should be a valid integer, unable to parse string as an integer",
        "type": "int_parsing",
    }
    response = await api.post("/train", json={"k" * 5000: 1})  # an unknown field: its name is cut short
    assert response.status_code == 422
    assert len(response.content) < 1024
    assert response.json()["errors"][0]["loc"] == ["body", "k" * 64]
    response = await api.post("/train", json={"epochs": 1, "padding": "x" * 20_000})
    assert response.status_code == 413
    assert "16384 bytes" in response.json()["detail"]
    response = await api.post("/train", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]
    response = await api.post("/train", content=b"epochs=1", headers={"content-type": "text/plain"})
    assert response.status_code == 415


async def test_every_error_has_a_string_detail(api: httpx.AsyncClient, digit: bytes) -> None:
    """One shape for all errors; a 422 for bad parameters also lists them, without their values."""
    response = await api.post("/predict", files=image_file(digit), params={"invert": "sometimes"})
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "query.invert: Input should be 'auto', 'true' or 'false'"
    assert body["errors"] == [
        {"loc": ["query", "invert"], "msg": "Input should be 'auto', 'true' or 'false'", "type": "enum"}
    ]
    assert "sometimes" not in response.text


async def test_a_token_is_checked_before_the_body_is_read(serve: Serve) -> None:
    """Without the token a body is never parsed: a malformed one still gets the 401, not a 400."""
    async with serve(TRAIN_TOKEN="s3cret") as client:
        response = await client.post(
            "/train", content=b"{" * 10_000, headers={"content-type": "application/json"}
        )
        assert response.status_code == 401


async def in_chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    """A body sent chunked, with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_upload_bytes_held_at_once_are_bounded(serve: Serve, digit: bytes) -> None:
    """Upload bytes count from their arrival until their request is answered; past
    MNIST_MAX_BUFFERED_BYTES, a request gets a 503 to retry, and every byte is given back."""
    budget, batch = 1024 * 1024 + 64 * 1024, 1024 * 1024 - 16 * 1024
    # One client sends both (its share is the whole budget here; the share has tests of its own).
    small = {"CLIENT_SHARE": "1", "GRPC_MAX_MESSAGE_BYTES": str(64 * 1024)}
    async with serve(MAX_BUFFERED_BYTES=str(budget), MAX_BATCH_BYTES=str(batch), **small) as client:
        # A digit and 600 KB of another form field: two such requests do not fit at once.
        padded = [("files", ("d.png", digit, "image/png")), ("padding", (None, b"x" * 600_000))]
        answers = await asyncio.gather(*(client.post("/predict/batch", files=padded) for _ in range(2)))
        assert sorted(answer.status_code for answer in answers) == [200, 503]
        busy = next(answer for answer in answers if answer.status_code == 503)
        assert busy.headers["retry-after"] == "1"
        assert f"holding {budget} bytes of uploads already" in busy.json()["detail"]
        for _ in range(3):  # one at a time, they fit: nothing stayed held
            assert (await client.post("/predict/batch", files=padded)).status_code == 200
        # Past MNIST_MAX_BATCH_BYTES (yet within the budget), sent with no length, so the server
        # finds out as the bytes arrive: 413, and what it held of them is given back too.
        oversize = [("files", ("d.png", digit, "image/png")), ("padding", (None, b"x" * (batch + 20_000)))]
        form = httpx.Request("POST", "/", files=oversize)
        for _ in range(3):
            refused = await client.post(
                "/predict/batch",
                content=in_chunks(form.read(), 64 * 1024),
                headers={"content-type": form.headers["content-type"]},
            )
            assert refused.status_code == 413
            assert refused.json()["detail"] == f"upload is larger than the limit of {batch} bytes"
        assert (await client.post("/predict/batch", files=padded)).status_code == 200


async def test_train_bodies_are_not_held_against_the_upload_budget(serve: Serve, digit: bytes) -> None:
    """A /train body is small and bounded on its own (16 KiB): it never takes upload room."""
    budget = 1024 * 1024  # the least there is
    small = {"CLIENT_SHARE": "1", "GRPC_MAX_MESSAGE_BYTES": str(64 * 1024)}
    async with serve(
        MAX_BATCH_BYTES=str(budget - 16 * 1024), MAX_BUFFERED_BYTES=str(budget), **small
    ) as client:
        for _ in range(80):  # 80 x 15 KB: more than the budget in all
            assert (await client.post("/train", json={"padding": "x" * 15_000})).status_code == 422
        assert (await client.post("/predict", files=image_file(digit))).status_code == 200


@pytest.mark.parametrize(
    ("chunks", "chars"),
    [(1, 200_000), (1_000, 60_000)],
    ids=["one-chunk-past-64-KB", "chunks-past-256-KB-in-all"],
)
async def test_png_text_chunks_past_the_limits_are_refused(
    api: httpx.AsyncClient, chunks: int, chars: int
) -> None:
    """Pillow inflates text chunks while opening a file, before any pixel count is checked, and its own
    limits (1 MB a chunk, 64 MB in all) let a 107 KB file inflate to 60 MB. Each case here passes one
    of the two limits the server sets, and only that one."""
    info = PngImagePlugin.PngInfo()
    for number in range(chunks):
        info.add_text(f"comment {number}", "a" * chars, zip=True)
    bomb = saved(Image.fromarray(np.full((28, 28), 200, dtype=np.uint8)), pnginfo=info)
    assert len(bomb) < 120_000
    response = await api.post("/predict", files=image_file(bomb))
    assert (response.status_code, response.json()["detail"]) == (400, "the PNG header is corrupt")


async def test_thread_decodes_are_capped_per_process(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six requests of big images at once: no more than MNIST_DECODE_THREADS of them decode at a
    time (each decode is watched, and held a little, to see them overlap), and all are answered."""
    real = preprocess.mnist_pixels
    lock, running, most = threading.Lock(), [0], [0]

    def watched(data: object, invert: Invert = Invert.AUTO) -> np.ndarray:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)
            return real(data, invert)  # type: ignore[arg-type]
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(preprocess, "mnist_pixels", watched)
    body = big_digit_png("L", size=512)  # 262,144 pixels: past the inline limit, so on a thread
    async with serve(DECODE_THREADS="2") as client:
        answers = await asyncio.gather(*(client.post("/predict", files=image_file(body)) for _ in range(6)))
    assert [answer.status_code for answer in answers] == [200] * 6
    assert most[0] == 2


async def test_v2_errors_quote_what_the_client_sent_cut_short(api: httpx.AsyncClient) -> None:
    """A name of a million characters is named in 64 of them: no answer echoes a request back."""
    long = "x" * 1_000_000
    digit = {"name": "pixels", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}
    cases = [
        ({"inputs": [{**digit, "name": long}]}, "unknown input 'xxxx"),
        ({"inputs": [{**digit, "datatype": long}]}, "must be UINT8, got 'xxxx"),
        ({"inputs": [digit], "outputs": [{"name": long}]}, "unknown output 'xxxx"),
        (
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": ["aGk="],
                        "parameters": {"invert": long},
                    }
                ]
            },
            "must be auto, true or false, got 'xxxx",
        ),
        ({"inputs": [{**digit, "shape": [1] * 100_000}]}, "(100000 dimensions)"),
    ]
    for body, said in cases:
        answer = await api.post("/v2/models/mnist/infer", json=body)
        assert answer.status_code == 400 and said in answer.json()["error"], answer.text[:300]
        assert len(answer.content) < 1000, len(answer.content)
    answer = await api.post(f"/v2/models/{'m' * 10_000}/infer", json={"inputs": [digit]})
    assert answer.status_code == 404 and "(10000 characters)" in answer.json()["error"]
    assert len(answer.content) < 1000


async def test_a_v2_json_request_is_checked_for_what_it_declares_before_its_data_is_converted(
    api: httpx.AsyncClient,
) -> None:
    """Rows past the limit are a 413 from the shape: the data (here not even valid base64, which
    converting would have found first) is never turned into arrays or decoded."""
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2000], "data": ["!!!"] * 2000}]}
    answer = await api.post("/v2/models/mnist/infer", json=body)
    assert answer.status_code == 413, answer.text
    assert "2000 images in one request; at most 1024" in answer.json()["error"]
