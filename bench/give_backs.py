"""Jobs a worker gives back unspent from its prefetch while draining short jobs, quiet and
with the cores kept busy: on a loaded machine run times are noisy, and each give-back is a
write and a claim again.

Two workers of 4 slots in one process drain N short plain handlers (each appends a line to
a file, as the e2e fair test's do) on a fresh SQLite file; a wrapper around the backend's
`settle` counts the outcomes that are give-backs (refunded, back to `queued`). The loaded
rounds start one busy loop per core beside the drain.

    .venv/bin/python bench/give_backs.py [N] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _results import rounds_rows, write_section

from offload import App, Context, Message, Settings
from offload.worker.runner import Worker

WORKERS, SLOTS = 2, 4


class Short(Message):
    n: int


def _spin() -> None:
    while True:
        pass


async def drain(n: int) -> tuple[float, int]:
    """Seconds to drain `n` jobs and the jobs given back meanwhile."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "runs.log"
        app = App("give-backs", settings=Settings(url=f"sqlite:///{tmp}/jobs.db"))
        app.message("bench.short")(Short)

        @app.handles(Short)
        def short(msg: Short, ctx: Context) -> None:
            with log.open("a") as out:
                out.write(f"{msg.n}\n")

        await app.open()
        backend = app._require_backend()
        settle, given_back = backend.settle, 0

        async def counted(outcomes: Sequence[Any]) -> Any:
            nonlocal given_back
            given_back += sum(1 for o in outcomes if o.refund)
            return await settle(outcomes)

        backend.settle = counted  # type: ignore[method-assign]
        await app.enqueue_many([Short(n=i) for i in range(n)])
        began = time.perf_counter()
        workers = [Worker(app, concurrency=SLOTS) for _ in range(WORKERS)]
        runs = [asyncio.create_task(w.run()) for w in workers]
        while sum(w.processed for w in workers) < n:  # noqa: ASYNC110 (polls)
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - began
        for w in workers:
            w.request_stop()
        await asyncio.gather(*runs)
        await app.close()
        return seconds, given_back


def main(n: int, rounds: int) -> None:
    figures: dict[str, list[tuple[float, float]]] = {"quiet": [], "busy loop per core": []}
    for _ in range(rounds):
        for load in figures:
            spinners = []
            if load != "quiet":
                spinners = [
                    multiprocessing.Process(target=_spin, daemon=True)
                    for _ in range(os.cpu_count() or 1)
                ]
                for p in spinners:
                    p.start()
            try:
                figures[load].append(asyncio.run(drain(n)))
            finally:
                for p in spinners:
                    p.kill()
                    p.join()
    lines = [
        f"{WORKERS} workers of {SLOTS} slots in one process drain {n:,} short plain "
        f"handlers on SQLite, {rounds} rounds alternating quiet and loaded.",
        "",
        "| machine | jobs given back (rounds) | drain s (rounds) |",
        "|---|---|---|",
    ]
    lines += rounds_rows(figures, [(1, ","), (0, ".2f")])
    body = "## Jobs given back from the prefetch while draining\n\n" + "\n".join(lines)
    print(body)
    write_section("give-backs", body)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*(args + [5000, 3][len(args) :]))
