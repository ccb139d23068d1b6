"""`python -m bench.not_a_digit`: how well the not-a-digit flag holds on kinds of non-digit that no
training run draws, sent as uploads through the service's own preprocessing.

Kinds: letters and symbols in the machine's DejaVu fonts (Debian's fonts-dejavu-core) and in 61
more faces (Debian's fonts-urw-base35, fonts-liberation and fonts-freefont-ttf): no training
family draws in any of these fonts, and the recipe at 27b3113 was fixed before the 61 were first
measured. Letters drawn with a pen in Hershey's cursive hand, which `pen_letters` leaves out. Then
crops of photographs and of printed text (scikit-image's sample images: `pip install -e .[bench]`),
smileys, and scribbles of random points. For each model: its accuracy, the
share of MNIST's test digits its own threshold flags, and per kind the share flagged and the AUROC
against the test digits.

    python -m bench.not_a_digit [--checkpoint PATH ...] [--leave-out FAMILY[,FAMILY] ...]

`--leave-out` trains the default recipe once per argument with those outlier families left out
(its values, the tutorial's seed), so the family left out is measured as a kind the model
never saw (the card's figures for it); with neither option, the default recipe is trained once.
"""

import argparse
import glob
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from app.errors import BlankImage
from app.predict.preprocess import mnist_pixels
from models.checkpoint import load_checkpoint
from models.not_a_digit import auroc, flagged_percent, ood_scores
from models.signature import SIGNATURE
from training.data import load_mnist
from training.loop import TrainConfig, run, to_model_input
from training.outliers import CHARACTERS, FAMILIES, hand, pen_stroked

KIND_SAMPLES = 600
SEED = 20261207
DEJAVU = ("/usr/share/fonts/truetype/dejavu/*.ttf",)
OTHER_FACES = (
    "/usr/share/fonts/opentype/urw-base35/*.otf",
    "/usr/share/fonts/truetype/liberation/*.ttf",
    "/usr/share/fonts/truetype/freefont/*.ttf",
)
SYMBOL_FONTS = ("StandardSymbolsPS", "D050000L")  # Greek and dingbats in place of letters
PHOTOS = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "brick", "grass", "gravel",
    "hubble_deep_field", "cell", "retina", "cat", "clock",
)  # fmt: skip
PRINTED = ("page", "text")


