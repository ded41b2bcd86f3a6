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
    """One minute of history: when it started (epoch seconds) and what ended in it: failed
    for good (`failed`) or out of attempts (`dead`)."""

    start: float
    succeeded: int
    failed: int
    dead: int = 0


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


#: The plot's height, and the y of its baseline.
_PLOT_H = HEIGHT - _BOTTOM - _TOP
_BASE = _TOP + _PLOT_H


def _grid(top: int) -> list[str]:
    """The y axis: lines and labels at 0, half way and `top` jobs per minute."""
    parts = []
    for value in (0, top / 2, top) if top > 1 else (0, top):
        y = _BASE - _PLOT_H * value / top
        parts.append(
            f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - 4}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>'
        )
    return parts


def _bar(m: Minute, x: float, w: float, top: int) -> str:
    """One minute: succeeded below, failed and dead stacked on it, and what they were as a
    tooltip."""
    ok_h, bad_h = _PLOT_H * m.succeeded / top, _PLOT_H * (m.failed + m.dead) / top
    label = f"{_clock(m.start)}: {m.succeeded} succeeded, {m.failed} failed, {m.dead} dead"
    out = f"<g><title>{label}</title>"
    if m.succeeded:
        out += (
            f'<rect class="ok" x="{x:.1f}" y="{_BASE - ok_h:.1f}" width="{w:.1f}" '
            f'height="{ok_h:.1f}"/>'
        )
    if m.failed or m.dead:
        out += (
            f'<rect class="bad" x="{x:.1f}" y="{_BASE - ok_h - bad_h:.1f}" width="{w:.1f}" '
            f'height="{bad_h:.1f}"/>'
        )
    return out + "</g>"


def throughput_svg(minutes: Sequence[Minute]) -> Markup:
    """The chart of `minutes` (oldest first): succeeded bars in green, failed and dead in red
    on top of them, the y axis in jobs per minute, the x axis in UTC clock times (every tenth
    minute, and the last)."""
    top = _scale(max((m.succeeded + m.failed + m.dead for m in minutes), default=1))
    slot = (WIDTH - _LEFT - 4) / max(len(minutes), 1)
    succeeded, failed = sum(m.succeeded for m in minutes), sum(m.failed for m in minutes)
    dead = sum(m.dead for m in minutes)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" data-testid='
        f'"throughput-chart" aria-label="Jobs finished per minute: {succeeded} succeeded, '
        f'{failed} failed, {dead} dead">',
        f'<line class="axis" x1="{_LEFT}" y1="{_BASE}" x2="{WIDTH - 4}" y2="{_BASE}"/>',
        *_grid(top),
    ]
    last = len(minutes) - 1
    for i, m in enumerate(minutes):
        x, w = _LEFT + i * slot + slot * 0.15, max(slot * 0.7, 1)
        parts.append(_bar(m, x, w, top))
        if i % 10 == 0 or i == last:
            anchor = "end" if i == last and i else "middle"
            parts.append(
                f'<text class="tick" x="{x + w / 2:.1f}" y="{HEIGHT - 6}" '
                f'text-anchor="{anchor}">{_clock(m.start)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
