"""Non-digits for Outlier Exposure and for measuring the not-a-digit flag: procedural families of
strokes, curves, shapes, glyphs, letters in other typefaces, letters drawn with a pen, textures,
speckle and pieces of digits, each drawn dark on light as a drawing or a photo arrives, then framed
as the service frames an upload (models/framing.py).

Nothing but Pillow and numpy draws them, from fonts that ship with Pillow or in pinned packages,
so they are made the same wherever the training runs, from a seed.
"""

import functools
import importlib.resources
import math
import string
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from models.framing import to_mnist_frame
from models.signature import SIGNATURE

CANVAS = 64  # drawn larger than the input, then framed down to it as an upload is
# An image whose ink barely differs from its paper: the service refuses it as blank.
BLANK_CONTRAST = 32
Canvas = tuple[Image.Image, ImageDraw.ImageDraw]
Drawing = Callable[[np.random.Generator], Image.Image]


def canvas() -> Canvas:
    image = Image.new("L", (CANVAS, CANVAS), 255)
    return image, ImageDraw.Draw(image)


def point(rng: np.random.Generator, margin: float = 6) -> tuple[float, float]:
    return (float(rng.uniform(margin, CANVAS - margin)), float(rng.uniform(margin, CANVAS - margin)))


def pen(rng: np.random.Generator) -> int:
    return int(rng.integers(2, 7))


def strokes(rng: np.random.Generator) -> Image.Image:
    """Scribbles: one to four polylines through random points."""
    image, draw = canvas()
    for _ in range(int(rng.integers(1, 5))):
        line = [point(rng) for _ in range(int(rng.integers(2, 8)))]
        draw.line(line, fill=0, width=pen(rng), joint="curve")
    return image


def curves(rng: np.random.Generator) -> Image.Image:
    """Arcs, spirals and waves, turned any way."""
    image, draw = canvas()
    kind = int(rng.integers(3))
    if kind == 0:
        for _ in range(int(rng.integers(1, 4))):
            x, y = point(rng, 16)
            r, start = float(rng.uniform(6, 26)), float(rng.uniform(0, 360))
            box = (x - r, y - r, x + r, y + r)
            draw.arc(box, start, start + float(rng.uniform(60, 300)), fill=0, width=pen(rng))
    elif kind == 1:
        turns, grow = float(rng.uniform(1.2, 3.5)), float(rng.uniform(0.8, 1.6))
        steps = np.linspace(0, turns * 2 * math.pi, 120)
        spiral = [(32 + grow * 3 * t * math.cos(t), 32 + grow * 3 * t * math.sin(t)) for t in steps]
        draw.line(spiral, fill=0, width=pen(rng), joint="curve")
    else:
        amplitude, waves, phase = (
            float(rng.uniform(4, 20)),
            float(rng.uniform(1, 4)),
            float(rng.uniform(0, 6.3)),
        )
        xs = np.linspace(6, 58, 80)
        wave = [(float(x), 32 + amplitude * math.sin(waves * x / 58 * 2 * math.pi + phase)) for x in xs]
        draw.line(wave, fill=0, width=pen(rng), joint="curve")
    return image.rotate(float(rng.uniform(0, 360)), fillcolor=255)


def star(spikes: int, outer: float, inner: float) -> list[tuple[float, float]]:
    return [
        (32 + radius * math.cos(math.pi * i / spikes), 32 + radius * math.sin(math.pi * i / spikes))
        for i, radius in enumerate([outer, inner] * spikes)
    ]


def shapes(rng: np.random.Generator) -> Image.Image:
    """Outlined or filled rectangles, ellipses, triangles, regular polygons and stars."""
    image, draw = canvas()
    for _ in range(int(rng.integers(1, 3))):
        kind, fill = int(rng.integers(5)), 0 if rng.random() < 0.3 else None
        xs, ys = sorted([point(rng)[0], point(rng)[0]]), sorted([point(rng)[1], point(rng)[1]])
        box = (xs[0], ys[0], max(xs[1], xs[0] + 8), max(ys[1], ys[0] + 8))
        if kind == 0:
            draw.rectangle(box, outline=0, fill=fill, width=pen(rng))
        elif kind == 1:
            draw.ellipse(box, outline=0, fill=fill, width=pen(rng))
        elif kind == 2:
            draw.polygon([point(rng) for _ in range(3)], outline=0, fill=fill, width=pen(rng))
        elif kind == 3:
            circle = (32.0, 32.0, float(rng.uniform(12, 26)))
            draw.regular_polygon(circle, int(rng.integers(4, 9)), outline=0, fill=fill, width=pen(rng))
        else:
            outer = float(rng.uniform(16, 27))
            points = star(int(rng.integers(4, 8)), outer, outer * float(rng.uniform(0.3, 0.6)))
            draw.polygon(points, outline=0, fill=fill, width=pen(rng))
    return image


