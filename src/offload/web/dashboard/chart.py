"""The overview's throughput chart: an inline SVG drawn on the server (no script, no
chart library), one pair of bars per minute."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup

#: The drawing's size in SVG units (it scales to the page's width).
WIDTH, HEIGHT = 720, 180
_LEFT, _BOTTOM, _TOP = 36, 22, 8


@dataclass(frozen=True, slots=True)
class Minute:
    """One minute of history: when it started (epoch seconds) and what ended in it."""

    start: float
    succeeded: int
    failed: int


def _clock(epoch: float) -> str:
    return f"{datetime.fromtimestamp(epoch, UTC):%H:%M}"


def _scale(peak: int) -> int:
    """A round top for the y axis, at least `peak`: 1, 2, 5, 10, 20, 50 …"""
    base = 1
    while True:
        for step in (1, 2, 5):
            if base * step >= peak:
                return base * step
        base *= 10


def throughput_svg(minutes: Sequence[Minute]) -> Markup:
    """The chart of `minutes` (oldest first): succeeded bars in green, failed in red on top
    of them, the y axis in jobs per minute, the x axis in UTC clock times."""
    peak = max((m.succeeded + m.failed for m in minutes), default=0)
    top = _scale(max(peak, 1))
    plot_w, plot_h = WIDTH - _LEFT - 4, HEIGHT - _BOTTOM - _TOP
    slot = plot_w / max(len(minutes), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="Jobs finished per minute: {sum(m.succeeded for m in minutes)} succeeded, '
        f'{sum(m.failed for m in minutes)} failed" data-testid="throughput-chart">',
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{WIDTH - 4}" '
        f'y2="{_TOP + plot_h}"/>',
    ]
    for value in (0, top / 2, top) if top > 1 else (0, top):
        y = _TOP + plot_h - plot_h * value / top
        parts.append(
            f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - 4}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>'
        )
    for i, m in enumerate(minutes):
        x = _LEFT + i * slot + slot * 0.15
        w = max(slot * 0.7, 1)
        ok_h = plot_h * m.succeeded / top
        bad_h = plot_h * m.failed / top
        base = _TOP + plot_h
        label = f"{_clock(m.start)}: {m.succeeded} succeeded, {m.failed} failed"
        parts.append(f"<g><title>{label}</title>")
        if m.succeeded:
            parts.append(
                f'<rect class="ok" x="{x:.1f}" y="{base - ok_h:.1f}" width="{w:.1f}" '
                f'height="{ok_h:.1f}"/>'
            )
        if m.failed:
            parts.append(
                f'<rect class="bad" x="{x:.1f}" y="{base - ok_h - bad_h:.1f}" width="{w:.1f}" '
                f'height="{bad_h:.1f}"/>'
            )
        parts.append("</g>")
        if i % 10 == 0 or i == len(minutes) - 1:
            anchor = "end" if i == len(minutes) - 1 and i else "middle"
            parts.append(
                f'<text class="tick" x="{x + w / 2:.1f}" y="{HEIGHT - 6}" '
                f'text-anchor="{anchor}">{_clock(m.start)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
