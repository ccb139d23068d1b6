"""Uploaded image bytes -> the normalised tensor the network was trained on (its input, as
models/signature.py describes it).

MNIST digits are light strokes on a dark background, 20x20 px inside the input's frame, centred by
their centre of mass. An upload of the frame's size is taken as already in that form (no crop, no
rescale); any other size is brought into it the way MNIST itself was made. Dark-on-light images are
inverted.
"""

import asyncio
import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from app.config import DEFAULT_MAX_JPEG_SCANS, DEFAULT_MAX_PIXELS, Settings
from app.errors import (
    BlankImage,
    DecodersBusy,
    FileTooLarge,
    ImageTooLarge,
    InvalidImage,
    NotAnImage,
    ServiceError,
)
from app.predict.uploads import Upload
from models.framing import to_mnist_frame
from models.signature import SIGNATURE

INPUT = SIGNATURE.input

T = TypeVar("T")
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
MIN_CONTRAST = 16  # grey levels between darkest and lightest pixel below which nothing is drawn

# We check the size ourselves, from the header, against MNIST_MAX_IMAGE_PIXELS, before any pixel is
# decoded; Pillow's own guard (a warning, then an error at twice its limit) would only get in the way.
Image.MAX_IMAGE_PIXELS = None
# Opening a PNG inflates its text chunks and colour profile (by default 1 MB a chunk, 64 MB in all)
# before a pixel is looked at: a 61 KB file of 60 chunks costs 0.14 s and 61 MB. A digit needs none.
PngImagePlugin.MAX_TEXT_CHUNK = 64 * 1024
PngImagePlugin.MAX_TEXT_MEMORY = 256 * 1024


@dataclass(frozen=True)
class DecodeLimits:
    """What one request may make the server decode. Cost follows pixels decoded, not upload bytes
    nor the size a header declares: a 724-byte WebP can hold 16 million pixels, a tiny TIFF can be
    stored in tiles of a billion, and a progressive JPEG passes over all of its pixels once per scan.
    The values (and their defaults) are the settings'."""

    file_bytes: int  # one encoded file
    image_pixels: int  # one image
    request_pixels: int  # all images of one request together
    inline_pixels: int  # decoded on the event loop up to this many (x scans) in all
    jpeg_scans: int  # scans of one progressive JPEG

    @classmethod
    def of(cls, settings: Settings) -> "DecodeLimits":
        return cls(
            file_bytes=settings.max_upload_bytes,
            image_pixels=settings.max_image_pixels,
            request_pixels=settings.max_request_pixels,
            inline_pixels=settings.inline_decode_pixels,
            jpeg_scans=settings.max_jpeg_scans,
        )


class Invert(StrEnum):
    """Whether to invert: `auto` guesses from the border whether the background is light."""

    AUTO = "auto"
    TRUE = "true"
    FALSE = "false"


