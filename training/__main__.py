"""`python -m training`: train a digit network and save it as a checkpoint.

Prints the tutorial's lines (or a progress bar on a terminal); `--events FILE` also writes one JSON
object per line for programs (models/events.py), and with `--events -` stdout carries only those
(text goes to stderr; `--quiet` drops it).
"""

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from models.checkpoint import CheckpointError
from models.events import ErrorEvent, ProgressEvent, TrainingEvent
from models.hyperparameters import (
    RECIPES,
    Hyperparameters,
    bounds_of,
    cli_flag,
    hyperparameter_fields,
    value_type,
)
from training.data import DataError
from training.loop import TrainConfig, run


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def checked(spec: dataclasses.Field[Any]) -> Callable[[str], Any]:
    """The argparse type of one hyperparameter: its value type, within its bounds."""
    kind, bounds = value_type(spec), bounds_of(spec)

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        if problem := bounds.problem(value):
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def default_text(name: str) -> str:
    """`default: 53113`, or `tutorial: 32, accurate: 128` where recipes differ, for help texts."""
    defaults = {
        recipe: preset.presets.get(name, getattr(Hyperparameters, name)) for recipe, preset in RECIPES.items()
    }
    if len(set(defaults.values())) == 1:
        return f"default: {next(iter(defaults.values()))}"
    return ", ".join(f"{recipe}: {value}" for recipe, value in defaults.items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description="Train an MNIST digit network.")
    hyper = parser.add_argument_group("hyperparameters (recorded in the checkpoint's metadata)")
    for spec in hyperparameter_fields():
        bounds = bounds_of(spec)
        text = bounds.help if spec.default is None else f"{bounds.help} ({default_text(spec.name)})"
        if bounds.choices:
            hyper.add_argument(cli_flag(spec.name), choices=bounds.choices, help=text)
        else:
            hyper.add_argument(cli_flag(spec.name), type=checked(spec), help=text)
    parser.add_argument("--test-batch-size", type=positive_int, default=1000)
    parser.add_argument(
        "--log-interval", type=positive_int, default=100, help="batches between progress reports"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument(
        "--data-dir", help="folder with the MNIST IDX files (else $MNIST_DATA_DIR, ./data, then a download)"
    )
    parser.add_argument("--out", default="mnist_cnn.pt", help="checkpoint path (default: mnist_cnn.pt)")
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
    # Every TrainConfig field is a flag of the same name; a flag not given keeps the recipe's value.
    overrides = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(TrainConfig)}
    events: TextIO | None = None
    text: TextIO | None = sys.stdout
    reporter = Reporter(None, None)
    try:
        if args.events == "-":
            events, text = sys.stdout, sys.stderr
        elif args.events:
            events = open(args.events, "w")  # noqa: SIM115 - closed in finally
        reporter = Reporter(None if args.quiet else text, events)
        config = TrainConfig.from_recipe(**overrides)
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
