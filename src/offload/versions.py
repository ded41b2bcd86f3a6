"""Message versions: the upgrader chain a stored payload goes through, and what the fleet runs.

A kind's message class is its current version. A job stored at an older version is brought
up by the kind's upgraders (`@app.upgrade(kind, from_version)`), one step at a time, before
its handler's class validates it. Workers record the versions they can run (the current
one, and each older one their upgraders reach it from), so the web tier can tell whether
any live worker runs the version it submits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ._payloads import payload_of
from .contract import Message
from .errors import MissingUpgrader, UpgradeError

#: A worker recorded within this many seconds is live for the version check (it records its
#: kinds and versions in the registry on every heartbeat, at most 2 s apart).
WORKER_LIVE_S = 30.0
#: Seconds the live versions read from the backend are reused (the web tier's check costs no
#: query per submission).
LIVE_VERSIONS_TTL_S = 2.0

#: The upgraders of one kind, by the version they upgrade from (see `App.upgraders`).
Steps = Mapping[int, Callable[[dict[str, Any]], Any]]


def runnable_versions(current: int, steps: Steps) -> list[int]:
    """The versions of a kind a worker can run, oldest first: `current`, and each older
    version from which the upgraders reach it without a gap."""
    oldest = current
    while oldest - 1 in steps:
        oldest -= 1
    return list(range(oldest, current + 1))


def chain_problem(kind: str, current: int, steps: Steps) -> str | None:
    """Why the upgraders of `kind` do not form one chain ending at version `current`, or None.

    The oldest upgrader marks the oldest version still supported (older ones are retired:
    their jobs fail, naming the missing step); every step from there to `current` must exist,
    and none may start at `current` or later.
    """
    later = sorted(v for v in steps if v >= current)
    if later:
        return (
            f"{kind!r} is declared at version {current} but has an upgrader from version "
            f"{later[0]}: declare the message at version {later[0] + 1}, or drop the upgrader"
        )
    if not steps:
        return None
    oldest = min(steps)
    gaps = [v for v in range(oldest, current) if v not in steps]
    if gaps:
        return (
            f"the upgraders of {kind!r} do not reach version {current} from version {oldest}: "
            f"no upgrader from version {gaps[0]} (@app.upgrade({kind!r}, {gaps[0]}))"
        )
    return None


def upgrade(
    kind: str, version: int, payload: dict[str, Any], *, current: int, steps: Steps
) -> dict[str, Any]:
    """A payload stored at `version`, brought to `current` by the upgraders, step by step.

    Each upgrader gets a copy of the previous step's payload and returns the next version's,
    as a dict or as a `Message` (dumped to JSON, as enqueue stores one).

    Raises:
        MissingUpgrader: no upgrader for one step (the first missing one is named).
        UpgradeError: an upgrader raised (chained), or returned something else.
    """
    data = payload
    for step in range(version, current):
        fn = steps.get(step)
        if fn is None:
            raise MissingUpgrader(
                f"{kind} is stored at version {version} and handled at version {current}, but "
                f"no upgrader turns version {step} into {step + 1} "
                f"(@app.upgrade({kind!r}, {step}))"
            )
        try:
            out = fn(dict(data))
        except Exception as exc:
            raise UpgradeError(
                f"the upgrader of {kind} from version {step} to {step + 1} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(out, Message):
            out = payload_of(out)  # (as App.envelope stores it)
        if not isinstance(out, dict):
            raise UpgradeError(
                f"the upgrader of {kind} from version {step} returned a {type(out).__name__}, "
                "not the next version's payload (a dict or a Message)"
            )
        data = out
    return data


class LiveVersions:
    """The versions live workers run, read at most once per `LIVE_VERSIONS_TTL_S` of the
    caller's clock; concurrent callers share one read."""

    def __init__(self, ttl_s: float = LIVE_VERSIONS_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._value: dict[str, set[int]] | None = None
        self._read_at = 0.0
        self._lock: asyncio.Lock | None = None

    async def get(
        self, now: Callable[[], float], read: Callable[[], Awaitable[dict[str, set[int]]]]
    ) -> dict[str, set[int]]:
        if self._fresh(now()):
            assert self._value is not None
            return self._value
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._fresh(now()):  # else another caller read it meanwhile
                self._value = await read()
                self._read_at = now()
        assert self._value is not None
        return self._value

    def _fresh(self, now: float) -> bool:
        return self._value is not None and 0 <= now - self._read_at < self.ttl_s