def open_image(data: bytes, max_pixels: int, max_scans: int = DEFAULT_MAX_JPEG_SCANS) -> Image.Image:
    """Read the header only (no pixel is decoded yet) and check what decoding would cost: the
    pixels against `max_pixels`, a JPEG's scans against `max_scans`."""
    if not data:
        raise InvalidImage("the file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        if claimed := signature_of(data):  # it says what it is, but is not one: corrupt, not foreign
            raise InvalidImage(f"the {claimed} header is corrupt") from None
        raise NotAnImage(f"not an image in a supported format ({', '.join(FORMATS)})") from None
    except Exception:
        raise InvalidImage(f"the {signature_of(data) or 'image'} header is corrupt") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    if (decoded := decoded_pixels(image)) > max_pixels:
        tile_width, tile_height = tile_size(image) or image.size
        raise ImageTooLarge(
            f"the {width}x{height} TIFF is stored in {tile_width}x{tile_height} tiles, which decode "
            f"{decoded} pixels; the limit is {max_pixels} pixels"
        )
    if is_jpeg(image) and (scans := jpeg_scans(data)) > max_scans:
        raise ImageTooLarge(
            f"the JPEG holds {scans} scans, each a pass over all of its pixels; the limit is {max_scans}"
        )
    return image


def is_jpeg(image: Image.Image) -> bool:
    """JPEG data, also when an APP2 "MPF" block makes Pillow open it as MPO (whatever `formats`
    says): its first frame is decoded by libjpeg, every scan of it."""
    return image.format in ("JPEG", "MPO")


def jpeg_scans(data: bytes) -> int:
    """A JPEG's scans, counted by their start marker (0xFF 0xDA). Inside a scan's coded data every
    0xFF is followed by 0x00 or a restart marker, so the count can only err upwards, by the scans
    of a thumbnail in its EXIF data. Encoders write 1 to 3 scans, or about 10 when progressive."""
    return data.count(b"\xff\xda")


def decode_cost(image: Image.Image, data: bytes) -> int:
    """Pixels decoded, times the passes over them: what deciding where to decode weighs."""
    passes = jpeg_scans(data) if is_jpeg(image) else 1
    return decoded_pixels(image) * max(1, passes)


def tile_size(image: Image.Image) -> tuple[int, int] | None:
    """A tiled TIFF's tile width and height (TIFF tags 322 and 323), else None."""
    if image.format != "TIFF":
        return None
    width, height = image.tag_v2.get(322), image.tag_v2.get(323)  # type: ignore[attr-defined]
    return (int(width), int(height)) if width and height else None


def decoded_pixels(image: Image.Image) -> int:
    """The pixels a decoder produces for `image`, which its size alone does not bound: libtiff
    decodes a tiled TIFF a whole tile at a time, and tiles (up to 2**32 a side) may be far larger
    than the image they hold; a 1 MB file of a digit-sized image can inflate 1 GiB. Strips need no
    such care (libtiff cuts a strip's rows at the image's height), nor do the other formats (each
    decodes into a buffer of the size its header declares)."""
    width, height = image.size
    tiles = tile_size(image)
    if tiles is None:
        return width * height
    tile_width, tile_height = tiles
    return -(-width // tile_width) * tile_width * -(-height // tile_height) * tile_height


# The first bytes each supported format starts with (WebP: RIFF, 4 bytes of size, then WEBP).
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def signature_of(data: bytes) -> str | None:
    """The supported format whose signature `data` starts with, if any (BMP's two letters are too
    common in other files to count)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in SIGNATURES if data.startswith(magic)), None)


def decode(image: Image.Image) -> np.ndarray:
    """Decode an opened image to a float32 H x W array of grey levels in [0, 255], upright."""
    try:
        image.load()  # GIF: the first frame
        ImageOps.exif_transpose(image, in_place=True)  # phone photos are stored sideways, with a tag
        gray = to_gray(image)
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError... for broken files
        raise InvalidImage(f"the {image.format} data is truncated or corrupt") from None
    if not np.isfinite(gray).all():  # float TIFFs can hold NaN and infinities
        raise InvalidImage("the image has pixel values that are not finite numbers (NaN or infinity)")
    return gray


def to_gray(image: Image.Image) -> np.ndarray:
    """Grey levels, with any transparency composited onto the colour that contrasts with the ink."""
    if image.mode.startswith("I;16"):
        return np.asarray(image.convert("F"), dtype=np.float32) * (255.0 / 65535.0)
    if image.mode in ("I", "F"):  # 32-bit integers or floats: no fixed range
        return levels_of(np.asarray(image, dtype=np.float64), floats=image.mode == "F")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.float32)
    gray_alpha = np.asarray(image.convert("LA"), dtype=np.float32)
    gray, alpha = gray_alpha[..., 0], gray_alpha[..., 1] / 255.0
    opaque = alpha > 0
    ink = float(gray[opaque].mean()) if opaque.any() else 0.0
    background = 255.0 if ink < 128 else 0.0  # dark ink -> light paper, light ink -> dark paper
    composited: np.ndarray = gray * alpha + background * (1.0 - alpha)
    return composited


def levels_of(values: np.ndarray, floats: bool) -> np.ndarray:
    """32-bit samples as grey levels: floats in [0, 1] scaled up, values in [0, 255] kept, any other
    range (negative, or up to 2**31) stretched onto 0-255. Non-finite values pass through, for the
    caller to refuse. float64 in: int32 extremes do not overflow."""
    if not np.isfinite(values).all():
        return values.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if floats and low >= 0.0 and high <= 1.0:
        return (values * 255.0).astype(np.float32)
    if low >= 0.0 and high <= 255.0:
        return values.astype(np.float32)
    if high == low:  # one value (below 0 or above 255): a blank image
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) * (255.0 / (high - low))).astype(np.float32)


def light_background(gray: np.ndarray) -> bool:
    """MNIST's background is dark; a light border means a dark digit on light paper."""
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(border.mean()) > 127.5


def mnist_pixels(
    data: bytes | Image.Image, invert: Invert = Invert.AUTO, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """The float32 grey levels (light digit on dark, 0-255) the model will see, of the input's size."""
    gray = decode(data if isinstance(data, Image.Image) else open_image(data, max_pixels))
    if float(gray.max() - gray.min()) < MIN_CONTRAST:
        raise BlankImage("the image is blank: no digit found on it")
    if invert is Invert.TRUE or (invert is Invert.AUTO and light_background(gray)):
        gray = 255.0 - gray
    if gray.shape != INPUT.size:
        gray = to_mnist_frame(gray - gray.min())
    return gray


def model_input(levels: np.ndarray, rows: int) -> torch.Tensor:
    """`rows` images of grey levels 0-255 (any numeric dtype, flat or shaped) as the network's input:
    rows x channels x height x width float32, normalised as in training. `levels` is left as it is."""
    return INPUT.normalize(torch.from_numpy(levels.reshape(INPUT.shape(rows)).astype(np.float32)))


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """One image's grey levels as the network's input for it: channels x height x width."""
    return model_input(pixels, 1)[0]


def preprocess(
    data: bytes, invert: Invert = Invert.AUTO, max_pixels: int = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Image bytes -> the normalised input for one image, or a 4xx-mapped error saying what is wrong."""
    return to_tensor(mnist_pixels(data, invert, max_pixels))


def png_data_url(pixels: np.ndarray) -> str:
    """An image's grey levels as a PNG data URL: what the model saw, for people to look at."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class Decoder:
    """Turns a request's encoded images into the model's input, within DecodeLimits: sizes are
    checked first (the files' bytes, then the pixels their headers declare); a few small images are
    decoded on the event loop (less than a thread hand-off would cost), anything larger on a thread,
    at most `concurrency` requests at a time per process, so big images can neither multiply memory
    nor stall the loop. A request waits for a thread at most `wait_s`, then gets a 503: slow decodes
    ahead of it cannot hold it for their whole time."""

    def __init__(self, limits: DecodeLimits, concurrency: int, wait_s: float) -> None:
        self.limits, self.wait_s = limits, wait_s
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)

    async def decode(
        self, uploads: list[Upload], invert: Invert, *, batch: bool
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """The model's input stack and each image as the model sees it, in upload order; a bad file
        fails the request and, in a batch (even of one), is named by its index and filename."""
        return await self.decode_bytes(
            [upload.data for upload in uploads],
            invert,
            lambda error, index: error.in_file(index, uploads[index].filename) if batch else error,
        )

    async def decode_bytes(
        self, files: list[bytes], invert: Invert, naming: Callable[[ServiceError, int], ServiceError]
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """The same for encoded files as bytes: an error about file `index` is answered as
        `naming(error, index)` says."""
        for index, data in enumerate(files):
            if len(data) > self.limits.file_bytes:
                too_large = FileTooLarge(f"file is larger than the limit of {self.limits.file_bytes} bytes")
                raise naming(too_large, index)
        opened = []
        for index, data in enumerate(files):
            try:
                opened.append(open_image(data, self.limits.image_pixels, self.limits.jpeg_scans))
            except ServiceError as error:
                raise naming(error, index) from None
        total = sum(decoded_pixels(image) for image in opened)
        if total > self.limits.request_pixels:
            raise ImageTooLarge(
                f"the images hold {total} pixels together; the limit per request is "
                f"{self.limits.request_pixels}"
            )
        cost = sum(decode_cost(image, data) for image, data in zip(opened, files, strict=True))

        def run() -> tuple[torch.Tensor, list[np.ndarray]]:
            images = []
            for index, image in enumerate(opened):
                try:
                    images.append(mnist_pixels(image, invert))
                except ServiceError as error:
                    raise naming(error, index) from None
            return model_input(np.stack(images), len(images)), images

        if cost <= self.limits.inline_pixels:
            return run()
        return await self.off_loop(run)

    async def off_loop(self, work: Callable[[], T]) -> T:
        """Heavy request work (large decodes, large JSON) on a thread, a bounded number at a time."""
        try:
            async with asyncio.timeout(self.wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise DecodersBusy(
                f"all {self._concurrency} decoding threads stayed busy for {self.wait_s:g} s; "
                "try again shortly"
            ) from None
        # The thread runs on if the caller is cancelled (a client gone, a deadline passed): its slot
        # is given back when the work ends, not before, so cancelled calls cannot pile work up.
        running = asyncio.ensure_future(asyncio.to_thread(work))
        running.add_done_callback(lambda _: self._slots.release())
        return await asyncio.shield(running)
