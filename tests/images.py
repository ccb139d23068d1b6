"""Real MNIST digits as the image files a client would upload."""

import io
import struct
import zlib

import numpy as np
import torch
from PIL import Image


def saved(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    """The file Pillow writes for `image` in the given format, with these save options."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def encode(pixels: np.ndarray | torch.Tensor, fmt: str = "PNG", **save: object) -> bytes:
    """Encode an 8-bit image array (H x W grey, or H x W x 3/4) in the given format."""
    array = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
    return saved(Image.fromarray(array.astype(np.uint8)), fmt, **save)


def black_on_white(digit: torch.Tensor) -> np.ndarray:
    return 255 - digit.numpy()


def larger(digit: torch.Tensor, size: int = 100) -> np.ndarray:
    """The digit scaled up and placed off-centre on a bigger canvas, as a photo crop might be."""
    scaled = np.asarray(Image.fromarray(digit.numpy()).resize((56, 56), Image.Resampling.BILINEAR))
    canvas = np.zeros((size, size), dtype=np.uint8)
    canvas[10 : 10 + 56, 30 : 30 + 56] = scaled
    return canvas


def rgb(digit: torch.Tensor) -> np.ndarray:
    """Coloured ink on a coloured background: blue-ish digit on dark red."""
    d = digit.numpy().astype(np.float32) / 255
    out = np.stack([60 + 40 * d, 10 + 200 * d, 20 + 235 * d], axis=-1)
    return out.astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
