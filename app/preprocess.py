"""Uploaded image bytes -> the normalised 1x28x28 tensor the network was trained on.

MNIST digits are light strokes on a dark background, 20x20 px inside a 28x28 frame, centred by
their centre of mass. A 28x28 upload is taken as already in that form (no crop, no rescale); any
other size is brought into it the way MNIST itself was made. Dark-on-light images are inverted.
"""

import asyncio
import base64
import io
from enum import StrEnum

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from app.errors import BlankImage, ImageTooLarge, InvalidImage, NotAnImage, ServiceError
from app.uploads import Upload
from models.constants import IMAGE_SIZE, MNIST_MEAN, MNIST_STD

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
DIGIT_BOX = 20  # MNIST scaled each digit so its longer side is 20 px
MIN_CONTRAST = 16  # grey levels between darkest and lightest pixel below which nothing is drawn

# We check the size ourselves, from the header, against MNIST_MAX_IMAGE_PIXELS, before any pixel is
# decoded; Pillow's own guard (a warning, then an error at twice its limit) would only get in the way.
Image.MAX_IMAGE_PIXELS = None


class Invert(StrEnum):
    """Whether to invert: `auto` guesses from the border whether the background is light."""

    AUTO = "auto"
    TRUE = "true"
    FALSE = "false"


def decode_gray(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode any supported format to a float32 H x W array of grey levels in [0, 255]."""
    if not data:
        raise InvalidImage("the file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise NotAnImage(f"not an image in a supported format ({', '.join(FORMATS)})") from None
    except Exception:
        raise InvalidImage("the image header is corrupt") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    try:
        image.load()  # GIF: the first frame
        return to_gray(image)
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError... for broken files
        raise InvalidImage(f"the {image.format} data is truncated or corrupt") from None


def to_gray(image: Image.Image) -> np.ndarray:
    """Grey levels, with any transparency composited onto the colour that contrasts with the ink."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image.convert("F"), dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        return values * (255.0 / top)
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


def light_background(gray: np.ndarray) -> bool:
    """MNIST's background is dark; a light border means a dark digit on light paper."""
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(border.mean()) > 127.5


def to_mnist_frame(digit: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale the longer side to 20 px, centre by centre of mass in 28x28."""
    rows, cols = np.nonzero(digit > 0.25 * float(digit.max()))
    crop = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = crop.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    small = np.clip(small, 0.0, 255.0)
    mass = small.sum()
    ys, xs = np.indices(small.shape)
    centre_y, centre_x = (ys * small).sum() / mass, (xs * small).sum() / mass
    top = int(np.clip(round(IMAGE_SIZE / 2 - centre_y), 0, IMAGE_SIZE - small.shape[0]))
    left = int(np.clip(round(IMAGE_SIZE / 2 - centre_x), 0, IMAGE_SIZE - small.shape[1]))
    frame = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    return frame


def mnist_pixels(data: bytes, invert: Invert = Invert.AUTO, max_pixels: int = 4096 * 4096) -> np.ndarray:
    """The 28x28 float32 grey levels (light digit on dark, 0-255) the model will see."""
    gray = decode_gray(data, max_pixels)
    if float(gray.max() - gray.min()) < MIN_CONTRAST:
        raise BlankImage("the image is blank: no digit found on it")
    if invert is Invert.TRUE or (invert is Invert.AUTO and light_background(gray)):
        gray = 255.0 - gray
    if gray.shape != (IMAGE_SIZE, IMAGE_SIZE):
        gray = to_mnist_frame(gray - gray.min())
    return gray


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """ToTensor's scaling and the training Normalize: 1 x 28 x 28 float32."""
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).unsqueeze(0)
    return x.div(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)  # div, not div_: `pixels` stays as it is


def preprocess(data: bytes, invert: Invert = Invert.AUTO, max_pixels: int = 4096 * 4096) -> torch.Tensor:
    """Image bytes -> normalised 1 x 28 x 28 tensor, or a 4xx-mapped error saying what is wrong."""
    return to_tensor(mnist_pixels(data, invert, max_pixels))


def png_data_url(pixels: np.ndarray) -> str:
    """The 28x28 grey levels as a PNG data URL: what the model saw, for people to look at."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def preprocess_uploads(
    uploads: list[Upload], invert: Invert, inline_limit: int, max_pixels: int
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Preprocess every upload: the model's input stack and each 28x28 image; small uploads are
    decoded inline, large ones on a worker thread."""

    def run() -> tuple[torch.Tensor, list[np.ndarray]]:
        images = []
        for index, upload in enumerate(uploads):
            try:
                images.append(mnist_pixels(upload.data, invert, max_pixels))
            except ServiceError as error:
                if len(uploads) == 1:
                    raise
                raise error.in_file(index, upload.filename) from None
        return torch.stack([to_tensor(image) for image in images]), images

    if sum(len(upload.data) for upload in uploads) <= inline_limit:
        return run()
    return await asyncio.to_thread(run)
