"""Preprocessing: real MNIST digits in every supported format and shape, and every bad input."""

import asyncio
import base64
import io
import struct
import threading
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from app.config import Settings
from app.errors import BlankImage, DecodersBusy, FileTooLarge, ImageTooLarge, InvalidImage, NotAnImage
from app.predict.preprocess import (
    MIN_CONTRAST,
    DecodeLimits,
    Decoder,
    Invert,
    levels_of,
    light_background,
    mnist_pixels,
    open_image,
    png_data_url,
    preprocess,
    signature_of,
    to_gray,
    to_tensor,
)
from app.predict.uploads import Upload
from tests.images import (
    black_on_white,
    encode,
    half_tiled_tiff,
    larger,
    png_header_only,
    rgb,
    saved,
    scan_bomb,
    tile_bomb,
    tiled_tiff,
)
from training.data import Mnist
from training.loop import to_model_input


@pytest.fixture(scope="module")
def digits(mnist: Mnist) -> torch.Tensor:
    return mnist.test_images[:20]


def test_28x28_png_gives_exactly_the_training_tensor(digits: torch.Tensor) -> None:
    expected = to_model_input(digits, torch.device("cpu"))
    for digit, want in zip(digits, expected, strict=True):
        assert torch.equal(preprocess(encode(digit)), want.contiguous())


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "TIFF"])
def test_lossless_formats_keep_28x28_pixels(digits: torch.Tensor, fmt: str) -> None:
    for digit in digits[:5]:
        assert np.array_equal(mnist_pixels(encode(digit, fmt)), digit.numpy().astype(np.float32))


def test_lossless_webp_and_jpeg_are_close(digits: torch.Tensor) -> None:
    digit = digits[0]
    assert np.array_equal(mnist_pixels(encode(digit, "WEBP", lossless=True)), digit.numpy())
    jpeg = mnist_pixels(encode(digit, "JPEG", quality=95))
    assert np.abs(jpeg - digit.numpy()).mean() < 4


def test_dark_on_light_is_inverted_at_28x28_and_can_be_forced(digits: torch.Tensor) -> None:
    digit = digits[0]
    assert np.array_equal(mnist_pixels(encode(black_on_white(digit))), digit.numpy())
    # invert=false keeps it as sent; invert=true inverts a light-on-dark digit
    assert np.array_equal(mnist_pixels(encode(black_on_white(digit)), Invert.FALSE), black_on_white(digit))
    assert np.array_equal(mnist_pixels(encode(digit), Invert.TRUE), black_on_white(digit))
    kept = preprocess(encode(black_on_white(digit)), Invert.FALSE)
    assert torch.equal(kept, to_tensor(np.asarray(black_on_white(digit))))
    inverted = preprocess(encode(digit), Invert.TRUE)
    assert torch.equal(inverted, to_tensor(np.asarray(black_on_white(digit))))


def test_other_sizes_are_brought_into_mnist_form(digits: torch.Tensor) -> None:
    pixels = mnist_pixels(encode(larger(digits[0])))
    assert pixels.shape == (28, 28)
    rows, cols = np.nonzero(pixels > 0.25 * pixels.max())
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 21  # 20 px box (+ rounding)
    ys, xs = np.indices(pixels.shape)
    centre = ((ys * pixels).sum() / pixels.sum(), (xs * pixels).sum() / pixels.sum())
    assert abs(centre[0] - 14) < 1 and abs(centre[1] - 14) < 1


