"""A training child's JSON-lines events (models/events.py) folded into its job's progress: each
epoch's test figures, the latest loss, and a loss curve of bounded length for the page."""

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, cast

from models.events import TrainingEvent

# A job's record takes training progress at most this often (a GPU reports hundreds of times a
# second), and keeps this many curve points.
PROGRESS_WRITE_S = 0.5
MAX_CURVE_POINTS = 200


class LossCurve:
    """At most MAX_CURVE_POINTS (fraction of the run, training loss) points, evenly spread over a
    run of any length: every `stride`-th report is kept; past the limit every other point goes
    and the stride doubles."""

    def __init__(self, points: list[list[float]]) -> None:
        self.points, self.stride, self.seen = points, 1, 0

    def add(self, fraction: float, loss: float) -> None:
        if self.seen % self.stride == 0:
            self.points.append([round(fraction, 4), round(loss, 5)])
            if len(self.points) > MAX_CURVE_POINTS:
                del self.points[1::2]
                self.stride *= 2
        self.seen += 1


def parse_event(line: bytes) -> TrainingEvent | None:
    """One line of the child's stdout as an event; None for anything else it printed."""
    try:
        parsed = json.loads(line)
    except ValueError:
        return None
    return cast(TrainingEvent, parsed) if isinstance(parsed, dict) and "event" in parsed else None


async def fold_events(
    lines: AsyncIterable[bytes],
    progress: dict[str, Any],
    failure: list[str],
    write: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Fold each event into `progress` and `write` it: each epoch's figures at once, training
    progress at most every PROGRESS_WRITE_S. An `error` event's message goes to `failure`."""
    loop = asyncio.get_running_loop()
    written, pending = -float("inf"), False
    curve = LossCurve(progress.setdefault("losses", []))
    async for line in lines:
        event = parse_event(line)
        if event is None:
            continue
        if event["event"] == "error":
            failure.append(str(event.get("message", "the training process reported an error")))
            continue
        if event["event"] == "progress":
            progress.update(
                epoch=event["epoch"],
                epochs=event["epochs"],
                fraction=round(event["fraction"], 4),
                loss=event["loss"],
            )
            curve.add(event["fraction"], event["loss"])
            if loop.time() - written < PROGRESS_WRITE_S:
                pending = True
                continue
        elif event["event"] == "epoch":
            figures = {name: event[name] for name in ("test_loss", "test_accuracy")}
            progress.update(epoch=event["epoch"], epochs=event["epochs"], **figures)
            progress.setdefault("history", []).append({"epoch": event["epoch"], **figures})
        else:  # start and saved: the outcome is judged from the checkpoint file itself
            continue
        written, pending = loop.time(), False
        await write(progress)
    if pending:
        await write(progress)


async def last_lines(lines: AsyncIterable[bytes], kept: deque[str]) -> None:
    """The last non-empty lines of a stream (a child's stderr: what explains a crash)."""
    async for line in lines:
        text = line.decode(errors="replace").rstrip()
        if text:
            kept.append(text)
