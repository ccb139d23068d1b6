"""How much a few hundred corrections should weigh: the tutorial's recipe trained on MNIST plus
corrections of one style the model gets wrong, at several `feedback_weight`s (times each correction
is seen per epoch), and once with every correction mislabelled; each against the same recipe and seed
trained without corrections, as the service's gate (app/jobs/promotion.py) would judge it.

The style is digits photographed on ruled paper (tests/styles.py). The corrections are built from
MNIST's training digits and go through the service's own preprocessing, as `POST /feedback` keeps
them; the figures are on ruled-paper digits built from MNIST's test digits, which no choice here saw,
and on MNIST's test set. Each run is one `python -m training --feedback EXPORT --use-feedback`; a
row is the median over its seeds, and how many of its runs the gate would promote.

    MNIST_DATA_DIR=../shared/mnist python -m bench.feedback_weight [--corrections 300]
        [--weights 1,3,10,30] [--mislabelled-weight 10] [--seeds 53113] [--tests 1000] [--json F]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.config import Settings
from app.jobs.promotion import Outcome, PromoteRule, judge
from app.predict.preprocess import mnist_pixels
from bench import plots
from models.checkpoint import load_checkpoint
from models.comparison import Standing
from models.feedback_set import FeedbackSet
from models.signature import SIGNATURE
from tests.images import encode
from tests.styles import ruled_paper
from training.data import load_mnist
from training.loop import feedback_figures


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
            (rng.bytes(8).hex(), as_served(ruled_paper(mnist.train_images[i], rng)).tobytes(), label)
        )
    return FeedbackSet.of_items(items)


def style_tests(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    mnist = load_mnist()
    rng = np.random.default_rng(10**6)
    pixels = np.stack([as_served(ruled_paper(mnist.test_images[i], rng)) for i in range(count)])
    return SIGNATURE.input.normalize(torch.from_numpy(pixels).float().unsqueeze(1)), mnist.test_labels[
        :count
    ].long()


def trained(export: Path | None, weight: int, seed: int, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "training", "--quiet", "--recipe", "tutorial", "--seed", str(seed)]
    command += ["--out", str(out)]
    if export is not None:
        command += ["--feedback", str(export), "--use-feedback", "--feedback-weight", str(weight)]
    subprocess.run(command, check=True)
    return load_checkpoint(out).metadata


def ruled_accuracy(out: Path, tests: tuple[torch.Tensor, torch.Tensor]) -> float:
    images, labels = tests
    with torch.inference_mode():
        return round(100 * float((load_checkpoint(out).model(images).argmax(1) == labels).float().mean()), 2)


def verdict(challenger: dict[str, Any], without: Path, export: Path) -> tuple[bool, str]:
    """What if_better says of the challenger against the model trained without corrections, measured
    on the challenger's held-out corrections first, as the service measures the active model."""
    checkpoint = load_checkpoint(without)
    champion = dict(checkpoint.metadata)
    with torch.inference_mode():
        champion["feedback_heldout"] = feedback_figures(
            checkpoint.model, FeedbackSet.from_zip(export), torch.device("cpu"), 1000
        )
    tolerance = Settings().promote_mnist_tolerance
    judged = judge(PromoteRule.IF_BETTER, None, Standing.of(challenger), Standing.of(champion), tolerance)
    return judged.outcome is Outcome.PROMOTE, judged.reason or ""


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corrections", type=int, default=300)
    parser.add_argument("--weights", default="1,3,10,30", help="weights of the right corrections")
    parser.add_argument("--mislabelled-weight", type=int, default=10, help="0: no mislabelled row")
    parser.add_argument("--seeds", default="53113", help="training seeds; a row is their median")
    parser.add_argument("--tests", type=int, default=1000, help="ruled-paper digits from the test set")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench/feedback_weight.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    tests = style_tests(args.tests)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        right, wrong = folder / "right.zip", folder / "wrong.zip"
        right.write_bytes(corrections(args.corrections, False, seed=1).to_zip())
        wrong.write_bytes(corrections(args.corrections, True, seed=1).to_zip())
        configs: list[tuple[str, int, Path | None]] = [("none", 0, None)]
        configs += [("right", int(weight), right) for weight in args.weights.split(",")]
        if args.mislabelled_weight:
            configs.append(("mislabelled", args.mislabelled_weight, wrong))
        for seed in seeds:
            without = folder / f"none-0-{seed}.pt"
            for name, weight, export in configs:
                out = folder / f"{name}-{weight}-{seed}.pt"
                metadata = trained(export, weight, seed, out)
                run = {
                    "corrections": name,
                    "weight": weight,
                    "seed": seed,
                    "ruled_paper_accuracy": ruled_accuracy(out, tests),
                    "mnist_accuracy": metadata["test_accuracy"],
                    "heldout_corrections_accuracy": (metadata.get("feedback_heldout") or {}).get("accuracy"),
                    "training_seconds": metadata["training_seconds"],
                }
                if export is not None:
                    run["promoted"], run["reason"] = verdict(metadata, without, export)
                runs.append(run)
                print(json.dumps(run), flush=True)
    rows = []
    for name, weight, export in configs:
        mine = [run for run in runs if run["corrections"] == name and run["weight"] == weight]
        rows.append(
            {
                "corrections": name,
                "weight": weight,
                **{
                    figure: median([run[figure] for run in mine])
                    for figure in (
                        "ruled_paper_accuracy",
                        "mnist_accuracy",
                        "heldout_corrections_accuracy",
                        "training_seconds",
                    )
                },
                "promoted": None if export is None else sum(run["promoted"] for run in mine),
                "runs": len(mine),
            }
        )
    print()
    caption = plots.caption(plots.machine())
    print(
        f"{caption}; {args.corrections} corrections, {args.tests} ruled-paper test digits, "
        f"median of {len(seeds)} seed(s)"
    )
    print()
    print("| corrections | weight | ruled-paper test digits | MNIST test set | held-out corrections ", end="")
    print("| promoted by the gate | training, s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        heldout = (
            "" if r["heldout_corrections_accuracy"] is None else f"{r['heldout_corrections_accuracy']:.2f}%"
        )
        promoted = "" if r["promoted"] is None else f"{r['promoted']} of {r['runs']}"
        figures = f"{r['ruled_paper_accuracy']:.2f}% | {r['mnist_accuracy']:.2f}% | {heldout} | {promoted}"
        print(f"| {r['corrections']} | {r['weight']} | {figures} | {r['training_seconds']:.0f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"caption": caption, "rows": rows, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
