"""Log lines that a client can make the server write again and again (a storm of refusals, each a
warning) are throttled: the first of a kind is written, then at most one every interval, saying how
many like it were left out, so a storm costs a few lines instead of thousands."""

import logging
import time
from collections.abc import Callable


class Throttled:
    """One logger's repeated warnings, grouped by the message's template (its `%s` form) and the
    kind of event the caller names (a status, an error's class), so that a storm of one kind
    never hides another."""

    def __init__(
        self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger, self.interval_s, self.clock = logger, interval_s, clock
        self._last: dict[tuple[str, str], float] = {}  # (kind, template) -> its last line's time
        self._left_out: dict[tuple[str, str], int] = {}

    def warning(self, kind: str, template: str, *args: object) -> None:
        now, key = self.clock(), (kind, template)
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return
        left_out = self._left_out.pop(key, 0)
        self._last[key] = now
        if left_out:
            template += f" (and {left_out} more like it in the last {now - (last or now):.0f} s)"
        self.logger.warning(template, *args)
