"""How hard the reliability suite pushes: `make test` runs the short version, `make
test-reliability` (RELIABILITY=long) the long one. Each test picks its numbers with `scaled`."""

import os

LONG = os.environ.get("RELIABILITY") == "long"


def scaled(short: int, long: int) -> int:
    return long if LONG else short
