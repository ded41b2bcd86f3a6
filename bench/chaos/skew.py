"""A clock the driver can skew from outside a worker process, while it runs."""

from __future__ import annotations

import time
from pathlib import Path

from offload.clock import Clock

#: Seconds between two reads of the skew file (a read per `now()` would cost a stat each).
DEFAULT_REREAD_S = 0.2


class SkewedClock(Clock):
    """Wall-clock time plus the offset (seconds, + ahead, - behind) written in `path`.

    A missing or unreadable file means no skew: the driver deletes it to set the clock right.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_s = 0.0
        self._read_at = float("-inf")

    def now(self) -> float:
        tick = time.monotonic()
        if tick - self._read_at >= DEFAULT_REREAD_S:
            self._read_at = tick
            try:
                self.offset_s = float(self.path.read_text() or 0)
            except (OSError, ValueError):
                self.offset_s = 0.0
        return time.time() + self.offset_s


def write_skew(path: Path, offset_s: float) -> None:
    """Skew the clock reading `path` by `offset_s` (0 removes the skew)."""
    if offset_s:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(repr(offset_s))
        tmp.replace(path)
    else:
        path.unlink(missing_ok=True)
