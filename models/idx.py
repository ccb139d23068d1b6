"""MNIST's own file format, IDX: a magic number (two zero bytes, a type code, the number of
dimensions), each dimension's size as a big-endian 32-bit integer, then the values. Only unsigned
bytes, the type MNIST uses. Training reads MNIST with it; the feedback export is written in it, so
any code that reads MNIST reads the corrections too."""

import struct

import numpy as np
import torch

# Type code 0x08 = unsigned byte; the last byte of the magic number is the number of dimensions.
UBYTE = 0x08


class IdxError(ValueError):
    """Bytes that are not an IDX file of unsigned bytes with the expected dimensions."""


def encode_idx(values: torch.Tensor | np.ndarray) -> bytes:
    """An array of unsigned bytes (images N x height x width, labels N) as an IDX file."""
    array = np.ascontiguousarray(values.numpy() if isinstance(values, torch.Tensor) else values)
    if array.dtype != np.uint8:
        raise IdxError(f"IDX holds unsigned bytes here, not {array.dtype}")
    header = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def decode_idx(raw: bytes, ndim: int) -> torch.Tensor:
    """An IDX file's values with `ndim` dimensions, or IdxError saying what is wrong."""
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise IdxError(f"only {len(raw)} bytes, shorter than an IDX header")
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != UBYTE or dims != ndim:
        raise IdxError(
            f"bad magic number 0x{raw[:4].hex()} "
            f"(expected 0x00000{UBYTE:x}{ndim:02x}: unsigned bytes, {ndim} dimensions)"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = 1
    for size in shape:
        expected *= size
    body = len(raw) - header_size
    if body != expected:
        raise IdxError(
            f"header says {'x'.join(map(str, shape))} = {expected} bytes of data, "
            f"file has {body} (truncated or corrupt)"
        )
    if expected == 0:
        return torch.zeros(shape, dtype=torch.uint8)
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header_size)
    return data.reshape(shape)
