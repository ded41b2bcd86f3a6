"""Time-ordered unique job ids (UUIDv7, RFC 9562)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable

#: A clock more than this far behind the newest id minted (milliseconds) is another clock (an
#: injected one), not a small step back: its ids carry its own time instead of being bumped
#: past the newest, so that an id's time stays its job's creation time.
_MAX_STEP_BACK_MS = 1000

#: Random bytes read from the OS at a time: one read serves this many ids (`_random`).
_POOL_BYTES = 4096

_lock = threading.Lock()
_last_ms = 0
_seq = 0
_pool = b""
_pool_at = 0


def _random(n: int) -> bytes:
    """`n` bytes from the OS's random source, read in blocks (the lock held): one system
    call per few hundred ids instead of two per id."""
    global _pool, _pool_at
    if _pool_at + n > len(_pool):
        _pool, _pool_at = os.urandom(max(_POOL_BYTES, n)), 0
    start = _pool_at
    _pool_at = start + n
    return _pool[start : start + n]


def _reset_after_fork() -> None:
    """A forked child reads its own bytes: its parent's unread ones would make the same ids."""
    global _pool, _pool_at, _lock
    _lock = threading.Lock()
    _pool, _pool_at = b"", 0


os.register_at_fork(after_in_child=_reset_after_fork)


def _step(ms: int) -> tuple[int, int]:
    """The millisecond and 12-bit counter of the next id made at `ms` (the lock held)."""
    global _last_ms, _seq
    if _last_ms - _MAX_STEP_BACK_MS < ms <= _last_ms:
        # Same (or a slightly backwards-stepped) millisecond: keep order with a 12-bit
        # counter, borrowing the next millisecond when it runs out.
        ms = _last_ms
        _seq += 1
        if _seq > 0xFFF:
            ms += 1
            _seq = 0
    else:
        _seq = int.from_bytes(_random(2), "big") & 0x3FF
    _last_ms = ms
    return ms, _seq


def _text(ms: int, seq: int, rand: bytes) -> str:
    """The id's string: str(uuid.UUID(int=...)) without building the object."""
    bits = int.from_bytes(rand, "big") & ((1 << 62) - 1)
    h = f"{(ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _ms_of(at: float | None) -> int:
    return int(at * 1000) if at is not None else time.time_ns() // 1_000_000


def uuid7(at: float | None = None) -> str:
    """A UUIDv7 string whose time is `at` (epoch seconds; now when None). Ids made in one
    process from one clock sort in creation order (within one millisecond too)."""
    with _lock:
        ms, seq = _step(_ms_of(at))
        rand = _random(8)
    return _text(ms, seq, rand)


def uuid7_block(n: int, at: float | None = None) -> Callable[[int, int], list[str]]:
    """Reserve `n` ids of time `at`, in order, under one hold of the lock and one read of
    random bytes; returns the function that writes out ids `start` to `stop` of them (a
    bulk enqueue writes each chunk's as it stamps it). Every id made after this call sorts
    after all of them, and they follow each other even past the 1,000 ms an id may borrow
    (a block of millions): each continues from the one before, never from `at` again."""
    steps: list[tuple[int, int]] = []
    with _lock:
        ms = _ms_of(at)
        for _ in range(n):
            ms, seq = _step(ms)
            steps.append((ms, seq))
        rand = _random(8 * n)

    def write(start: int, stop: int) -> list[str]:
        return [_text(*steps[i], rand[8 * i : 8 * i + 8]) for i in range(start, stop)]

    return write


def uuid7_floor(at: float) -> str:
    """The smallest UUID string of the millisecond of `at`: every UUIDv7 made at or after
    it sorts at or above it."""
    ms = max(0, int(at * 1000)) & ((1 << 48) - 1)
    return str(uuid.UUID(int=ms << 80))
