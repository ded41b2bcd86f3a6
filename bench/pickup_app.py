"""The worker side of bench/pickup_stages.py: one job kind, and stamps of the moments a job
passes on its way to its handler, written one JSON line per job to $PICKUP_OUT.

The stamps come from wrapping methods of the worker's process (a benchmark may; the code
measured is unchanged): the backend's `wait` (when it returns, the worker woke), or on Redis
its `wait_and_claim` (the wake-up with its claim), `Worker._hold` (a claim returned leases)
and the handler itself.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from offload import App, Context, Message, Settings
from offload.worker import runner

#: The last moment each step happened in this process (wall clock, seconds).
STAMPS = {"woke": 0.0, "held": 0.0}


class Probe(Message):
    i: int
    t: float


def _stamp_after_wait(cls: type) -> None:
    wait: Callable[..., Any] = cls.wait

    async def stamped(self: Any, queues: Any, timeout: float) -> None:
        await wait(self, queues, timeout)
        STAMPS["woke"] = time.time()

    cls.wait = stamped  # type: ignore[attr-defined]


def _stamp_after_wake_claim(cls: type) -> None:
    """A wait that claims as it wakes (`wait_and_claim`): the wake-up is stamped when it
    returns, its claim included (the claim stage is then only the worker's own step)."""
    wait_and_claim: Callable[..., Any] = cls.wait_and_claim

    async def stamped(self: Any, *args: Any, **kwargs: Any) -> Any:
        leases = await wait_and_claim(self, *args, **kwargs)
        STAMPS["woke"] = time.time()
        return leases

    cls.wait_and_claim = stamped  # type: ignore[attr-defined]


def _instrument() -> None:
    from offload.brokers.sqlite import SQLiteBackend

    _stamp_after_wait(SQLiteBackend)
    try:
        from offload.brokers.postgres import PostgresBackend

        _stamp_after_wait(PostgresBackend)
    except ImportError:
        pass
    try:
        from offload.brokers.redis import RedisBackend

        _stamp_after_wait(RedisBackend)
        _stamp_after_wake_claim(RedisBackend)
    except ImportError:
        pass
    hold = runner.Worker._hold

    def held(self: runner.Worker, leases: Any, sent: Any = None) -> None:
        if leases:
            STAMPS["held"] = time.time()
        hold(self, leases, sent)

    runner.Worker._hold = held  # type: ignore[method-assign]


_instrument()
_out = open(os.environ.get("PICKUP_OUT", os.devnull), "a")


def make_app(url: str) -> App:
    app = App("pickup", settings=Settings(url=url))
    app.message("pickup.probe", queue="pickup")(Probe)

    @app.handles(Probe)
    async def probe(msg: Probe, ctx: Context) -> None:
        now = time.time()
        _out.write(json.dumps({"i": msg.i, "t": msg.t, "handler": now, **STAMPS}) + "\n")
        _out.flush()

    return app


#: The worker's (`offload worker --app pickup_app:app`).
app = make_app(os.environ.get("OFFLOAD_URL", "sqlite:///pickup.db"))
