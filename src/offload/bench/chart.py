"""A latency-over-time chart as a PNG, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import math
from pathlib import Path

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
