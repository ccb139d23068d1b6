"""`python -m training.evaluate CHECKPOINT`: a checkpoint's test-set figures and model card, as one
JSON object on stdout.

Training records these for every model it makes; this measures a checkpoint that has none (the
tutorial's own file, adopted as it is) or was measured on other test data, so a new model is always
compared with the serving one like with like (the server's promotion rule).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import CheckpointError, load_checkpoint
from models.device import resolve_device
from training.data import DataError, load_mnist
from training.loop import (
    answers_on,
    feedback_figures,
    log_probs_on,
    read_feedback,
    test_figures,
    to_model_input,
)
from training.not_a_digit_card import CHOICE_FIELDS, chosen_threshold, not_a_digit_card


def evaluation(
    weights: Path,
    data_dir: str | None,
    device: str = "auto",
    batch_size: int = 1000,
    feedback: str | None = None,
) -> dict[str, Any]:
    """The checkpoint's version, test accuracy and loss, the test data's record and its model card;
    with `feedback` (an export), its figures on the corrections' held-out split too."""
    where = resolve_device(device)
    checkpoint = load_checkpoint(weights, where)
    model = checkpoint.model.to(memory_format=torch.channels_last)  # as training evaluates it
    mnist = load_mnist(data_dir)
    images, labels = to_model_input(mnist.test_images, where), mnist.test_labels.long().to(where)
    results = answers_on(model, images, labels, batch_size)
    held = int(checkpoint.calibration.get("validation_samples", 0))
    figures = {
        "version": checkpoint.version,
        **test_figures(results, labels, mnist, checkpoint.temperature, held),
    }
    # The threshold training chose on its held-out digits; one chosen on the test set where it
    # recorded none (a file the tutorial's own script made, or one older than the block), and so marked.
    recorded = checkpoint.metadata.get("not_a_digit") or {}
    choice = {key: recorded[key] for key in CHOICE_FIELDS if key in recorded}
    if len(choice) < len(CHOICE_FIELDS):
        choice = chosen_threshold(None, results.log_probs)
    exposure = recorded.get("outlier_exposure") or {"weight": 0.0, "families": []}
    figures["not_a_digit"] = not_a_digit_card(
        choice,
        results.log_probs,
        mnist.test_images,
        exposure,
        lambda images: log_probs_on(model, to_model_input(images, where), batch_size),
    )
    if (corrections := read_feedback(feedback)) is not None:
        figures["feedback_heldout"] = feedback_figures(model, corrections, where, batch_size)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description="Measure a checkpoint on the MNIST test set."
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", help="folder with the MNIST IDX files (else $MNIST_DATA_DIR, ./data)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument(
        "--feedback", metavar="EXPORT", help="also measure on the held-out split of this corrections export"
    )
    args = parser.parse_args(argv)
    try:
        figures = evaluation(args.checkpoint, args.data_dir, args.device, feedback=args.feedback)
    except (CheckpointError, DataError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
