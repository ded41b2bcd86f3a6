"""PostgreSQL with years of history: the queue stats and the prune on a large jobs table.

Fills a fresh database (offload's schema) with N finished jobs by SQL (`generate_series`,
as a long-running system's history: 75% succeeded, 12% dead, 5% failed, 8% cancelled,
finished a day ago, over 4 queues), 2,000 waiting ones, and `VACUUM ANALYZE`; then
- times `App.stats()` (the queue gauges' reading behind `GET /metrics`, `/v1/queues`, the
  dashboard and the autoscaler) against the statement it replaced (one scan of every
  waiting, running and dead row), alternating, and
- times the prune of the whole history (`PostgresBackend.prune`, 2,000 rows a transaction)
  and its longest transaction,
and prints the figures; writes the `pg-history` section of RESULTS.md unless --no-write.

    .venv/bin/python bench/pg_history.py [N] [--no-write]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import psycopg
from _pg import fresh_database
from _results import write_section

from offload import App, Settings

#: The statement `stats` ran before each part read its own index (for the ratio).
BEFORE = """
SELECT queue,
       count(*) FILTER (WHERE state IN ('queued', 'retrying') AND run_at <= now()) AS queued,
       count(*) FILTER (WHERE state IN ('queued', 'retrying') AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'dead') AS dead,
       count(*) FILTER (WHERE state IN ('queued', 'retrying')
                          AND error->>'type' = 'NewerVersion') AS awaiting_newer_worker,
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (
           WHERE state IN ('queued', 'retrying') AND run_at <= now())), 0) AS oldest_age_s
FROM offload_jobs
WHERE state IN ('queued', 'retrying', 'running', 'dead')
GROUP BY queue
"""

FILL = """
INSERT INTO offload_jobs (id, kind, version, queue, priority, payload, state, attempt,
    max_attempts, run_at, enqueued_at, owner, finished_at, result, error)
SELECT gen_random_uuid(), 'k' || (g % 8), 1, 'q' || (g % 4), 0, '{"n": 1}'::jsonb,
    CASE WHEN g % 100 < 75 THEN 'succeeded' WHEN g % 100 < 87 THEN 'dead'
         WHEN g % 100 < 92 THEN 'failed' ELSE 'cancelled' END,
    1, 5, now() - interval '2 days', now() - interval '2 days', 'o' || (g % 300),
    now() - interval '1 day', '{"r": 1}'::jsonb,
    CASE WHEN g % 100 >= 75 AND g % 100 < 92 THEN '{"type": "ValueError"}'::jsonb END
FROM generate_series(1, %(n)s) g;
INSERT INTO offload_jobs (id, kind, version, queue, priority, payload, state, attempt,
    max_attempts, run_at, enqueued_at, owner)
SELECT gen_random_uuid(), 'k' || (g % 8), 1, 'q' || (g % 4), 0, '{"n": 1}'::jsonb,
    'queued', 0, 5, now() - interval '1 minute', now(), 'o' || (g % 300)
FROM generate_series(1, 2000) g;
"""

ROUNDS = 7


async def main(n: int, write: bool) -> None:
    url = await fresh_database("offload_bench_history")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        began = time.perf_counter()
        await conn.execute(FILL.replace("%(n)s", str(int(n))))
        await conn.execute("VACUUM ANALYZE offload_jobs")
        filled_s = time.perf_counter() - began
        dead = (
            await (
                await conn.execute("SELECT count(*) FROM offload_jobs WHERE state = 'dead'")
            ).fetchone()
            or (0,)
        )[0]
        app = App("history", settings=Settings(url=url))
        await app.open()
        try:
            now_ms: list[float] = []
            before_ms: list[float] = []
            for _ in range(ROUNDS):  # alternating, so both meet the same cache and load
                t = time.perf_counter()
                await app.stats()
                now_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                await (await conn.execute(BEFORE)).fetchall()
                before_ms.append((time.perf_counter() - t) * 1000)
            backend: Any = app._require_backend()
            chunks: list[float] = []
            fetch = backend._fetch

            async def timed(query: str, params: Any) -> Any:
                t = time.perf_counter()
                try:
                    return await fetch(query, params)
                finally:
                    chunks.append(time.perf_counter() - t)

            backend._fetch = timed
            t = time.perf_counter()
            pruned = await backend.prune(3600)
            prune_s = time.perf_counter() - t
        finally:
            await app.close()
    now_med, before_med = statistics.median(now_ms), statistics.median(before_ms)
    rows = [
        "| reading | ms, median of 7 (min to max) |",
        "|---|---|",
        f"| `App.stats()` now | {now_med:.1f} ({min(now_ms):.1f} to {max(now_ms):.1f}) |",
        f"| the statement before | {before_med:.1f} ({min(before_ms):.1f} to "
        f"{max(before_ms):.1f}) |",
    ]
    body = "\n".join(
        [
            f"{n:,} finished jobs ({dead:,} dead, kept) and 2,000 waiting, over 4 queues, "
            f"made by SQL in {filled_s:.0f} s and vacuumed; one process, PostgreSQL on "
            "loopback.",
            "",
            *rows,
            "",
            f"Ratio: the statement before took {before_med / now_med:.1f}x as long. The prune "
            f"of the history (retention 1 hour): {pruned:,} jobs in {prune_s:.1f} s "
            f"({pruned / prune_s:,.0f}/s), {len(chunks)} transactions, the longest "
            f"{max(chunks) * 1000:.0f} ms.",
        ]
    )
    print(body)
    if write:
        write_section("pg-history", body)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    asyncio.run(main(int(args[0]) if args else 1_000_000, "--no-write" not in sys.argv))
