"""Charts as PNGs, drawn with Pillow (no plotting library needed): latency over time, and
lines of a figure against a count (throughput against hosts)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import ImageDraw

#: Colours of the series, in order.
COLOURS = [(214, 69, 65), (39, 119, 190), (60, 160, 90), (150, 90, 200)]


def latency_chart(
    path: Path,
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    marks: list[tuple[float, str]] | None = None,
    size: tuple[int, int] = (1000, 520),
) -> None:
    """Scatter of (seconds, milliseconds) points per series, log-scaled latency axis.

    Args:
        series: label -> points; a point with a NaN latency is drawn as an error (x).
        marks: vertical lines (seconds, label), e.g. where a burst starts.
    """
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 70, 20, 40, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    points = [p for pts in series.values() for p in pts]
    t_max = max((t for t, _ in points), default=1.0) or 1.0
    finite = [ms for _, ms in points if math.isfinite(ms) and ms > 0]
    lo = 10 ** math.floor(math.log10(min(finite, default=1.0)))
    hi = 10 ** math.ceil(math.log10(max(finite, default=10.0)))
    hi = max(hi, lo * 10)

    def x(t: float) -> float:
        return left + (width - left - right) * t / t_max

    def y(ms: float) -> float:
        span = math.log10(hi) - math.log10(lo)
        return top + (height - top - bottom) * (1 - (math.log10(ms) - math.log10(lo)) / span)

    draw.text((left, 12), title, fill="black")
    decade = lo
    while decade <= hi:
        draw.line([(left, y(decade)), (width - right, y(decade))], fill=(225, 225, 225))
        draw.text((8, y(decade) - 6), f"{decade:g} ms", fill="black")
        decade *= 10
    for second in range(0, int(t_max) + 1, max(1, int(t_max) // 10)):
        draw.text((x(second) - 4, height - bottom + 8), f"{second}s", fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for t, label in marks or []:
        draw.line([(x(t), top), (x(t), height - bottom)], fill=(120, 120, 120), width=1)
        draw.text((x(t) + 3, top + 3), label, fill=(90, 90, 90))
    for n, (label, pts) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        for t, ms in pts:
            if math.isfinite(ms) and ms > 0:
                cx, cy = x(t), y(min(ms, hi))
                draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
            else:  # an error or timeout: a cross at the top edge
                cx, cy = x(t), top + 6
                draw.line([(cx - 4, cy - 4), (cx + 4, cy + 4)], fill=colour, width=2)
                draw.line([(cx - 4, cy + 4), (cx + 4, cy - 4)], fill=colour, width=2)
        lx = width - right - 260
        ly = top + 10 + 16 * n
        draw.rectangle([lx, ly + 3, lx + 10, ly + 13], fill=colour)
        draw.text((lx + 16, ly + 2), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least `value` (> 0);
    1.0 for anything not above zero."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(power * step for step in (1.0, 2.0, 2.5, 5.0, 10.0) if power * step >= value)


def line_chart(
    path: Path,
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_ticks: Sequence[float] = (),
    dashed: Collection[str] = (),
    size: tuple[int, int] = (1000, 520),
) -> None:
    """Lines through (x, y) points per series, linear axes from zero, a dot at each point.

    Args:
        series: label -> points (drawn in x order); NaN and infinite values are skipped.
        x_ticks: the x values to label (default: every x of the points).
        dashed: labels of series drawn dashed and grey (a reference, e.g. an ideal).
    """
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 80, 20, 40, 56
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    clean = {
        label: sorted((x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y))
        for label, pts in series.items()
    }
    xs = [x for pts in clean.values() for x, _ in pts]
    x_max = nice_max(max(xs, default=1.0)) if not x_ticks else max(x_ticks) * 1.04
    y_max = nice_max(max((y for pts in clean.values() for _, y in pts), default=1.0))

    def x(v: float) -> float:
        return left + (width - left - right) * v / x_max

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - v / y_max)

    draw.text((left, 12), title, fill="black")
    for step in range(6):
        v = y_max * step / 5
        draw.line([(left, y(v)), (width - right, y(v))], fill=(225, 225, 225))
        draw.text((8, y(v) - 6), f"{v:,.0f}", fill="black")
    for v in x_ticks or sorted(set(xs)):
        draw.line([(x(v), height - bottom), (x(v), height - bottom + 4)], fill="black")
        draw.text((x(v) - 4, height - bottom + 8), f"{v:g}", fill="black")
    draw.text(((width - right + left) / 2 - 20, height - 20), x_label, fill="black")
    draw.text((8, top - 22), y_label, fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    n = 0
    for label, pts in clean.items():
        grey = label in dashed
        colour = (150, 150, 150) if grey else COLOURS[n % len(COLOURS)]
        n += 0 if grey else 1
        scaled = [(x(a), y(b)) for a, b in pts]
        for a, b in itertools.pairwise(scaled):
            _segment(draw, a, b, colour, dashed=grey)
        for cx, cy in scaled:
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        ly = top + 10 + 16 * list(clean).index(label)
        draw.rectangle([left + 12, ly + 3, left + 22, ly + 13], fill=colour)
        draw.text((left + 28, ly + 2), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _segment(
    draw: ImageDraw.ImageDraw,
    a: tuple[float, float],
    b: tuple[float, float],
    colour: tuple[int, int, int],
    *,
    dashed: bool,
) -> None:
    """A line from `a` to `b`, solid or in 8-pixel dashes."""
    if not dashed:
        draw.line([a, b], fill=colour, width=2)
        return
    length = math.dist(a, b)
    for start in range(0, int(length), 16):
        f0, f1 = start / length, min(length, start + 8) / length
        p0 = (a[0] + (b[0] - a[0]) * f0, a[1] + (b[1] - a[1]) * f0)
        p1 = (a[0] + (b[0] - a[0]) * f1, a[1] + (b[1] - a[1]) * f1)
        draw.line([p0, p1], fill=colour, width=2)
