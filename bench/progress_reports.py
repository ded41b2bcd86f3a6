"""A handler that reports progress on every row, this checkout against another commit.

    .venv/bin/python bench/progress_reports.py [--against REV] [--backends sqlite,postgres,redis]
                                               [--rows 5000] [--rounds 2]

Each run stores one job whose async handler reports `--rows` times in a tight loop
(`await ctx.progress(i / rows, f"row {i}")`) and runs it with `offload.testing.run_jobs`;
it reports the handler's run time, the reports that reached the backend, and the job's
events in the change feed (what every watcher of the job is sent). With `--against`, each
round runs REV's source and this checkout's in alternating order (as
`bench/per_call_against.py`), each on a fresh store; it prints the table and writes it to
bench/RESULTS.md (section "progress-reports").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time

from _results import write_section
from worker_cost import children_against


async def reports(url: str, rows: int) -> dict[str, float]:
    from offload import App, Context, Message, Settings
    from offload.testing import run_jobs

    class Rows(Message):
        n: int

    blobs = tempfile.mkdtemp()
    app = App("bench-progress", settings=Settings(url=url, blobs_url=blobs, secret_key=b"k" * 32))
    app.message("bench.rows")(Rows)
    ran = {"s": 0.0}

    @app.handles(Rows)
    async def each_row(msg: Rows, ctx: Context) -> int:
        began = time.perf_counter()
        for i in range(1, msg.n + 1):
            await ctx.progress(i / msg.n, f"row {i}")
        ran["s"] = time.perf_counter() - began
        return msg.n

    writes = [0]
    async with app:
        backend = app._require_backend()
        store = backend.progress

        async def counted(*args: object) -> bool:
            writes[0] += 1
            return await store(*args)  # type: ignore[arg-type]

        backend.progress = counted  # type: ignore[method-assign]
        job = await app.enqueue(Rows(n=rows))
        (row,) = await run_jobs(app)
        assert row.state == "succeeded", row.error
        events, seq = 0, 0
        while page := await app.changes_since(seq, job_id=job.id, limit=500):
            events, seq = events + len(page), page[-1].seq
    return {"ran_s": ran["s"], "writes": writes[0], "events": events}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--against", help="the commit to compare with (required)")
    ap.add_argument("--backends", default="sqlite,postgres,redis")
    ap.add_argument("--rows", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("URL", "ROWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        url, rows = args.child
        print(json.dumps(asyncio.run(reports(url, int(rows)))))
        return
    if not args.against:
        ap.error("--against REV is required")
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    for backend, name, line in children_against(
        args.against, args.backends, args.rounds, __file__, str(args.rows)
    ):
        figures.setdefault((backend, name), []).append(json.loads(line))
    lines = [
        f"One job whose async handler reports progress on each of {args.rows:,} rows, in a "
        f"tight loop; {args.rounds} rounds, REV ({args.against}) and this checkout "
        "alternating, each on a fresh store. Run time is the handler's; writes are the "
        "reports that reached the backend; events, the job's changes in the feed (what each "
        "of its watchers is sent). "
        f"`python bench/progress_reports.py --against {args.against} --rows {args.rows}`.",
        "",
        "| backend | code | handler run time, ms (rounds) | writes | events |",
        "|---|---|---|---|---|",
    ]
    for (backend, name), runs in sorted(figures.items()):
        times = " / ".join(f"{r['ran_s'] * 1000:,.1f}" for r in runs)
        writes = " / ".join(f"{r['writes']:,.0f}" for r in runs)
        events = " / ".join(f"{r['events']:,.0f}" for r in runs)
        lines.append(f"| {backend} | {name} | {times} | {writes} | {events} |")
    body = "\n".join(lines)
    print(body)
    write_section("progress-reports", "## Progress reported on every row\n\n" + body)


if __name__ == "__main__":
    main()
