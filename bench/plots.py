"""Plots of benchmark tables as self-contained SVG: no plotting library, no fonts or scripts from
elsewhere, so the GPU machine (no matplotlib, no network) draws its own and the docs show them
offline. Two kinds: lines of y against x for each series, and bars."""

import datetime
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

WIDTH, HEIGHT = 440, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 36, 48
# Colour-blind-safe (Okabe and Ito), in the order series are drawn.
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
FONT = 'font-family="sans-serif" font-size="11"'
MIDDLE = f'text-anchor="middle" {FONT}'


@dataclass(frozen=True)
class Panel:
    """One chart's SVG body, drawn in a WIDTH x HEIGHT box."""

    body: str


def _ticks(low: float, high: float, log: bool) -> list[float]:
    """Round values spanning [low, high]: powers of ten on a log axis, 1-2-5 steps on a linear one."""
    if log:
        return [10.0**e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)]
    span = high - low or abs(high) or 1.0
    raw = span / 5
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    first = math.floor(low / step) * step
    # Rounded first: float error must not add a tick past the data.
    return [first + i * step for i in range(math.ceil(round((high - first) / step, 9)) + 1)]


def _plottable(points: Sequence[tuple[float, float]], log_x: bool, log_y: bool) -> list[tuple[float, float]]:
    """The points an axis can show: finite, and positive on a log axis (a cell with no answers has
    a p99 of 0 or NaN)."""
    return [
        (x, y)
        for x, y in points
        if math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x) and (y > 0 or not log_y)
    ]


def _label(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


class _Axes:
    """Data to pixels for one panel, and the frame, ticks and labels around it."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], log_x: bool, log_y: bool) -> None:
        self.log_x, self.log_y = log_x, log_y
        # On a log axis the measured values themselves (clients, batch sizes) are the ticks.
        distinct = sorted(set(xs))
        self.x_ticks = distinct if log_x and len(distinct) > 1 else _ticks(min(xs), max(xs), log_x)
        low_y = min(ys) if log_y else 0.0
        self.y_ticks = _ticks(low_y, max(ys) if ys else 1.0, log_y)

    def _scale(self, value: float, ticks: list[float], log: bool, size: float) -> float:
        low, high = ticks[0], ticks[-1]
        if log:
            value, low, high = math.log10(value), math.log10(low), math.log10(high)
        return (value - low) / ((high - low) or 1.0) * size

    def x(self, value: float) -> float:
        return LEFT + self._scale(value, self.x_ticks, self.log_x, WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return HEIGHT - BOTTOM - self._scale(value, self.y_ticks, self.log_y, HEIGHT - TOP - BOTTOM)

    def frame(self, title: str, x_label: str, y_label: str, x_ticks: bool = True) -> list[str]:
        parts = [
            f'<text x="{WIDTH / 2}" y="18" {MIDDLE} font-weight="bold">{escape(title)}</text>',
            f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" {MIDDLE}>{escape(x_label)}</text>',
            f'<text transform="translate(14 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" text-anchor="middle" '
            f"{FONT}>{escape(y_label)}</text>",
        ]
        for tick in self.y_ticks:
            y = self.y(tick)
            parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
            parts.append(
                f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{_label(tick)}</text>'
            )
        if x_ticks:
            for tick in self.x_ticks:
                x = self.x(tick)
                parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" {MIDDLE}>{_label(tick)}</text>')
        parts.append(
            f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
            'fill="none" stroke="#888"/>'
        )
        return parts


def lines(
    title: str,
    x_label: str,
    y_label: str,
    series: dict[str, Sequence[tuple[float, float]]],
    log_x: bool = False,
    log_y: bool = False,
) -> Panel:
    """Each series as a line with its points marked, and a legend in the upper left."""
    series = {name: _plottable(points, log_x, log_y) for name, points in series.items()}
    series = {name: points for name, points in series.items() if points}
    if not series:
        return Panel(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" {MIDDLE}>{escape(title)}: nothing to show</text>'
        )
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    axes = _Axes(xs, ys, log_x, log_y)
    parts = axes.frame(title, x_label, y_label)
    for i, (name, points) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{axes.x(x):.1f},{axes.y(y):.1f}" for x, y in sorted(points))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in points:
            parts.append(f'<circle cx="{axes.x(x):.1f}" cy="{axes.y(y):.1f}" r="3" fill="{colour}"/>')
        legend_y = TOP + 14 + 14 * i
        parts.append(f'<rect x="{LEFT + 8}" y="{legend_y - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{LEFT + 22}" y="{legend_y + 1}" {FONT}>{escape(name)}</text>')
    return Panel("\n".join(parts))


def bars(title: str, y_label: str, values: Sequence[tuple[str, float]]) -> Panel:
    """One bar per (label, value), its value written above it."""
    values = [(label, value) for label, value in values if math.isfinite(value)]
    if not values:
        return Panel(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" {MIDDLE}>{escape(title)}: nothing to show</text>'
        )
    axes = _Axes([0.0, 1.0], [v for _, v in values], False, False)
    parts = axes.frame(title, "", y_label, x_ticks=False)
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(values))
    for i, (label, value) in enumerate(values):
        x, top = LEFT + slot * (i + 0.2), axes.y(value)
        colour = COLOURS[i % len(COLOURS)]
        parts.append(
            f'<rect x="{x:.1f}" y="{top:.1f}" width="{slot * 0.6:.1f}" height="{HEIGHT - BOTTOM - top:.1f}" '
            f'fill="{colour}"/>'
        )
        centre = x + slot * 0.3
        parts.append(f'<text x="{centre:.1f}" y="{top - 4:.1f}" {MIDDLE}>{value:.3g}</text>')
        parts.append(f'<text x="{centre:.1f}" y="{HEIGHT - BOTTOM + 14}" {MIDDLE}>{escape(label)}</text>')
    return Panel("\n".join(parts))


def write(path: Path, panels: Sequence[Panel], caption: str = "") -> Path:
    """The panels side by side in one SVG file (and a caption under them: the date, commit, machine)."""
    extra = 20 if caption else 0
    width, height = WIDTH * max(1, len(panels)), HEIGHT + extra
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for i, panel in enumerate(panels):
        parts.append(f'<g transform="translate({WIDTH * i} 0)">\n{panel.body}\n</g>')
    if caption:
        parts.append(f'<text x="8" y="{height - 6}" {FONT} fill="#555">{escape(caption)}</text>')
    parts.append("</svg>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def caption(machine: str) -> str:
    """When, at which commit and on what a figure was measured: every plot carries it."""
    # A copy without git (the GPU machine's) is told its commit in BENCH_COMMIT.
    commit = os.environ.get("BENCH_COMMIT", "")
    try:
        commit = (
            commit
            or subprocess.run(
                ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown commit"
    return f"{datetime.date.today().isoformat()}, {commit}, {machine}"


def machine() -> str:
    """This machine in a few words: its CPU model and the cores this process may use."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores of {model}"
