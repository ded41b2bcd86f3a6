"""Time-ordered unique job ids (UUIDv7, RFC 9562)."""

from __future__ import annotations

import os
import threading
import time
import uuid

#: A clock more than this far behind the newest id minted (milliseconds) is another clock (an
#: injected one), not a small step back: its ids carry its own time instead of being bumped
#: past the newest, so that an id's time stays its job's creation time.
_MAX_STEP_BACK_MS = 1000

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def uuid7(at: float | None = None) -> str:
    """A UUIDv7 string whose time is `at` (epoch seconds; now when None). Ids made in one
    process from one clock sort in creation order (within one millisecond too)."""
    global _last_ms, _seq
    with _lock:
        ms = int(at * 1000) if at is not None else time.time_ns() // 1_000_000
        if _last_ms - _MAX_STEP_BACK_MS < ms <= _last_ms:
            # Same (or a slightly backwards-stepped) millisecond: keep order with a 12-bit
            # counter, borrowing the next millisecond when it runs out.
            ms = _last_ms
            _seq += 1
            if _seq > 0xFFF:
                ms += 1
                _seq = 0
        else:
            _seq = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _last_ms = ms
        seq = _seq
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    h = f"{value:032x}"  # str(uuid.UUID(int=value)), without building the object
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_floor(at: float) -> str:
    """The smallest UUID string of the millisecond of `at`: every UUIDv7 made at or after
    it sorts at or above it."""
    ms = max(0, int(at * 1000)) & ((1 << 48) - 1)
    return str(uuid.UUID(int=ms << 80))
