"""Repeated warnings a client can cause are throttled: the first of a kind, then one an interval."""

import logging

import pytest

from app.logs import Throttled


def test_a_storm_of_one_kind_of_warning_costs_a_line_an_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    throttled = Throttled(logging.getLogger("app.test"), interval_s=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="app.test")
    for n in range(9_700):
        now[0] = 100.0 + n * 0.001  # 9.7 s of refusals
        throttled.warning("UNAVAILABLE", "gRPC %s -> %s: %s", "ModelInfer", "UNAVAILABLE", f"busy {n}")
    throttled.warning("INTERNAL", "gRPC %s -> %s: %s", "ModelInfer", "INTERNAL", "a fault")  # never hidden
    throttled.warning("x", "another template: %s", "x")  # its own first line
    now[0] = 110.0
    throttled.warning("UNAVAILABLE", "gRPC %s -> %s: %s", "ModelInfer", "UNAVAILABLE", "busy again")
    assert caplog.messages == [
        "gRPC ModelInfer -> UNAVAILABLE: busy 0",
        "gRPC ModelInfer -> INTERNAL: a fault",
        "another template: x",
        "gRPC ModelInfer -> UNAVAILABLE: busy again (and 9699 more like it in the last 10 s)",
    ]
    now[0] = 120.0  # an interval later with nothing left out: a plain line
    throttled.warning("UNAVAILABLE", "gRPC %s -> %s: %s", "ModelInfer", "UNAVAILABLE", "quiet")
    assert caplog.messages[-1] == "gRPC ModelInfer -> UNAVAILABLE: quiet"
