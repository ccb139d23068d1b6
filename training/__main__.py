"""`python -m training`: train a digit network and save it as a checkpoint.

Prints the tutorial's lines (or a progress bar on a terminal); `--events FILE` also writes one JSON
object per line for programs (models/events.py), and with `--events -` stdout carries only those
(text goes to stderr; `--quiet` drops it).
"""

import argparse
import json
import sys
from typing import Any, TextIO

from models.checkpoint import CheckpointError
from models.cnn import ARCHITECTURES
from models.events import ErrorEvent, ProgressEvent, TrainingEvent
from training.data import DataError
from training.loop import TrainConfig, run
from training.recipes import RECIPES


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description="Train an MNIST digit network.")
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="tutorial",
        help="hyperparameter preset (default: tutorial)",
    )
    parser.add_argument("--epochs", type=positive_int, help="epochs (tutorial: 2)")
    parser.add_argument("--batch-size", type=positive_int, help="training batch size (tutorial: 32)")
    parser.add_argument("--test-batch-size", type=positive_int, default=1000)
    parser.add_argument("--lr", type=positive_float, help="learning rate (tutorial: 0.01)")
    parser.add_argument("--momentum", type=fraction, help="SGD momentum (tutorial: 0.5)")
    parser.add_argument("--seed", type=int, default=53113)
    parser.add_argument(
        "--log-interval", type=positive_int, default=100, help="batches between progress reports"
    )
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="net")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument(
        "--data-dir", help="folder with the MNIST IDX files (else $MNIST_DATA_DIR, ./data, then a download)"
    )
    parser.add_argument("--out", default="mnist_cnn.pt", help="checkpoint path (default: mnist_cnn.pt)")
    parser.add_argument("--limit-train", type=positive_int, help="train on the first N training images only")
    parser.add_argument("--events", metavar="FILE", help="write JSON-lines events here ('-': stdout)")
    parser.add_argument("--dry-run", action="store_true", help="one batch per epoch, one epoch")
    parser.add_argument("--quiet", action="store_true", help="no text output (errors still go to stderr)")
    parser.add_argument(
        "--no-cuda-graph",
        dest="cuda_graph",
        action="store_false",
        default=None,
        help="on CUDA, run each step eagerly instead of replaying it as a CUDA graph",
    )
    return parser.parse_args(argv)


class Reporter:
    """Shows training events: JSON lines, a terminal progress bar, or the tutorial's lines (an
    error event is a JSON line only: main prints its own `error:` line)."""

    def __init__(self, text: TextIO | None, events: TextIO | None) -> None:
        self.text, self.events = text, events
        self.bar = text is not None and text.isatty()

    def __call__(self, event: TrainingEvent) -> None:
        if self.events is not None:
            self.events.write(json.dumps(event) + "\n")
            self.events.flush()
        if event["event"] == "progress":
            self._progress(event)
        elif event["event"] == "epoch":
            self._line(
                f"\nTest set: Average loss: {event['test_loss']:.4f}, Accuracy: "
                f"{event['correct']}/{event['test_samples']} ({event['test_accuracy']:.2f}%)\n"
            )
        elif event["event"] == "start":
            graph = " (CUDA graph)" if event["cuda_graph"] else ""
            if "cuda_graph_error" in event:
                graph = f" (eager steps; no CUDA graph: {event['cuda_graph_error']})"
            hyper = event["hyperparameters"]
            self._line(
                f"Training {hyper['arch']} ({hyper['recipe']} recipe) on {event['device']}{graph}, "
                f"{event['train_samples']} images, {hyper['epochs']} epochs"
            )
        elif event["event"] == "saved":
            self._line(
                f"Saved {event['path']} (version {event['version']}, "
                f"test accuracy {event['test_accuracy']:.2f}%)"
            )

    def _progress(self, event: ProgressEvent) -> None:
        if self.text is None:
            return
        if self.bar:
            width = 30
            filled = int(width * event["fraction"])
            self.text.write(
                f"\rEpoch {event['epoch']}/{event['epochs']} "
                f"[{'#' * filled}{'.' * (width - filled)}] "
                f"{100 * event['fraction']:5.1f}%  loss {event['loss']:.4f}"
            )
            self.text.flush()
        else:
            self._line(
                f"Train Epoch: {event['epoch']} [{event['samples']}/{event['total']} "
                f"({100.0 * event['batch'] / event['batches']:.0f}%)]\tLoss: {event['loss']:.6f}"
            )

    def _line(self, text: str) -> None:
        if self.text is None:
            return
        if self.bar:
            self.text.write("\n")
        self.text.write(text + "\n")
        self.text.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "epochs",
            "batch_size",
            "lr",
            "momentum",
            "test_batch_size",
            "seed",
            "log_interval",
            "arch",
            "device",
            "limit_train",
            "dry_run",
            "cuda_graph",
            "data_dir",
            "out",
        )
    }
    events: TextIO | None = None
    text: TextIO | None = sys.stdout
    reporter = Reporter(None, None)
    try:
        if args.events == "-":
            events, text = sys.stdout, sys.stderr
        elif args.events:
            events = open(args.events, "w")  # noqa: SIM115 - closed in finally
        reporter = Reporter(None if args.quiet else text, events)
        config = TrainConfig.from_recipe(args.recipe, **overrides)
        run(config, reporter)
    except (ValueError, DataError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        reporter(ErrorEvent(event="error", message=str(exc)))  # programs read the reason there
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: no checkpoint written", file=sys.stderr)
        return 130
    finally:
        if events is not None and events is not sys.stdout:
            events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