@pytest.mark.parametrize(("height", "width"), [(150, 90), (60, 200)])
def test_the_longer_side_is_scaled_to_20_px_keeping_the_aspect_ratio(height: int, width: int) -> None:
    """MNIST's own recipe, on a solid block of ink off-centre on a large canvas: its box becomes
    exactly 20 px on the longer side and in proportion on the shorter, centred by mass."""
    canvas = np.zeros((300, 300), dtype=np.uint8)
    canvas[20 : 20 + height, 170 - width // 2 : 170 - width // 2 + width] = 255
    pixels = mnist_pixels(encode(canvas))
    rows, cols = np.nonzero(pixels > 0.5 * pixels.max())
    box = (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    longer = 20
    shorter = round(min(height, width) * longer / max(height, width))
    assert box == ((longer, shorter) if height > width else (shorter, longer))
    ys, xs = np.indices(pixels.shape)
    centre = ((ys * pixels).sum() / pixels.sum(), (xs * pixels).sum() / pixels.sum())
    assert abs(centre[0] - 14) <= 0.5 and abs(centre[1] - 14) <= 0.5


def test_rgb_and_transparency(digits: torch.Tensor) -> None:
    digit = digits[0]
    colour = mnist_pixels(encode(rgb(digit)))
    assert np.corrcoef(colour.ravel(), digit.numpy().ravel())[0, 1] > 0.99
    # Black ink on a transparent background, as a drawing canvas exports it.
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., 3] = digit.numpy()
    drawn = mnist_pixels(encode(rgba))
    assert np.abs(drawn - digit.numpy()).max() <= 1


def test_every_kind_of_transparency_is_composited_onto_paper_that_contrasts_with_the_ink(
    digits: torch.Tensor,
) -> None:
    """Ink on nothing, as drawing programs export it, in each way a file can say "transparent":
    the ink read as the digit, whatever the colour under the transparent pixels, black ink or white."""
    digit = digits[0].numpy()
    black = Image.new("L", (28, 28))
    palette = Image.new("P", (28, 28))
    palette.putpalette([0, 0, 0] * 256)
    coverage = Image.fromarray(digit)
    white_beneath = Image.fromarray(np.where(digit > 0, 0, 255).astype(np.uint8))
    graded = {  # the digit as the ink's coverage (alpha)
        "LA PNG": saved(Image.merge("LA", [black, coverage]), "PNG"),
        "LA PNG, white beneath": saved(Image.merge("LA", [white_beneath, coverage]), "PNG"),
        "LA PNG, white ink": saved(Image.merge("LA", [Image.new("L", (28, 28), 255), coverage]), "PNG"),
        "PA TIFF": saved(Image.merge("PA", [palette, coverage]), "TIFF"),
    }
    for kind, data in graded.items():
        drawn = mnist_pixels(data)
        assert drawn.dtype == np.float32, kind
        assert np.abs(drawn - digit).max() <= 1, kind
    # One grey level or palette entry marked transparent: coverage is all or nothing.
    ink = digit > 127
    marked = Image.fromarray(np.where(ink, 0, 1).astype(np.uint8))  # 1: transparent, near-black
    indexed = Image.fromarray(np.where(ink, 1, 0).astype(np.uint8), "P")
    indexed.putpalette([0, 0, 0] * 256)  # 0: transparent, black like the ink (1)
    binary = {
        "L PNG with tRNS": saved(marked, "PNG", transparency=1),
        "P PNG with tRNS": saved(indexed, "PNG", transparency=0),
    }
    for kind, data in binary.items():
        drawn = mnist_pixels(data)
        assert drawn.dtype == np.float32, kind
        assert np.array_equal(drawn, np.where(ink, 255.0, 0.0)), kind


@pytest.mark.parametrize(("ink", "paper"), [(0, 255.0), (127, 255.0), (128, 0.0), (255, 0.0)])
def test_transparent_pixels_become_paper_that_contrasts_with_the_mean_ink(ink: int, paper: float) -> None:
    """Ink darker than the middle (below 128) goes on white, the rest on black: exactly."""
    beneath = Image.new("L", (28, 28), 77)  # whatever a drawing program left under the transparency
    beneath.paste(ink, (0, 0, 14, 28))
    coverage = Image.new("L", (28, 28), 0)
    coverage.paste(255, (0, 0, 14, 28))  # the left half opaque
    gray = to_gray(Image.merge("LA", [beneath, coverage]))
    assert np.array_equal(gray[:, :14], np.full((28, 14), float(ink)))
    assert np.array_equal(gray[:, 14:], np.full((28, 14), paper))


def test_a_wholly_transparent_image_is_blank_without_a_warning() -> None:
    nothing = Image.merge("LA", [Image.new("L", (28, 28), 90), Image.new("L", (28, 28), 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" from a request, in the log
        gray = to_gray(nothing)
        with pytest.raises(BlankImage):
            mnist_pixels(saved(nothing, "PNG"))
    assert float(gray.min()) == float(gray.max())


def test_16_bit_greyscale(digits: torch.Tensor) -> None:
    wide = digits[0].numpy().astype(np.uint16) * 257  # 0-255 spread over 0-65535
    got = mnist_pixels(saved(Image.fromarray(wide), "PNG"))
    assert got.dtype == np.float32
    assert np.abs(got - digits[0].numpy()).max() <= 1e-3  # float32 rounding of 257 * 255 / 65535


def test_gif_uses_its_first_frame(digits: torch.Tensor) -> None:
    frames = [Image.fromarray(d.numpy()).convert("P") for d in digits[:3]]
    gif = saved(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.array_equal(mnist_pixels(gif), digits[0].numpy())


def refusal(data: bytes) -> tuple[type[Exception], str]:
    with pytest.raises(Exception) as refused:
        preprocess(data)
    return refused.type, str(refused.value)


def test_refusals_say_what_is_wrong_word_for_word(digits: torch.Tensor) -> None:
    png = encode(digits[0])
    assert refusal(b"") == (InvalidImage, "the file is empty")
    foreign = (NotAnImage, "not an image in a supported format (PNG, JPEG, BMP, GIF, WEBP, TIFF)")
    assert refusal(b"%PDF-1.4 this is a document, not an image") == foreign
    assert refusal(encode(digits[0], "ICO")) == foreign  # a real image, in a format we do not take
    assert refusal(png[: len(png) // 2]) == (InvalidImage, "the PNG data is truncated or corrupt")
    # BMP's two letters are no signature: a broken BMP header is only an image's
    assert refusal(b"BM" + bytes(60)) == (InvalidImage, "the image header is corrupt")
    blank = (BlankImage, "the image is blank: no digit found on it")
    assert refusal(encode(np.zeros((28, 28)))) == blank
    assert refusal(encode(np.full((300, 200), 255))) == blank
    faint = np.zeros((28, 28))
    faint[10:18, 12:16] = MIN_CONTRAST - 1
    assert refusal(encode(faint)) == blank
    faint[10:18, 12:16] = MIN_CONTRAST  # just enough to be a drawing
    assert mnist_pixels(encode(faint)).max() == MIN_CONTRAST


def test_a_background_that_is_not_black_is_taken_off_before_reframing(digits: torch.Tensor) -> None:
    """A scan's dark paper is rarely 0: reframing sees only what is above it."""
    photo = np.round(larger(digits[0]) * (200 / 255)).astype(np.uint8)
    assert np.array_equal(mnist_pixels(encode(photo + 40)), mnist_pixels(encode(photo)))


def test_decompression_bombs_are_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match="10000x10000 pixels; the limit is 16777216"):
        preprocess(png_header_only(10000, 10000), max_pixels=4096 * 4096)
    with pytest.raises(ImageTooLarge, match="30000x30000"):  # what Pillow's own guard would refuse
        preprocess(png_header_only(30000, 30000), max_pixels=4096 * 4096)
    # Pixels, not bytes: a lossless WebP of 4096x4096 is under a kilobyte.
    webp = encode(np.zeros((4096, 4096), dtype=np.uint8), "WEBP", lossless=True)
    assert len(webp) < 2048
    with pytest.raises(ImageTooLarge, match="4096x4096 pixels; the limit is 4194304"):
        preprocess(webp)  # the default limit: 2048x2048


@pytest.mark.parametrize("tile", [16, 32, 256, 2048])
def test_a_tiled_tiff_decodes_to_its_digit(digits: torch.Tensor, tile: int) -> None:
    assert np.array_equal(mnist_pixels(tiled_tiff(digits[0].numpy(), tile)), digits[0].numpy())


def test_a_tiff_naming_a_tile_width_but_no_tile_length_is_read_by_its_strips(digits: torch.Tensor) -> None:
    assert np.array_equal(mnist_pixels(half_tiled_tiff(digits[0].numpy())), digits[0].numpy())


def test_tiles_that_would_decode_more_pixels_than_the_limit_are_refused_before_decoding(
    digits: torch.Tensor,
) -> None:
    """libtiff decodes a whole tile at a time, whatever the image's own size: a 28x28 image in
    one 32768x32768 tile inflates 1 GiB from a 1 MB file. The tiles count, not the header's size."""
    bomb = tile_bomb(28, 28, 4096)  # 16 MB of zeros in 16 KB
    assert len(bomb) < 32 * 1024
    with pytest.raises(ImageTooLarge) as refused:
        preprocess(bomb)
    assert str(refused.value) == (
        "the 28x28 TIFF is stored in 4096x4096 tiles, which decode 16777216 pixels; "
        "the limit is 4194304 pixels"
    )
    just_over = tiled_tiff(digits[0].numpy(), 2064)  # tiles are multiples of 16: 2048 is the limit
    with pytest.raises(ImageTooLarge, match="2064x2064 tiles, which decode 4260096 pixels"):
        preprocess(just_over)
    tiled = tiled_tiff(np.zeros((100, 30), dtype=np.uint8), 32)  # 1 x 4 tiles of 32: 4,096 pixels
    with pytest.raises(ImageTooLarge, match="30x100 TIFF is stored in 32x32 tiles, which decode 4096"):
        preprocess(tiled, max_pixels=4095)
    with pytest.raises(BlankImage):  # within the limit: decoded (and found empty)
        preprocess(tiled, max_pixels=4096)
    square = tiled_tiff(np.zeros((28, 28), dtype=np.uint8), 16)
    length = struct.pack("<HHII", 323, 4, 1, 16)  # TileLength, a LONG
    assert square.count(length) == 1
    tall = square.replace(length, struct.pack("<HHII", 323, 4, 1, 48))  # 2 x 1 tiles of 16x48
    with pytest.raises(ImageTooLarge, match="stored in 16x48 tiles, which decode 1536 pixels"):
        preprocess(tall, max_pixels=1535)


def progressive(digit: torch.Tensor) -> bytes:
    jpeg = encode(digit, "JPEG", progressive=True, quality=90)
    assert jpeg.count(b"\xff\xda") == 6  # libjpeg's progression for one channel
    return jpeg


def test_a_jpeg_with_more_scans_than_the_limit_is_refused_before_decoding(digits: torch.Tensor) -> None:
    """Each scan of a progressive JPEG is a pass over every pixel, in as little as a few bytes:
    one scan repeated 64,000 times in 1 MB decodes for most of a minute."""
    assert mnist_pixels(scan_bomb(progressive(digits[0]), 100)).shape == (28, 28)  # at the limit
    with pytest.raises(ImageTooLarge) as refused:
        preprocess(scan_bomb(progressive(digits[0]), 101))
    assert (
        str(refused.value) == "the JPEG holds 101 scans, each a pass over all of its pixels; the limit is 100"
    )
    with pytest.raises(ImageTooLarge, match="holds 7 scans"):
        open_image(scan_bomb(progressive(digits[0]), 7), 784, max_scans=6)
    assert open_image(progressive(digits[0]), 784, max_scans=6).size == (28, 28)


def test_a_jpeg_opened_as_mpo_has_its_scans_counted_too(digits: torch.Tensor) -> None:
    """An APP2 "MPF" block makes Pillow open a JPEG as MPO, whatever formats it was asked for; its
    first frame is still libjpeg's to decode, every scan of it."""
    frames = [Image.fromarray(digits[n].numpy()) for n in range(2)]
    mpo = saved(frames[0], "MPO", save_all=True, append_images=frames[1:], progressive=True)
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    scans = mpo.count(b"\xff\xda")
    with pytest.raises(ImageTooLarge, match=f"holds {scans} scans"):
        open_image(mpo, 784, max_scans=scans - 1)
    assert open_image(mpo, 784, max_scans=scans).size == (28, 28)


def samples_tiff(values: np.ndarray) -> bytes:
    """A one-channel TIFF of 32-bit samples: mode F for floats, I for integers."""
    return saved(Image.fromarray(values), "TIFF")


def test_non_finite_pixels_are_refused(digits: torch.Tensor) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        values = digits[0].numpy().astype(np.float32)
        values[3, 4] = bad
        with pytest.raises(InvalidImage) as refused:
            preprocess(samples_tiff(values))
        assert str(refused.value) == (
            "the image has pixel values that are not finite numbers (NaN or infinity)"
        )


def test_32_bit_samples_are_brought_to_grey_levels(digits: torch.Tensor) -> None:
    digit = digits[0].numpy()
    as_floats = samples_tiff(digit.astype(np.float32) / 255)  # floats in [0, 1]
    assert np.abs(mnist_pixels(as_floats) - digit).max() < 1e-3
    kept = samples_tiff(digit.astype(np.int32))  # integers already in [0, 255]
    assert np.array_equal(mnist_pixels(kept), digit)
    # Any other range, negative included, is stretched onto 0-255.
    shifted = samples_tiff(digit.astype(np.int32) * 1000 - 500_000)
    assert np.abs(mnist_pixels(shifted) - digit).max() < 1e-2
    wide = samples_tiff(digit.astype(np.float32) * 1e30 - 3e32)
    assert np.abs(mnist_pixels(wide) - digit).max() < 1e-2


def test_exif_orientation_is_applied(digits: torch.Tensor) -> None:
    """A camera stores the sensor's pixels and an Orientation tag; the digit must come out upright."""
    digit = digits[0].numpy()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the stored pixels are turned the other way
    assert np.array_equal(mnist_pixels(saved(Image.fromarray(np.rot90(digit, k=1)), exif=exif)), digit)


def test_to_tensor_leaves_the_pixels_alone(digits: torch.Tensor) -> None:
    """The 28x28 image is also shown to people (return_input): normalising must not overwrite it."""
    pixels = mnist_pixels(encode(digits[0]))
    before = pixels.copy()
    to_tensor(pixels)
    assert np.array_equal(pixels, before)


@pytest.mark.parametrize(
    ("values", "floats", "levels"),
    [
        ([0.0, 0.5, 1.0], True, [0.0, 127.5, 255.0]),  # floats in [0, 1] are scaled up
        ([0.0, 1.5, 200.0], True, [0.0, 1.5, 200.0]),  # floats past 1 are levels already
        ([0.0, 1.5], True, [0.0, 1.5]),
        ([10.0, 255.0], False, [10.0, 255.0]),  # 255 is a level: kept, not stretched
        ([0.0, 256.0], False, [0.0, 255.0]),  # 256 is not
        ([0.0, 1.0], False, [0.0, 1.0]),  # integers in [0, 1] are two dark levels, not 0 and 255
        ([0.0, 7.0, 255.0], False, [0.0, 7.0, 255.0]),  # integers in [0, 255] are kept
        ([-10.0, 0.0, 10.0], False, [0.0, 127.5, 255.0]),  # a negative low: stretched
        ([0.0, 256.0, 512.0], False, [0.0, 127.5, 255.0]),  # past 255: stretched
        ([0.0, 2.0**31 - 1], False, [0.0, 255.0]),  # int32's extremes do not overflow
        ([300.0, 300.0], False, [0.0, 0.0]),  # one value out of range: blank
        ([-1.0, -1.0], True, [0.0, 0.0]),
    ],
)
def test_32_bit_levels_exactly(values: list[float], floats: bool, levels: list[float]) -> None:
    got = levels_of(np.array(values, dtype=np.float64).reshape(1, -1), floats)
    assert got.dtype == np.float32 and got.shape == (1, len(values))
    np.testing.assert_allclose(got[0], levels, rtol=1e-6)


def test_non_finite_levels_pass_through_for_the_caller_to_refuse() -> None:
    got = levels_of(np.array([[np.nan, np.inf, 3.0]]), floats=True)
    assert got.dtype == np.float32
    assert np.isnan(got[0, 0]) and np.isposinf(got[0, 1]) and got[0, 2] == 3.0


def test_a_riff_file_is_webp_only_when_it_says_so() -> None:
    """RIFF holds WAV and AVI too: those are not images (415), where a broken WebP is corrupt (400)."""
    assert signature_of(b"RIFF\x24\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert signature_of(b"RIFF\x24\x00\x00\x00WAVEfmt ") is None
    assert signature_of(b"RIFX\x24\x00\x00\x00WEBPVP8 ") is None


def canvas(*blocks: tuple[int, int, int, int, float]) -> bytes:
    """A 64x64 PNG, dark, with blocks of ink (top, left, height, width, level)."""
    pixels = np.zeros((64, 64), dtype=np.uint8)
    for top, left, height, width, level in blocks:
        pixels[top : top + height, left : left + width] = level
    return encode(pixels)


def ink_box(frame: np.ndarray) -> tuple[int, int, int, int]:
    """Top, left, height and width of what is not background."""
    rows, cols = np.nonzero(frame > 0)
    return rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


@pytest.mark.parametrize(
    ("blocks", "box"),
    [
        # 10 x 4 ink: scaled x2 to 20 x 8; its centre of mass (10, 4) on the frame's (14, 14),
        # rounding half to even: top round(4.5) = 4, left round(10.5) = 10.
        ([(20, 30, 10, 4, 255)], (4, 10, 20, 8)),
        # A speck at 20% of the ink's level, or at exactly 25%, is not ink: the box is as above.
        ([(20, 30, 10, 4, 255), (60, 2, 1, 1, 51)], (4, 10, 20, 8)),
        ([(20, 30, 10, 4, 200), (60, 2, 1, 1, 50)], (4, 10, 20, 8)),
        # A line one pixel wide and 40 long: 20 x 1 (at least one pixel, not two), and across.
        ([(10, 20, 40, 1, 255)], (4, 14, 20, 1)),
        ([(20, 10, 1, 40, 255)], (14, 4, 1, 20)),
        # A speck at 26% is ink: 20 rows from the block to the speck, scale 1. The mass sits near
        # one end, so centring would push the box past the frame's edge: it stops at the edge.
        ([(20, 30, 10, 4, 255), (39, 30, 1, 1, 67)], (8, 13, 20, 4)),  # past the bottom
        ([(46, 30, 4, 10, 255), (30, 30, 1, 1, 67)], (0, 10, 20, 10)),  # past the top
        ([(20, 10, 10, 4, 255), (25, 29, 1, 1, 67)], (9, 8, 10, 20)),  # past the right
        ([(20, 40, 10, 4, 255), (25, 24, 1, 1, 67)], (9, 0, 10, 20)),  # past the left
    ],
)
def test_reframing_geometry_exactly(blocks: list[tuple[int, int, int, int, float]], box: tuple) -> None:
    frame = mnist_pixels(canvas(*blocks))
    assert frame.dtype == np.float32 and frame.shape == (28, 28)
    assert ink_box(frame) == box


def test_reframing_scales_with_lanczos_within_the_grey_levels(digits: torch.Tensor) -> None:
    """A real digit scaled down: LANCZOS's ringing clipped to 0-255, and its exact figure (the
    default filter, BICUBIC, gives 18391.98 for the same digit)."""
    frame = mnist_pixels(encode(larger(digits[0])))
    assert frame.min() == 0.0 and frame.max() == 255.0
    assert float(frame.sum()) == pytest.approx(18366.18, rel=1e-6)


def test_the_picture_of_what_the_model_saw_saturates_at_the_grey_levels() -> None:
    pixels = np.array([[-5.0, 0.4, 127.6], [254.5, 255.0, 300.0]], dtype=np.float32)
    url = png_data_url(pixels)
    assert url.startswith("data:image/png;base64,")
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert shown.dtype == np.uint8 and shown.tolist() == [[0, 0, 128], [254, 255, 255]]


def test_a_light_background_is_an_edge_mean_over_127_5_every_edge_pixel_counted_once() -> None:
    """Checked against a plain mask of the frame's edge, on random images whose edge means fall on
    both sides of the line, in three shapes."""
    rng = np.random.default_rng(0)
    for height, width in ((28, 28), (20, 35), (35, 20)):
        edge = np.ones((height, width), dtype=bool)
        edge[1:-1, 1:-1] = False
        for _ in range(500):
            gray = rng.uniform(0, 255, (height, width)).astype(np.float32)
            assert light_background(gray) == (float(gray[edge].astype(np.float64).mean()) > 127.5)
    assert not light_background(np.full((28, 28), 127.5, dtype=np.float32))  # on the line: dark


def wide(digit: torch.Tensor) -> bytes:
    """A 100 x 10 image: its pixels (1,000) are not its height squared (100)."""
    canvas = np.zeros((10, 100), dtype=np.uint8)
    canvas[1:9, 40:60] = np.asarray(Image.fromarray(digit.numpy()).resize((20, 8)))
    return encode(canvas)


def decoder_of(wait_s: float = 10, **settings: Any) -> Decoder:
    """A decoder of one thread, within the limits of Settings(**settings): the defaults but those given."""
    return Decoder(DecodeLimits.of(Settings(**settings)), concurrency=1, wait_s=wait_s)


async def test_a_request_may_hold_exactly_its_pixel_limit_in_all(digits: torch.Tensor) -> None:
    uploads = [Upload("files", f"{n}.png", wide(digits[n])) for n in range(2)]  # 2,000 pixels
    await decoder_of(max_request_pixels=2000).decode(uploads, Invert.AUTO, batch=True)
    with pytest.raises(ImageTooLarge) as refused:
        await decoder_of(max_request_pixels=1999).decode(uploads, Invert.AUTO, batch=True)
    assert str(refused.value) == "the images hold 2000 pixels together; the limit per request is 1999"


async def test_a_batch_decodes_as_a_single_upload_would_and_names_a_bad_file(digits: torch.Tensor) -> None:
    uploads = [Upload("files", f"{n}.png", encode(digits[n])) for n in range(3)]
    decoder = decoder_of()
    for invert in Invert:
        _, images = await decoder.decode(uploads, invert, batch=True)
        for upload, image in zip(uploads, images, strict=True):
            assert np.array_equal(image, mnist_pixels(upload.data, invert))
    uploads[1] = Upload("files", "1.png", b"")
    with pytest.raises(InvalidImage) as named:
        await decoder.decode(uploads, Invert.AUTO, batch=True)
    assert str(named.value) == "files[1] (1.png): the file is empty"
    files = [upload.data for upload in uploads]
    with pytest.raises(InvalidImage) as named:
        await decoder.decode_bytes(files, Invert.AUTO, lambda error, index: error.about(f"input {index}"))
    assert str(named.value) == "input 1: the file is empty"
    inputs, images = await decoder.decode_bytes(files[:1], Invert.AUTO, lambda error, index: error)
    assert torch.equal(inputs[0], preprocess(files[0])) and np.array_equal(images[0], mnist_pixels(files[0]))


async def test_each_file_is_held_to_the_byte_limit_before_any_file_is_opened(digits: torch.Tensor) -> None:
    """MNIST_MAX_UPLOAD_BYTES per file: at the limit a file is decoded (a PNG's trailing bytes are
    ignored), one byte past it is a 413, also when an earlier file of the batch is no image at all."""
    png = encode(digits[0])
    at_limit = png + bytes(1024 - len(png))
    decoder = decoder_of(max_upload_bytes=1024)
    _, images = await decoder.decode([Upload("file", "a.png", at_limit)], Invert.AUTO, batch=False)
    assert np.array_equal(images[0], digits[0].numpy())
    with pytest.raises(FileTooLarge) as refused:
        await decoder.decode([Upload("file", "a.png", at_limit + b"\0")], Invert.AUTO, batch=False)
    assert str(refused.value) == "file is larger than the limit of 1024 bytes"
    batch = [Upload("files", "text.txt", b"not an image"), Upload("files", "big.png", at_limit + b"\0")]
    with pytest.raises(FileTooLarge) as refused:
        await decoder.decode(batch, Invert.AUTO, batch=True)
    assert str(refused.value) == "files[1] (big.png): file is larger than the limit of 1024 bytes"
    with pytest.raises(FileTooLarge) as refused:  # a batch of one names its file too
        await decoder.decode(batch[1:], Invert.AUTO, batch=True)
    assert str(refused.value) == "files[0] (big.png): file is larger than the limit of 1024 bytes"


async def test_the_decoder_holds_jpegs_to_its_own_scan_limit(digits: torch.Tensor) -> None:
    seven = [Upload("file", "d.jpg", scan_bomb(progressive(digits[0]), 7))]
    await decoder_of(max_jpeg_scans=7).decode(seven, Invert.AUTO, batch=False)
    with pytest.raises(
        ImageTooLarge, match="holds 7 scans, each a pass over all of its pixels; the limit is 6"
    ):
        await decoder_of(max_jpeg_scans=6).decode(seven, Invert.AUTO, batch=False)


async def test_small_requests_decode_on_the_event_loop_without_waiting_for_a_thread(
    digits: torch.Tensor,
) -> None:
    """Up to `inline_pixels` in all, a request never queues behind big decodes holding the threads."""
    decoder = decoder_of(inline_decode_pixels=2 * 28 * 28)
    async with the_one_thread_held(decoder):
        two = [Upload("files", f"{n}.png", encode(digits[n])) for n in range(2)]
        async with asyncio.timeout(5):  # exactly the inline limit: decoded here, at once
            await decoder.decode(two, Invert.AUTO, batch=True)
        # Only a JPEG's scans multiply what a decode costs: their marker in a PNG's text is no scan.
        marked = PngImagePlugin.PngInfo()
        marked.add_text("note", "\xff\xda" * 10)
        png = io.BytesIO()
        Image.fromarray(digits[0].numpy()).save(png, "PNG", pnginfo=marked)
        assert png.getvalue().count(b"\xff\xda") == 10
        async with asyncio.timeout(5):
            await decoder.decode([Upload("file", "marked.png", png.getvalue())], Invert.AUTO, batch=False)


@asynccontextmanager
async def the_one_thread_held(decoder: Decoder) -> AsyncIterator[None]:
    """A big decode holds the decoder's one thread until the block ends."""
    started, release = threading.Event(), threading.Event()

    def big_decode() -> None:
        started.set()
        release.wait(10)

    holder = asyncio.create_task(decoder.off_loop(big_decode))
    assert await asyncio.to_thread(started.wait, 10)
    try:
        yield
    finally:
        release.set()
        await holder


async def test_what_decoding_costs_decides_where_it_runs_and_a_busy_decoder_answers_within_its_wait(
    digits: torch.Tensor,
) -> None:
    """Pixels decoded times passes over them: a 28x28 progressive JPEG of 6 scans costs 4,704, one of
    7 scans 5,488; a 28x28 TIFF in 32x32 tiles 1,024. Past the inline limit a request waits for a
    thread, and for no longer than the decoder's wait."""
    decoder = decoder_of(wait_s=0.2, inline_decode_pixels=6 * 28 * 28)
    async with the_one_thread_held(decoder):
        inline = [progressive(digits[0]), tiled_tiff(digits[0].numpy(), 32), encode(digits[0])]
        for data in inline:
            async with asyncio.timeout(5):
                await decoder.decode([Upload("file", "d", data)], Invert.AUTO, batch=False)
        for data in (scan_bomb(progressive(digits[0]), 7), tiled_tiff(digits[0].numpy(), 96)):
            with pytest.raises(DecodersBusy) as busy:
                await decoder.decode([Upload("file", "d", data)], Invert.AUTO, batch=False)
            assert str(busy.value) == "all 1 decoding threads stayed busy for 0.2 s; try again shortly"
    async with asyncio.timeout(5):  # the thread is free again: decoded there
        await decoder.decode(
            [Upload("file", "d", scan_bomb(progressive(digits[0]), 7))], Invert.AUTO, batch=False
        )


async def test_a_cancelled_request_keeps_its_thread_slot_until_its_work_ends() -> None:
    """A client that goes away cannot free a slot its decode still uses: cancelled callers would
    otherwise pile work up on threads past MNIST_DECODE_THREADS."""
    decoder = decoder_of(wait_s=0.2)
    started, release = threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        release.wait(10)

    caller = asyncio.create_task(decoder.off_loop(work))
    assert await asyncio.to_thread(started.wait, 10)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    with pytest.raises(DecodersBusy):  # the work goes on: its slot is still taken
        await decoder.off_loop(lambda: None)
    release.set()
    async with asyncio.timeout(5):
        while True:  # given back when the work ends
            try:
                await decoder.off_loop(lambda: None)
                break
            except DecodersBusy:
                await asyncio.sleep(0.01)