FONT_SIZES = (28, 36, 44)
GLYPHS = list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz@#$%&*+=?!<>{}[]()/\\~^")


def glyphs(rng: np.random.Generator) -> Image.Image:
    """One or two letters or symbols in Pillow's own font, sheared and turned a little."""
    image, draw = canvas()
    font = ImageFont.load_default(size=int(rng.choice(FONT_SIZES)))
    text = "".join(rng.choice(GLYPHS, size=int(rng.integers(1, 3))))
    bold = int(rng.integers(0, 2))
    draw.text((32, 32), text, font=font, fill=0, anchor="mm", stroke_width=bold, stroke_fill=0)
    shear = float(rng.uniform(-0.3, 0.3))
    image = image.transform(
        image.size, Image.Transform.AFFINE, (1, shear, -shear * 32, 0, 1, 0), fillcolor=255
    )
    return image.rotate(float(rng.uniform(-25, 25)), fillcolor=255)


# Open fonts in pinned packages (pyproject.toml): sans, serif, hand-lettered and rounded faces, in
# many weights and slants. A network that has seen letters in one typeface only takes many letters
# of another for digits; the variety of faces is what carries to fonts it never saw.
TYPEFACE_PACKAGES = (
    "font_roboto", "font_source_sans_pro", "font_source_serif_pro", "font_amatic_sc", "font_fredoka_one",
)  # fmt: skip
CHARACTERS = string.ascii_letters + string.punctuation


class MissingTypefaces(FileNotFoundError):
    """The font packages the `typefaces` and `pen_letters` families draw in are not installed
    (files missing, as a missing dataset is: the CLI says so in a line, with no traceback)."""


@functools.cache
def typeface_files() -> tuple[str, ...]:
    """The packaged faces' files, in the order of their names (not of where they are installed)."""
    found: dict[str, str] = {}
    for package in TYPEFACE_PACKAGES:
        try:
            folder = importlib.resources.files(package) / "files"
        except ModuleNotFoundError:
            raise MissingTypefaces(
                f"the typefaces outlier family needs the font package {package} "
                "(a dependency in pyproject.toml: pip install -e .)"
            ) from None
        found.update({font.name: str(font) for font in folder.iterdir() if font.name.endswith(".ttf")})
    return tuple(found[name] for name in sorted(found))


