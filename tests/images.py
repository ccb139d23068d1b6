"""Real MNIST digits as the image files a client would upload."""

import io
import struct
import zlib

import numpy as np
import torch
from PIL import Image, TiffImagePlugin


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


def tiled_tiff(pixels: np.ndarray, tile: int) -> bytes:
    """An 8-bit grey TIFF stored in deflate-compressed `tile` x `tile` tiles (Pillow writes only
    strips), as a scanner or GIS tool writes one: each tile padded with zeros past the image."""
    height, width = pixels.shape
    across, down = -(-width // tile), -(-height // tile)
    padded = np.zeros((down * tile, across * tile), dtype=np.uint8)
    padded[:height, :width] = pixels
    tiles = [
        zlib.compress(padded[y * tile : (y + 1) * tile, x * tile : (x + 1) * tile].tobytes())
        for y in range(down)
        for x in range(across)
    ]
    return tiff_of_tiles(width, height, tile, tiles)


def half_tiled_tiff(pixels: np.ndarray) -> bytes:
    """An 8-bit grey TIFF stored in strips whose directory also names a tile width (322) but no tile
    length (323): a malformed file libtiff reads by its strips."""
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[65000], info.tagtype[65000] = 16, 3  # a private SHORT tag, renumbered below
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "TIFF", tiffinfo=info)
    assert out.getvalue().count(struct.pack("<HH", 65000, 3)) == 1
    return out.getvalue().replace(struct.pack("<HH", 65000, 3), struct.pack("<HH", 322, 3))


def tile_bomb(width: int, height: int, tile: int) -> bytes:
    """A `width` x `height` TIFF whose one deflate tile holds `tile` x `tile` zero bytes: a small
    file (zlib packs zeros about 1,000 to 1) that inflates to tile**2 bytes if decoded."""
    packer, chunk, left = zlib.compressobj(9), bytes(1 << 20), tile * tile
    parts = []
    while left:
        parts.append(packer.compress(chunk[: min(left, len(chunk))]))
        left -= min(left, len(chunk))
    parts.append(packer.flush())
    return tiff_of_tiles(width, height, tile, [b"".join(parts)])


def tiff_of_tiles(width: int, height: int, tile: int, tiles: list[bytes]) -> bytes:
    """A little-endian TIFF, one IFD, 8-bit BlackIsZero, deflate, holding these tiles in order."""
    short, long = 3, 4
    entries = 10
    ifd_size = 2 + 12 * entries + 4
    arrays_at = 8 + ifd_size  # the offsets and byte counts, when there is more than one tile
    data_at = arrays_at + (8 * len(tiles) if len(tiles) > 1 else 0)
    offsets, at = [], data_at
    for data in tiles:
        offsets.append(at)
        at += len(data)

    def array(values: list[int], index: int) -> int:
        return values[0] if len(values) == 1 else arrays_at + 4 * len(tiles) * index

    fields = [
        (256, long, 1, width),
        (257, long, 1, height),
        (258, short, 1, 8),
        (259, short, 1, 8),  # Adobe deflate
        (262, short, 1, 1),  # BlackIsZero
        (277, short, 1, 1),
        (322, long, 1, tile),
        (323, long, 1, tile),
        (324, long, len(tiles), array(offsets, 0)),
        (325, long, len(tiles), array([len(data) for data in tiles], 1)),
    ]
    head = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", entries)
    head += b"".join(struct.pack("<HHII", *field) for field in fields) + struct.pack("<I", 0)
    if len(tiles) > 1:
        head += struct.pack(f"<{len(tiles)}I", *offsets)
        head += struct.pack(f"<{len(tiles)}I", *(len(data) for data in tiles))
    return head + b"".join(tiles)


def jpeg_segments(data: bytes) -> list[bytes]:
    """A JPEG cut into its marker segments, each scan (SOS) with its entropy-coded data."""
    segments, at = [], 2  # after SOI
    while at < len(data):
        marker = data[at + 1]
        if marker == 0xD9:  # EOI
            segments.append(data[at:])
            break
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        end = at + 2 + length
        if marker == 0xDA:  # the scan's data runs to the next marker that is not RST or a stuffed 0xFF
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        segments.append(data[at:end])
        at = end
    return segments


def scan_bomb(jpeg: bytes, scans: int) -> bytes:
    """A progressive JPEG whose smallest refinement scan is repeated after its last one until it
    holds `scans` scans: each scan is a pass over every block of the image, in a few bytes."""
    segments = jpeg_segments(jpeg)
    scan_at = [index for index, segment in enumerate(segments) if segment[1] == 0xDA]
    extra = scans - len(scan_at)
    smallest = min((segments[index] for index in scan_at[1:]), key=len)  # not the first (DC) scan
    return jpeg[:2] + b"".join(segments[:-1]) + smallest * extra + segments[-1]
