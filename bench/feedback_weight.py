"""How much a few hundred corrections should weigh: the tutorial's recipe trained on MNIST plus
corrections of one style the model gets wrong, at several `feedback_weight`s (times each correction
is seen per epoch), and once with every correction mislabelled.

The style is digits photographed on ruled paper (tests/styles.py). The corrections are built from
MNIST's training digits and go through the service's own preprocessing, as `POST /feedback` keeps
them; the figures are on ruled-paper digits built from MNIST's test digits, which no choice here saw,
and on MNIST's test set. Each row is one `python -m training --feedback EXPORT --use-feedback` run.

    MNIST_DATA_DIR=../shared/mnist python -m bench.feedback_weight [--corrections 300]
        [--weights 0,1,3,10,30] [--mislabelled-weight 10] [--tests 1000] [--json F]
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.predict.preprocess import mnist_pixels
from bench import plots
from models.checkpoint import load_checkpoint
from models.feedback_set import FeedbackSet
from models.signature import SIGNATURE
from tests.images import encode
from tests.styles import ruled_paper
from training.data import load_mnist


def as_served(photo: np.ndarray) -> np.ndarray:
    """The 28x28 grey levels the service makes of a photo (PNG bytes, as a client sends them)."""
    return np.clip(mnist_pixels(encode(photo)), 0, 255).round().astype(np.uint8)


def corrections(count: int, mislabelled: bool, seed: int) -> FeedbackSet:
    mnist = load_mnist()
    rng = np.random.default_rng(seed)
    items = []
    for i in rng.choice(len(mnist.train_images), count, replace=False):
        label = int(mnist.train_labels[i])
        if mislabelled:
            label = (label + int(rng.integers(1, 10))) % 10  # never the truth
        items.append(
            (secrets.token_hex(8), as_served(ruled_paper(mnist.train_images[i], rng)).tobytes(), label)
        )
    return FeedbackSet.of_items(items)


def style_tests(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    mnist = load_mnist()
    rng = np.random.default_rng(10**6)
    pixels = np.stack([as_served(ruled_paper(mnist.test_images[i], rng)) for i in range(count)])
    return SIGNATURE.input.normalize(torch.from_numpy(pixels).float().unsqueeze(1)), mnist.test_labels[
        :count
    ].long()


def trained(export: Path | None, weight: int, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "training", "--quiet", "--out", str(out)]
    if export is not None:
        command += ["--feedback", str(export), "--use-feedback", "--feedback-weight", str(weight)]
    subprocess.run(command, check=True)
    return load_checkpoint(out).metadata


def row(
    name: str, weight: int, metadata: dict[str, Any], out: Path, tests: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, Any]:
    images, labels = tests
    with torch.inference_mode():
        right = float((load_checkpoint(out).model(images).argmax(1) == labels).float().mean())
    heldout = metadata.get("feedback_heldout") or {}
    return {
        "corrections": name,
        "weight": weight,
        "ruled_paper_accuracy": round(100 * right, 2),
        "mnist_accuracy": metadata["test_accuracy"],
        "heldout_corrections_accuracy": heldout.get("accuracy"),
        "training_seconds": metadata["training_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corrections", type=int, default=300)
    parser.add_argument("--weights", default="0,1,3,10,30", help="0: MNIST alone, no corrections")
    parser.add_argument("--mislabelled-weight", type=int, default=10, help="0: no mislabelled row")
    parser.add_argument("--tests", type=int, default=1000, help="ruled-paper digits from the test set")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench/feedback_weight.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    tests = style_tests(args.tests)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        right, wrong = folder / "right.zip", folder / "wrong.zip"
        right.write_bytes(corrections(args.corrections, False, seed=1).to_zip())
        wrong.write_bytes(corrections(args.corrections, True, seed=1).to_zip())
        runs = [("right", weight, right if weight else None) for weight in map(int, args.weights.split(","))]
        if args.mislabelled_weight:
            runs.append(("mislabelled", args.mislabelled_weight, wrong))
        for name, weight, export in runs:
            out = folder / f"{name}-{weight}.pt"
            rows.append(row(name if export else "none", weight, trained(export, weight, out), out, tests))
            print(json.dumps(rows[-1]), flush=True)
    print()
    caption = plots.caption(plots.machine())
    print(f"{caption}; {args.corrections} corrections, {args.tests} ruled-paper test digits")
    print()
    print("| corrections | weight | ruled-paper test digits | MNIST test set | held-out corrections ", end="")
    print("| training, s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        heldout = (
            "" if r["heldout_corrections_accuracy"] is None else f"{r['heldout_corrections_accuracy']:.2f}%"
        )
        figures = f"{r['ruled_paper_accuracy']:.2f}% | {r['mnist_accuracy']:.2f}% | {heldout}"
        print(f"| {r['corrections']} | {r['weight']} | {figures} | {r['training_seconds']:.0f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"caption": caption, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