@functools.cache
def typeface(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def typefaces(rng: np.random.Generator) -> Image.Image:
    """A letter or symbol (sometimes two) in one of the packaged typefaces, turned a little."""
    image, draw = canvas()
    faces = typeface_files()
    font = typeface(faces[int(rng.integers(len(faces)))], int(rng.integers(32, 53)))
    text = "".join(rng.choice(list(CHARACTERS), size=1 if rng.random() < 0.8 else 2))
    draw.text((32, 32), text, font=font, fill=0, anchor="mm")
    return image.rotate(float(rng.uniform(-15, 15)), fillcolor=255)


# Hershey's vector fonts (a pinned package): letters and symbols as a pen draws them, stroke by
# stroke, in roman, italic, script, Greek and Gothic hands and in symbol sets, which is how the
# page's users draw them. Cyrillic is left out (its Ze is a 3); `cursive` is the benchmark's.
# Characters a pen draws as it draws a 1 or a 0 are left out: they would teach the network to doubt
# those digits.
PEN_HANDS = (
    "futural", "futuram", "rowmans", "rowmand", "rowmant", "timesr", "timesrb", "timesi", "timesib",
    "timesg", "scripts", "scriptc", "greek", "greekc", "greeks", "gothgbt", "gothgrt", "gothiceng",
    "gothicger", "gothicita", "gothitt", "japanese", "astrology", "markers", "meteorology", "music",
    "symbolic", "mathlow", "mathupp",
)  # fmt: skip
PEN_CHARACTERS = [char for char in CHARACTERS if char not in "Il|/\\Oo"]
Stroke = list[tuple[float, float]]


@functools.cache
def hand(name: str) -> dict[str, list[Stroke]]:
    """Each character's strokes in one Hershey font, empty ones left out (y grows downwards, as on
    a canvas)."""
    try:
        # Imported on first use, as the typefaces are read: a missing package is a clear error.
        from HersheyFonts import HersheyFonts
    except ModuleNotFoundError:
        raise MissingTypefaces(
            "the pen_letters outlier family needs the package Hershey-Fonts "
            "(a dependency in pyproject.toml: pip install -e .)"
        ) from None
    font = HersheyFonts()
    font.load_default_font(name)
    return {
        char: [list(map(tuple, stroke)) for stroke in font.strokes_for_text(char) if stroke]
        for char in CHARACTERS
    }


def pen_stroked(rng: np.random.Generator, strokes: list[Stroke]) -> Image.Image:
    """Strokes scaled into the canvas and drawn with a pen, each point moved a little as a hand
    moves it, the whole sheared a little."""
    image, draw = canvas()
    points = np.array([point for stroke in strokes for point in stroke], dtype=np.float64)
    low, high = points.min(0), points.max(0)
    scale = float(rng.uniform(30, 50)) / max(float((high - low).max()), 1.0)
    centre = (high + low) / 2
    # A pen as wide, for the size, as MNIST's.
    shear, wobble, width = float(rng.uniform(-0.3, 0.3)), float(rng.uniform(0, 1.2)), int(rng.integers(3, 8))
    for stroke in strokes:
        xy = (np.array(stroke, dtype=np.float64) - centre) * scale
        xy[:, 0] += shear * xy[:, 1]
        xy += CANVAS / 2 + rng.normal(0, wobble, xy.shape)
        if len(xy) == 1:
            xy = np.concatenate([xy, xy + 0.5])
        draw.line([tuple(p) for p in xy.tolist()], fill=0, width=width, joint="curve")
    return image.rotate(float(rng.uniform(-15, 15)), fillcolor=255)


def pen_letters(rng: np.random.Generator) -> Image.Image:
    """A letter or symbol in one of Hershey's hands, drawn with a pen of some width."""
    strokes = hand(PEN_HANDS[int(rng.integers(len(PEN_HANDS)))])
    drawn = strokes[str(rng.choice(PEN_CHARACTERS))]
    return pen_stroked(rng, drawn) if drawn else canvas()[0]


def require_fonts() -> None:
    """Raise MissingTypefaces unless every font package a family draws in is installed."""
    typeface_files()
    hand(PEN_HANDS[0])


def textures(rng: np.random.Generator) -> Image.Image:
    """Blobs of smoothed noise, hatching and grids."""
    kind = int(rng.integers(3))
    if kind == 0:
        noise = Image.fromarray((rng.random((CANVAS, CANVAS)) * 255).astype(np.uint8))
        blurred = noise.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 4))))
        smooth = np.asarray(blurred, dtype=np.float32)
        level = np.quantile(smooth, float(rng.uniform(0.6, 0.9)))
        return Image.fromarray(np.where(smooth > level, 0, 255).astype(np.uint8))
    image, draw = canvas()
    gap, width = int(rng.integers(5, 14)), pen(rng) - 1
    for offset in range(-CANVAS, 2 * CANVAS, gap):
        draw.line(
            [(offset, 0), (offset + CANVAS * float(rng.uniform(-0.5, 0.5)), CANVAS)], fill=0, width=width
        )
        if kind == 2:
            draw.line([(0, offset), (CANVAS, offset)], fill=0, width=width)
    return image.rotate(float(rng.uniform(0, 180)), fillcolor=255)


def speckle(rng: np.random.Generator) -> Image.Image:
    """Speckle at a random density."""
    dots = rng.random((CANVAS, CANVAS)) < rng.uniform(0.05, 0.5)
    return Image.fromarray(np.where(dots, 0, 255).astype(np.uint8))


