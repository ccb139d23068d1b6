"""`python -m training`: train a digit network and save it as a checkpoint.

Prints the tutorial's lines (or a progress bar on a terminal); `--events FILE` also writes one JSON
object per line for programs (models/events.py), and with `--events -` stdout carries only those
(text goes to stderr; `--quiet` drops it).

With `--nproc-per-node N` (or `--nnodes M`) it launches N ranks of itself (training/launch.py); run
by torchrun it is one rank (training/distributed.py), and only rank 0 prints, reports and saves.
"""

import argparse
import dataclasses
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from models.checkpoint import CheckpointError
from models.events import ErrorEvent, ProgressEvent, TrainingEvent
from models.hyperparameters import (
    DEFAULT_RECIPE,
    RECIPES,
    Hyperparameters,
    bounds_of,
    cli_flag,
    hyperparameter_fields,
    value_type,
)
from training import outliers
from training.data import DataError
from training.distributed import (
    World,
    die_with_parent,
    lost_contact,
    report_to_launcher,
    world_from_environment,
)
from training.launch import LaunchError, add_launch_flags, launch, report_launch_error, wants_launch
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


def build_parser() -> argparse.ArgumentParser:
    """The command line: the hyperparameters, how and where a run goes, and torchrun's launch flags."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train an MNIST digit network.",
        allow_abbrev=False,  # each rank gets the command line minus the launch flags, spelt out
    )
    hyper = parser.add_argument_group("hyperparameters (recorded in the checkpoint's metadata)")
    for spec in hyperparameter_fields():
        bounds = bounds_of(spec)
        text = bounds.help if spec.default is None else f"{bounds.help} ({default_text(spec.name)})"
        if bounds.choices:
            hyper.add_argument(cli_flag(spec.name), choices=bounds.choices, help=text)
        else:
            hyper.add_argument(cli_flag(spec.name), type=checked(spec), help=text)
    parser.add_argument(
        "--test-batch-size",
        type=positive_int,
        default=1000,
        help="batch size of each evaluation of the test set",
    )
    parser.add_argument(
        "--log-interval", type=positive_int, default=100, help="batches between progress reports"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument(
        "--data-dir", help="folder with the MNIST IDX files (else $MNIST_DATA_DIR, ./data, then a download)"
    )
    parser.add_argument("--out", default="mnist_cnn.pt", help="checkpoint path (default: mnist_cnn.pt)")
    parser.add_argument(
        "--feedback",
        metavar="EXPORT",
        help="users' corrections as exported by GET /feedback/export: the model is also measured on "
        "their held-out split",
    )
    parser.add_argument(
        "--use-feedback",
        action="store_true",
        help="also train on the corrections' training split (needs --feedback), each one "
        "--feedback-weight times an epoch",
    )
    parser.add_argument(
        "--outlier-families",
        type=families,
        metavar="FAMILY[,FAMILY]",
        help="the families of non-digits Outlier Exposure draws from, where the recipe uses it "
        f"(default: all of {','.join(outliers.FAMILIES)}); one left out is measured as a kind never seen",
    )
    parser.add_argument("--events", metavar="FILE", help="write JSON-lines events here ('-': stdout)")
    parser.add_argument("--dry-run", action="store_true", help="one batch per epoch, one epoch")
    parser.add_argument("--quiet", action="store_true", help="no text output (errors still go to stderr)")
    parser.add_argument(
        "--no-cuda-graph",
        dest="cuda_graph",
        action="store_false",
        default=None,
        help="on CUDA, run each step eagerly instead of replaying it as a CUDA graph (one process only)",
    )
    add_launch_flags(parser, positive_int)
    return parser


def families(text: str) -> tuple[str, ...]:
    named = tuple(name for name in text.split(",") if name)
    if not named:
        raise argparse.ArgumentTypeError("name at least one family")
    if len(set(named)) < len(named):
        raise argparse.ArgumentTypeError("a family is named twice")
    if unknown := [name for name in named if name not in outliers.FAMILIES]:
        raise argparse.ArgumentTypeError(
            f"unknown {', '.join(unknown)} (known: {', '.join(outliers.FAMILIES)})"
        )
    return named


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.use_feedback and not args.feedback:
        parser.error("--use-feedback needs --feedback EXPORT")
    recipe = args.recipe or DEFAULT_RECIPE
    if args.outlier_families and not RECIPES[recipe].outlier_exposure:
        parser.error(f"--outlier-families needs a recipe with Outlier Exposure: {recipe} has none")
    return args


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
            hyper, ranks = event["hyperparameters"], event["distributed"]
            where = event["device"]
            if ranks["world_size"] > 1:
                where = (
                    f"{ranks['world_size']} ranks on {ranks['nnodes']} node(s) ({ranks['backend']}, "
                    f"{event['device'].split(':')[0]}, batch {ranks['batch_size_per_rank']} per rank)"
                )
            self._line(
                f"Training {hyper['arch']} ({hyper['recipe']} recipe) on {where}{graph}, "
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
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if wants_launch(args):
        return launch_ranks(args, argv)
    return train(args, world_from_environment())


def first_line(exc: BaseException, limit: int = 200) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def launch_ranks(args: argparse.Namespace, argv: list[str]) -> int:
    """This process launches the ranks (and trains in none of them)."""
    if world_from_environment().distributed:
        print("error: already a rank of a torchrun launch: give torchrun the launch flags", file=sys.stderr)
        return 2
    try:
        launch(args, argv)
    except (LaunchError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        report_launch_error(args.events, str(exc))
        return 1
    return 0


def train(args: argparse.Namespace, world: World) -> int:
    """Train in this process: the only one, or one rank of several."""
    if world.distributed:
        die_with_parent()
    # Every TrainConfig field is a flag of the same name; a flag not given keeps the recipe's value.
    overrides = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(TrainConfig)}
    events: TextIO | None = None
    text: TextIO | None = sys.stdout
    reporter = Reporter(None, None)
    try:
        if world.is_main:
            if args.events == "-":
                events, text = sys.stdout, sys.stderr
            elif args.events:
                events = open(args.events, "w")  # noqa: SIM115 - closed in finally
            reporter = Reporter(None if args.quiet else text, events)
        config = TrainConfig.from_recipe(**overrides)
        run(config, reporter, world)
    except (ValueError, DataError, CheckpointError, OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not world.distributed:
            raise  # one process: a RuntimeError is a bug, shown with its traceback
        # A rank that lost contact with another reports it as a consequence, which the launcher
        # names only when no rank failed of its own accord. Any other RuntimeError of a rank (out
        # of memory, a bug) is its own failure, with its traceback on stderr.
        lost_peer = lost_contact(exc)
        reason = str(exc)
        if lost_peer:
            reason = f"lost contact with the other ranks ({first_line(exc)})"
        elif isinstance(exc, RuntimeError):
            traceback.print_exc()
            reason = first_line(exc)
        message = f"{world.label()}: {reason}" if world.distributed else reason
        print(f"error: {message}", file=sys.stderr)
        reporter(ErrorEvent(event="error", message=message))  # programs read the reason there
        report_to_launcher(reason, lost_peer)
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
