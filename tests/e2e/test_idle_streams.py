"""1,000 idle server-sent event streams on one `offload web` process: one change-feed watcher
fans out to all of them, so they cost memory, not database connections or busy loops."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest

from ..services import PG_URL
from .conftest import TOKENS, Stack

#: Streams held open at once (half alice's, half bob's).
STREAMS = 1000
#: Jobs alice runs while they are open (each end reaches her 500 streams: 5 make 2,500
#: final events, enough to show the fan-out, where 20 spent the suite's CPU on parsing).
JOBS = 5


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def db_connections(stack: Stack, pid: int, app_name: str) -> int:
    """Database connections of the web process: PostgreSQL sessions under its
    application_name, or the SQLite file handles it holds open."""
    if stack.backend == "postgres":
        with psycopg.connect(PG_URL) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
            ).fetchone()
        assert row is not None
        return int(row[0])
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd).endswith("jobs.db"))


@dataclass(frozen=True)
class Sample:
    """The web process at one moment: resident memory, DB connections, CPU time used."""

    rss_kib: int
    db: int
    cpu_s: float

    @classmethod
    def take(cls, stack: Stack, pid: int, app_name: str) -> Sample:
        return cls(rss_kib(pid), db_connections(stack, pid, app_name), cpu_s(pid))


class Streams:
    """Many open /v1/events streams, each read by a task that counts the final events it
    sees per job id."""

    def __init__(self, base: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=base,
            timeout=httpx.Timeout(30, read=None),
            limits=httpx.Limits(max_connections=STREAMS + 50, max_keepalive_connections=0),
        )
        self.seen: dict[str, list[Counter[str]]] = {"alice": [], "bob": []}
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self, n: int, principal: str) -> None:
        """Open `n` streams and wait until each is live; a stream that fails says why at
        once (its status), rather than leaving the wait to run out."""
        headers = {"Authorization": f"Bearer {TOKENS[principal]}"}
        ready = [asyncio.Event() for _ in range(n)]
        mine = []
        for event in ready:
            counts: Counter[str] = Counter()
            self.seen[principal].append(counts)
            mine.append(asyncio.create_task(self._read(headers, event, counts)))
        self.tasks += mine
        live = asyncio.ensure_future(asyncio.gather(*(e.wait() for e in ready)))
        try:
            done, _ = await asyncio.wait({live, *mine}, timeout=60, return_when="FIRST_COMPLETED")
            for task in done - {live}:
                task.result()  # a stream that ended: its error (an early end is one too)
                raise AssertionError("a stream ended before the others opened")
            opened = sum(event.is_set() for event in ready)
            assert live in done, f"{opened} of {n} streams opened within 60 s"
        finally:
            live.cancel()

    async def _read(
        self, headers: dict[str, str], ready: asyncio.Event, counts: Counter[str]
    ) -> None:
        while True:
            async with self.client.stream("GET", "/v1/events", headers=headers) as response:
                if response.status_code == 503:  # the backend slow to answer (an overloaded
                    # machine): asked again, as a client honouring Retry-After would
                    await asyncio.sleep(0.5)
                    continue
                if response.status_code != 200:
                    await response.aread()
                    raise AssertionError(f"{response.status_code}: {response.text}")
                await self._follow(response, ready, counts)
                return

    async def _follow(
        self, response: httpx.Response, ready: asyncio.Event, counts: Counter[str]
    ) -> None:
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                ready.set()  # the opening line: the stream is live
            elif line.startswith("data: "):
                record = orjson.loads(line[6:])
                if record["state"] == "succeeded":
                    counts[record["id"]] += 1

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()


async def _submit(base: str, n: int) -> list[str]:
    async with httpx.AsyncClient(base_url=base) as client:
        auth = {"Authorization": f"Bearer {TOKENS['alice']}"}
        responses = [
            await client.post("/v1/jobs/e2e.noop", json={"n": i}, headers=auth) for i in range(n)
        ]
    return [r.json()["id"] for r in responses]


@pytest.mark.slow
def test_a_thousand_idle_streams_share_one_feed_watcher(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * STREAMS:  # our sockets, and the web process's (it inherits the limit)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * STREAMS), hard))
    # The web process gets an application_name of its own, to count its sessions alone.
    url = stack.env["OFFLOAD_URL"]
    name = (url.rpartition("application_name=")[2] or "offload") + "_web"
    if stack.backend == "postgres":
        stack.env["OFFLOAD_URL"] = url + f"&application_name={name}"
    web = stack.start_web()
    stack.env["OFFLOAD_URL"] = url
    stack.start_worker("--concurrency", "8")
    alice = stack.client("alice")

    async def warm_up() -> None:
        # The same kind of work as below, so pools are as large as it needs, with one stream
        # open: the process's feed watcher (and, on PostgreSQL, its one LISTEN connection)
        # comes with its first stream, and the 1,000 below may cost nothing more.
        one = Streams(stack.base)
        try:
            await one.open(1, "alice")
            for job_id in await _submit(stack.base, 3):
                await asyncio.to_thread(stack.wait_state, alice, job_id, {"succeeded"})
        finally:
            await one.close()

    asyncio.run(warm_up())
    before = Sample.take(stack, web.pid, name)

    async def scenario() -> tuple[Sample, Sample, float, list[str], Streams]:
        streams = Streams(stack.base)
        try:
            # Given 1,000 open streams (500 of alice, 500 of bob), left idle for 2 s,
            started = time.monotonic()
            await streams.open(STREAMS // 2, "alice")
            await streams.open(STREAMS // 2, "bob")
            opened = time.monotonic() - started
            cpu = cpu_s(web.pid)
            await asyncio.sleep(2.0)
            idle = Sample.take(stack, web.pid, name)
            idle = Sample(idle.rss_kib, idle.db, idle.cpu_s - cpu)
            # when alice's jobs run to the end,
            ids = await _submit(stack.base, JOBS)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(len(c) == JOBS for c in streams.seen["alice"]):
                    break
                await asyncio.sleep(0.1)
            return idle, Sample.take(stack, web.pid, name), opened, ids, streams
        finally:
            await streams.close()

    idle, after, opened, ids, streams = asyncio.run(scenario())
    delivered = sum(sum(c.values()) for c in streams.seen["alice"])
    with capsys.disabled():  # the figures belong in every run's output
        print(
            f"\n[{stack.backend}] {STREAMS} SSE streams opened in {opened:.1f}s; web process RSS "
            f"{before.rss_kib / 1024:.1f} MiB before, {idle.rss_kib / 1024:.1f} MiB with the "
            f"streams idle ({(idle.rss_kib - before.rss_kib) / STREAMS:.1f} KiB per stream), "
            f"{after.rss_kib / 1024:.1f} MiB after {JOBS} jobs; its CPU time over 2 s idle: "
            f"{idle.cpu_s:.2f}s; its database connections: {before.db} before, {idle.db} idle, "
            f"{after.db} after; {delivered} final events reached alice's {STREAMS // 2} streams"
        )
    # Then every one of alice's streams saw each job end exactly once, and bob's saw nothing;
    assert all(c == Counter(dict.fromkeys(ids, 1)) for c in streams.seen["alice"])
    assert all(not c for c in streams.seen["bob"])
    # and the streams cost no database connection and no busy loop (while jobs run, the one
    # feed watcher's read and one submission at a time may each hold a pooled connection).
    assert idle.db <= before.db and after.db <= max(before.db, 2) + 1
    assert idle.cpu_s < 1.0