def framed(image: Image.Image) -> np.ndarray:
    """A drawing, dark ink on light paper, as the network sees an upload of it: inverted and
    framed (all zero where the service would refuse it as blank)."""
    ink = 255.0 - np.asarray(image, dtype=np.float32)
    if ink.max() - ink.min() < BLANK_CONTRAST:
        return np.zeros(SIGNATURE.input.size, dtype=np.uint8)
    frame: np.ndarray = np.clip(to_mnist_frame(ink - ink.min()), 0, 255).round().astype(np.uint8)
    return frame


def fragment(rng: np.random.Generator, digits: torch.Tensor) -> np.ndarray:
    """Near a digit and none: halves of two digits spliced, a digit's patches shuffled, or two
    digits overlaid with one turned."""
    a = digits[int(rng.integers(len(digits)))].numpy()
    b = digits[int(rng.integers(len(digits)))].numpy()
    kind, (height, width) = int(rng.integers(3)), a.shape
    if kind == 0:
        across = rng.random() < 0.5
        image = (
            np.concatenate([a[: height // 2], b[height // 2 :]])
            if across
            else np.concatenate([a[:, : width // 2], b[:, width // 2 :]], axis=1)
        )
    elif kind == 1:  # a 4 x 4 grid of patches, shuffled (the frame's edges, past the grid, kept)
        ph, pw = height // 4, width // 4
        grid = a[: 4 * ph, : 4 * pw].reshape(4, ph, 4, pw).transpose(0, 2, 1, 3).reshape(16, ph, pw)
        image = a.copy()
        image[: 4 * ph, : 4 * pw] = (
            grid[rng.permutation(16)].reshape(4, 4, ph, pw).transpose(0, 2, 1, 3).reshape(4 * ph, 4 * pw)
        )
    else:
        image = np.maximum(a, np.rot90(b, int(rng.integers(1, 4))))
    if not image.any():
        return np.zeros(SIGNATURE.input.size, dtype=np.uint8)
    return framed(Image.fromarray(255 - image.astype(np.uint8)).resize((CANVAS, CANVAS)))


DRAWINGS: dict[str, Drawing] = {
    "strokes": strokes,
    "curves": curves,
    "shapes": shapes,
    "glyphs": glyphs,
    "typefaces": typefaces,
    "pen_letters": pen_letters,
    "textures": textures,
    "speckle": speckle,
}
# Every family: the drawings, and fragments of digits (which need the digits to cut up).
FAMILIES = (*DRAWINGS, "fragments")
# Each family's own random stream under a seed, fixed once given: a family added later takes a new
# number, so the others keep drawing the same images.
STREAMS = {
    "strokes": 0, "curves": 1, "shapes": 2, "glyphs": 3, "typefaces": 4, "textures": 5, "speckle": 6,
    "fragments": 7, "pen_letters": 8,
}  # fmt: skip


def drawn(family: str, count: int, seed: int, digits: torch.Tensor) -> torch.Tensor:
    """`count` non-digits of one family (uint8, count x 28 x 28), the same for the same seed."""
    if family not in FAMILIES:
        raise ValueError(f"unknown outlier family {family!r} (known: {', '.join(FAMILIES)})")
    rng = np.random.default_rng([seed, STREAMS[family]])
    if family == "fragments":
        images = [fragment(rng, digits) for _ in range(count)]
    else:
        images = [framed(DRAWINGS[family](rng)) for _ in range(count)]
    stacked = np.stack(images) if images else np.zeros((0, *SIGNATURE.input.size), dtype=np.uint8)
    return torch.from_numpy(stacked)


def inked(images: torch.Tensor) -> torch.Tensor:
    """The images with any ink: those the service would not refuse as blank."""
    return images[(images.flatten(1) > 0).any(dim=1)]


def pool(families: tuple[str, ...], count: int, seed: int, digits: torch.Tensor) -> torch.Tensor:
    """`count` non-digits, as many of each family as of the others, blank ones left out."""
    per = -(-count // len(families)) if families else 0
    images = torch.cat([drawn(family, per, seed, digits) for family in families]) if families else None
    if images is None:
        return torch.zeros((0, *SIGNATURE.input.size), dtype=torch.uint8)
    return inked(images)[:count]