def png(image: Image.Image) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def uploaded(images: Iterator[Image.Image]) -> torch.Tensor:
    """The grey levels the service would give the network for each image sent as a PNG (images it
    would refuse as blank are left out)."""
    kept = []
    for image in images:
        try:
            kept.append(np.clip(mnist_pixels(png(image)), 0, 255))
        except BlankImage:
            continue
    if not kept:
        return torch.zeros((0, *SIGNATURE.input.size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(kept).round().astype(np.uint8))


def letters(patterns: tuple[str, ...]) -> Iterator[Image.Image]:
    found = sorted(path for pattern in patterns for path in glob.glob(pattern))
    faces = [path for path in found if not any(name in path for name in SYMBOL_FONTS)]
    if patterns == OTHER_FACES and len(faces) != 61:
        print(
            f"# letters: {len(faces)} of the 61 other faces found (apt-get install fonts-urw-base35 "
            "fonts-liberation fonts-freefont-ttf)",
            file=sys.stderr,
        )
    for path in faces:
        font = ImageFont.truetype(path, 48)
        for character in CHARACTERS:
            image = Image.new("L", (64, 64), 255)
            ImageDraw.Draw(image).text((32, 32), character, font=font, fill=0, anchor="mm")
            yield image


def pen_letters(rng: np.random.Generator) -> Iterator[Image.Image]:
    """Every character three times in Hershey's cursive hand, the one pen hand no training family
    draws in, as `pen_letters` draws its own hands."""
    strokes = hand("cursive")
    for _ in range(3):
        for character in CHARACTERS:
            if strokes[character]:
                yield pen_stroked(rng, strokes[character])


def crops(names: tuple[str, ...], rng: np.random.Generator, count: int) -> Iterator[Image.Image]:
    import skimage.data

    pictures = [Image.fromarray(getattr(skimage.data, name)()).convert("L") for name in names]
    for _ in range(count):
        picture = pictures[int(rng.integers(len(pictures)))]
        side = int(rng.integers(24, min(picture.size) // 2))
        x, y = (int(rng.integers(0, limit - side)) for limit in picture.size)
        yield picture.crop((x, y, x + side, y + side))


def smileys(rng: np.random.Generator, count: int) -> Iterator[Image.Image]:
    for _ in range(count):
        image = Image.new("L", (64, 64), 255)
        draw = ImageDraw.Draw(image)
        r, c, w = float(rng.uniform(20, 28)), 32.0, int(rng.integers(2, 5))
        draw.ellipse((c - r, c - r, c + r, c + r), outline=0, width=w)
        for dx in (-r / 2.5, r / 2.5):
            draw.ellipse((c + dx - 3, c - r / 3 - 3, c + dx + 3, c - r / 3 + 3), fill=0)
        draw.arc((c - r / 2, c - r / 4, c + r / 2, c + r / 1.6), 20, 160, fill=0, width=w)
        yield image


def scribbles(rng: np.random.Generator, count: int) -> Iterator[Image.Image]:
    for _ in range(count):
        image = Image.new("L", (64, 64), 255)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            points = [tuple(rng.uniform(8, 56, 2)) for _ in range(int(rng.integers(3, 8)))]
            draw.line(points, fill=0, width=int(rng.integers(3, 6)), joint="curve")
        yield image


KINDS: dict[str, Callable[[np.random.Generator], Iterator[Image.Image]]] = {
    "letters (DejaVu)": lambda rng: letters(DEJAVU),
    "letters (61 other faces)": lambda rng: letters(OTHER_FACES),
    "pen letters (cursive hand)": pen_letters,
    "photo crops": lambda rng: crops(PHOTOS, rng, KIND_SAMPLES),
    "printed text crops": lambda rng: crops(PRINTED, rng, KIND_SAMPLES),
    "smileys": lambda rng: smileys(rng, KIND_SAMPLES),
    "scribbles": lambda rng: scribbles(rng, KIND_SAMPLES),
}


def kinds() -> dict[str, torch.Tensor]:
    made = {}
    for name, draw in KINDS.items():
        images = uploaded(draw(np.random.default_rng(SEED)))
        if len(images):
            made[name] = images
        else:
            print(f"# {name}: none could be made here (fonts or scikit-image missing)", file=sys.stderr)
    return made


@torch.inference_mode()
def scores_of(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return ood_scores(
        torch.cat([model(to_model_input(part, torch.device("cpu"))) for part in images.split(1000)])
    )


def report(
    label: str, path: Path, test: torch.Tensor, labels: torch.Tensor, made: dict[str, torch.Tensor]
) -> None:
    checkpoint = load_checkpoint(path)
    model, threshold = checkpoint.model.eval(), checkpoint.not_a_digit_threshold
    card = checkpoint.metadata.get("not_a_digit") or {}
    digits = scores_of(model, test)
    with torch.inference_mode():
        accuracy = 100 * float(
            (model(to_model_input(test, torch.device("cpu"))).argmax(1) == labels).float().mean()
        )
    # The card's figures for the families the model never trained on, in a column of their own.
    unseen = ", ".join(
        f"{kind} {figures['auroc']:.3f} / {figures['flagged_percent']:.1f}%"
        for kind, figures in card.get("kinds", {}).items()
        if not figures["trained_on"]
    )
    cells = []
    for images in made.values():
        scores = scores_of(model, images)
        cells.append(f"{auroc(digits, scores):.3f} / {flagged_percent(scores, threshold):.1f}%")
    print(
        f"| {label} | {accuracy:.2f} | {flagged_percent(digits, threshold):.2f}% | "
        + " | ".join(cells)
        + f" | {unseen or '-'} |",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.not_a_digit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, action="append", default=[])
    parser.add_argument("--leave-out", action="append", default=[], metavar="FAMILY[,FAMILY]")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    mnist = load_mnist(args.data_dir)
    made = kinds()
    print(f"# {time.strftime('%Y-%m-%d')}: kinds {', '.join(f'{k} ({len(v)})' for k, v in made.items())}")
    print("| model | accuracy | test digits flagged | " + " | ".join(made) + " | families never trained on |")
    for path in args.checkpoint:
        report(str(path), path, mnist.test_images, mnist.test_labels, made)
    runs = [part.split(",") if part else [] for part in args.leave_out] or ([] if args.checkpoint else [[]])
    for left_out in runs:
        unknown = set(left_out) - set(FAMILIES)
        if unknown:
            parser.error(f"unknown families {sorted(unknown)} (known: {', '.join(FAMILIES)})")
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "mnist_cnn.pt"
            families = tuple(family for family in FAMILIES if family not in left_out)
            started = time.perf_counter()
            run(
                TrainConfig.from_recipe(
                    device="cpu", data_dir=args.data_dir, out=str(out), outlier_families=families
                )
            )
            which = "without " + ", ".join(left_out) if left_out else "every family"
            label = f"default recipe, {which} ({time.perf_counter() - started:.0f} s)"
            report(label, out, mnist.test_images, mnist.test_labels, made)
    return 0


if __name__ == "__main__":
    sys.exit(main())
