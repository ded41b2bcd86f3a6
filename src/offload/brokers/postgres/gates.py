"""PostgreSQL: the limits per kind, read and obeyed inside a claim's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from ...contract import KindLimits
from ...limits import Gate, gate
from .._sql import queries

Q = queries(__package__)


async def declare(conn: psycopg.AsyncConnection[Any], limits: Sequence[KindLimits]) -> None:
    async with conn.cursor() as cur:
        for lim in limits:
            params = {
                "kind": lim.kind,
                "queue": lim.queue,
                "max_running": lim.max_running,
                "rate": lim.rate,
                "per_s": lim.per_s,
            }
            await cur.execute(Q["declare_limit" if lim.limited else "drop_limit"], params)


@dataclass(frozen=True, slots=True)
class Usage:
    """The stored limits of some kinds, their usage, and `now` (epoch seconds) it is of."""

    limits: list[KindLimits]
    running: dict[str, int]
    starts: dict[str, list[float]]
    now_s: float

    def gate(self, started: Sequence[str] = ()) -> Gate:
        """What may start now; with `started`, once jobs of these kinds started now."""
        running, starts = dict(self.running), {k: list(v) for k, v in self.starts.items()}
        for kind in started:
            running[kind] = running.get(kind, 0) + 1
            starts.setdefault(kind, []).append(self.now_s)
        return gate(self.limits, running=running, starts=starts, now=self.now_s)


async def read(
    conn: psycopg.AsyncConnection[Any], queues: Sequence[str] | None, now: datetime | None
) -> Usage:
    """The stored limits of the kinds in `queues` (every queue when None), their rows
    locked until the transaction ends, with their usage at `now` (None: the server's
    clock)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            Q["lock_limits"], {"queues": list(queues or ()), "all": queues is None, "now": now}
        )
        stored = await cur.fetchall()
        if not stored:
            await cur.execute(Q["now"], {"now": now})
            row = await cur.fetchone()
            assert row is not None
            return Usage([], {}, {}, row["now"])
        now_s: float = stored[0]["now"]
        await cur.execute(Q["limits_usage"], {"kinds": [r["kind"] for r in stored], "now_s": now_s})
        usage = {r["kind"]: r for r in await cur.fetchall()}
    limits = [
        KindLimits(
            kind=r["kind"],
            queue=r["queue"],
            max_running=r["max_running"],
            rate=r["rate"],
            per_s=r["per_s"],
            running=usage[r["kind"]]["running"],
            recent_starts=len(usage[r["kind"]]["starts"]),
        )
        for r in stored
    ]
    running = {k: u["running"] for k, u in usage.items()}
    starts = {k: list(u["starts"]) for k, u in usage.items()}
    return Usage(limits, running, starts, now_s)


def claim_params(u: Usage, g: Gate) -> dict[str, Any]:
    """The gate's parameters of the `claim_gated` query."""
    return {
        "blocked": g.blocked,
        "allow": orjson.dumps(dict(g.allow)).decode(),
        "rated": orjson.dumps({x.kind: x.per_s for x in u.limits if x.per_s is not None}).decode(),
        "now_s": u.now_s,
    }
