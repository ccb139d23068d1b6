"""Property-based fuzzing of what /predict decodes, over real HTTP: random bytes, and random valid
images of every Pillow mode, size and supported format (float samples with NaN and infinities
included). Never a 5xx, and never a number in an answer that JSON cannot hold."""

import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.images import saved
from tests.reliability.scale import scaled
from tests.server import ServerProcess

# Bytes per pixel of each mode Image.frombytes takes ("1" packs 8 pixels in a byte).
MODES = {
    "1": 0,
    "L": 1,
    "LA": 2,
    "P": 1,
    "RGB": 3,
    "RGBA": 4,
    "CMYK": 4,
    "YCbCr": 3,
    "I": 4,
    "I;16": 2,
    "F": 4,
}
FORMATS = ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"]
FUZZ = settings(max_examples=scaled(150, 2000), deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30)


def refuse_non_finite(constant: str) -> None:
    raise AssertionError(f"the answer holds {constant}, which is not JSON")


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    body = json.loads(response.text, parse_constant=refuse_non_finite)
    if response.status_code == 200:
        for prediction in body.get("predictions", [body]):
            assert len(prediction["probs"]) == 10 and abs(sum(prediction["probs"]) - 1) < 1e-4
    else:
        assert response.status_code in (400, 413, 415, 422) and isinstance(body["detail"], str)


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """Random bytes as pixels: for mode F that includes NaN and infinities (1 sample in 128)."""
    size = (width + 7) // 8 * height if mode == "1" else width * height * MODES[mode]
    return Image.frombytes(mode, (width, height), np.random.default_rng(seed).bytes(size))


def encoded(image: Image.Image, fmt: str) -> bytes | None:
    try:
        return saved(image, fmt)
    except (OSError, KeyError, ValueError, TypeError):
        return None  # a mode this format cannot store


# Each mode with the formats that can store it, so every drawn pair is a real file.
STORABLE = {
    mode: [fmt for fmt in FORMATS if encoded(random_image(mode, 4, 4, 0), fmt) is not None] for mode in MODES
}


@st.composite
def image_files(draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(STORABLE[mode]))
    width, height = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    data = encoded(random_image(mode, width, height, draw(st.integers(0, 2**32 - 1))), fmt)
    assume(data is not None)
    assert data is not None
    return data


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(client: httpx.Client, data: bytes) -> None:
    check_answer(client.post("/predict", files={"file": ("x", data, "application/octet-stream")}))


@FUZZ
@given(data=image_files(), invert=st.sampled_from(["auto", "true", "false"]))
def test_random_images_of_every_mode_size_and_format(client: httpx.Client, data: bytes, invert: str) -> None:
    response = client.post("/predict", files={"file": ("x", data, "image/png")}, params={"invert": invert})
    check_answer(response)


@FUZZ
@given(images=st.lists(image_files(), min_size=1, max_size=8))
def test_random_batches(client: httpx.Client, images: list[bytes]) -> None:
    files = [("files", (f"{index}.img", data, "image/png")) for index, data in enumerate(images)]
    check_answer(client.post("/predict/batch", files=files))
