"""Redis-specific behaviour: key prefixes, script atomicity, pub/sub wake-ups, errors, URLs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from bench.chaos.engines import PrivateRedis, free_port

import offload.clock
from offload import App, Context, Message, Settings
from offload._ids import uuid7
from offload.brokers import open_backend
from offload.brokers.base import NEWER_VERSION, WORKER_LOST_AFTER_S, Capability
from offload.contract import Envelope, Extension, JobState, KindLimits, Lease, Outcome
from offload.errors import BackendError, ConfigurationError, StorageFull
from offload.worker.runner import Worker

from ..contract._support import PATIENCE_S, ShiftClock, worker_info
from ..services import REDIS_URL, drop_redis_prefix, redis_prefix, redis_url, require_redis

try:
    import redis.asyncio as aioredis
    from redis.crc import key_slot
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    from offload.brokers.redis import RedisBackend
    from offload.brokers.redis.backend import DURABILITY_WARNED
except ImportError as exc:  # pragma: no cover - only without the redis extra
    if os.environ.get("OFFLOAD_REQUIRE_SERVICES") == "1":
        raise
    pytest.skip(f"Redis unavailable: {exc} (pip install 'offload[redis]')", allow_module_level=True)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

QUEUE = "q"


def envelope(queue: str = QUEUE, **fields: Any) -> Envelope:
    now = time.time()
    return Envelope(
        id=fields.pop("id", None) or uuid7(),
        kind="test.job",
        version=1,
        payload=fields.pop("payload", {"n": 1}),
        queue=queue,
        run_at=fields.pop("run_at", now),
        enqueued_at=now,
        **fields,
    )


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh key prefix on the test Redis; every key under it is deleted afterwards."""
    require_redis()
    p = redis_prefix()
    yield p
    drop_redis_prefix(p)


async def opened(url: str) -> RedisBackend:
    backend = RedisBackend.from_url(url)
    await backend.open()
    return backend


@pytest.fixture
async def backend(prefix: str) -> AsyncIterator[RedisBackend]:
    b = await opened(redis_url(prefix))
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    """A plain client on the test Redis, to look at keys directly."""
    require_redis()
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[tuple[RedisBackend, aioredis.Redis]]:
    """A backend and a plain client on a redis-server of this test's own, for a test that
    flushes the server's scripts: on the shared server a flush lands between another
    test's script load and its call, which then fails (as it would in production, where
    nothing flushes twice within a call)."""
    require_redis()
    with PrivateRedis(tmp_path / "own") as server:
        backend = await opened(server.url)
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            yield backend, client
        finally:
            await client.aclose()
            await backend.close()


async def keys_of(client: aioredis.Redis, prefix: str) -> list[str]:
    return [k async for k in client.scan_iter(match=f"{{{prefix}}}*", count=1000)]


# -- key prefixes ----------------------------------------------------------------------------


async def test_prefixes_isolate_two_apps_on_one_redis(
    backend: RedisBackend, raw: aioredis.Redis, prefix: str
) -> None:
    # Given a second app with its own prefix on the same Redis
    other_prefix = redis_prefix()
    other = await opened(redis_url(other_prefix))
    try:
        # When the first app enqueues jobs in the queue both apps use
        env = envelope()
        await backend.enqueue([env])
        # Then the second app sees none of it
        assert await other.get(env.id) is None
        assert await other.claim([QUEUE], worker_id="w", lease_for=30, limit=10) == []
        assert await other.stats() == {}
        assert await other.changes_since(0) == [] and await other.last_seq() == 0
        assert await other.list_jobs(owner=None) == []
        assert await other.purge(QUEUE) == 0
        # And every key the first app wrote starts with its prefix, in one cluster slot
        keys = await keys_of(raw, prefix)
        assert keys and all(k.startswith("{" + prefix + "}") for k in keys)
        assert len({key_slot(k.encode()) for k in keys}) == 1
        assert await keys_of(raw, other_prefix) == []
        assert (await backend.stats())[QUEUE]["queued"] == 1
    finally:
        await other.close()
        drop_redis_prefix(other_prefix)


async def test_idempotency_keys_are_per_prefix(backend: RedisBackend, prefix: str) -> None:
    other_prefix = redis_prefix()
    other = await opened(redis_url(other_prefix))
    try:
        first, second = envelope(idempotency_key="once"), envelope(idempotency_key="once")
        assert (await backend.enqueue([first]))[0].created
        assert (await other.enqueue([second]))[0].created
    finally:
        await other.close()
        drop_redis_prefix(other_prefix)


async def test_a_prefix_with_its_own_hash_tag_is_used_as_it_is(raw: aioredis.Redis) -> None:
    tag = "{" + redis_prefix() + "}"
    b = await opened(redis_url(tag + "app:"))
    try:
        await b.enqueue([envelope()])
        keys = [k async for k in raw.scan_iter(match=f"{tag}app:*")]
        assert keys and len({key_slot(k.encode()) for k in keys}) == 1
    finally:
        await b.close()
        async for k in raw.scan_iter(match=f"{tag}*"):
            await raw.delete(k)


# -- atomicity under competing claimers --------------------------------------------------------


def _claim_in_process(url: str, limit: int, barrier: Any, out: str) -> None:
    got: list[str] = []
    try:
        asyncio.run(_claim_all(url, limit, barrier, Path(out).stem, got))
    finally:
        Path(out).write_text(json.dumps(got))


async def _claim_all(
    url: str, limit: int, barrier: Any, name: str, got: list[str] | None = None
) -> list[str]:
    """Claim and settle until the queue is empty; returns the claimed ids (also in `got`)."""
    b = await opened(url)
    got = [] if got is None else got
    try:
        if barrier is not None:
            barrier.wait(30)
        while True:
            leases = await b.claim([QUEUE], worker_id=name, lease_for=60, limit=limit)
            if not leases:
                if (await b.stats()).get(QUEUE, {}).get("queued", 0) == 0:
                    break
                continue
            got += [le.job_id for le in leases]
            outcomes = [Outcome(lease=le, state=JobState.SUCCEEDED, result=name) for le in leases]
            assert all(await b.settle(outcomes)), f"{name}: a fresh lease was refused"
            await asyncio.sleep(0)
    finally:
        await b.close()
    return got


@pytest.mark.slow
async def test_tasks_and_processes_claiming_at_once_never_get_the_same_job(
    backend: RedisBackend, prefix: str, tmp_path: Path
) -> None:
    # Given 1,000 ready jobs
    envs = [envelope(payload={"n": i}) for i in range(1000)]
    await backend.enqueue(envs)
    url = redis_url(prefix)
    # When 2 OS processes and 4 asyncio tasks (each its own connection pool) claim at once
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"proc{i}.json" for i in range(2)]
    procs = [
        ctx.Process(target=_claim_in_process, args=(url, limit, barrier, str(out)))
        for limit, out in zip((5, 16), outs, strict=True)
    ]
    for p in procs:
        p.start()
    try:
        tasks = await asyncio.gather(
            *(_claim_all(url, limit, None, f"task{i}") for i, limit in enumerate((1, 3, 8, 32)))
        )
        for p in procs:
            await asyncio.to_thread(p.join, 60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    # Then each job was claimed by exactly one claimer, and every claim was settled
    assert [p.exitcode for p in procs] == [0, 0]
    claimed = {f"task{i}": ids for i, ids in enumerate(tasks)}
    claimed |= {out.stem: json.loads(out.read_text()) for out in outs}
    counts = Counter(job_id for ids in claimed.values() for job_id in ids)
    assert set(counts) == {e.id for e in envs}
    assert [job_id for job_id, n in counts.items() if n > 1] == []
    assert sum(1 for ids in claimed.values() if ids) >= 3, "the claimers did not compete"
    rows = await backend.list_jobs(owner=None, state="succeeded", limit=2000)
    assert {r.id: r.result for r in rows} == {
        job_id: name for name, ids in claimed.items() for job_id in ids
    }
    stats = await backend.stats()
    assert stats == {}


# -- wake-ups ----------------------------------------------------------------------------------


async def test_a_waiting_claimer_wakes_within_100ms_of_an_enqueue(
    backend: RedisBackend, prefix: str
) -> None:
    # Given a claimer that found nothing and waits up to 10 s, and a producer elsewhere
    producer = await opened(redis_url(prefix))
    try:
        assert await backend.claim([QUEUE], worker_id="w", lease_for=30, limit=1) == []
        woke = asyncio.Event()
        woke_at = 0.0

        async def waiter() -> None:
            nonlocal woke_at
            await backend.wait([QUEUE], 10.0)
            woke_at = time.monotonic()
            woke.set()

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.2)
        assert not woke.is_set()
        # When the producer enqueues
        await producer.enqueue([envelope()])
        enqueued_at = time.monotonic()
        await asyncio.wait_for(task, 5)
        # Then the claimer woke within 100 ms and gets the job
        assert woke_at - enqueued_at < 0.1
        assert len(await backend.claim([QUEUE], worker_id="w", lease_for=30, limit=1)) == 1
    finally:
        await producer.close()


async def test_work_for_another_queue_does_not_wake_a_claimer(backend: RedisBackend) -> None:
    assert await backend.claim([QUEUE], worker_id="w", lease_for=30, limit=1) == []
    start = time.monotonic()
    waiting = asyncio.create_task(backend.wait([QUEUE], 0.4))
    await asyncio.sleep(0.05)
    await backend.enqueue([envelope("elsewhere")])
    await waiting
    assert time.monotonic() - start >= 0.35


#: How long the waits below wait: each ends well within it, by a wake-up.
WAIT_S = 60.0


async def test_a_wake_up_between_claim_and_wait_is_not_lost(
    backend: RedisBackend, prefix: str
) -> None:
    # Given a claimer that found nothing
    producer = await opened(redis_url(prefix))
    try:
        assert await backend.claim([QUEUE], worker_id="w", lease_for=30, limit=1) == []
        # When a job arrives (and its announcement is received) before the claimer waits
        await producer.enqueue([envelope()])
        await asyncio.sleep(0.1)
        # Then the wait returns, long before its end (nothing but a wake-up ends it early;
        # how soon is not asserted: on a loaded machine any bound in seconds may be missed)
        await asyncio.wait_for(backend.wait([QUEUE], WAIT_S), WAIT_S / 2)
    finally:
        await producer.close()


async def test_an_idle_claimer_sleeps_the_whole_timeout(backend: RedisBackend) -> None:
    assert await backend.claim([QUEUE], worker_id="w", lease_for=30, limit=1) == []
    start = time.monotonic()
    await backend.wait([QUEUE], 0.3)
    assert time.monotonic() - start >= 0.28


async def test_the_feed_watcher_wakes_at_a_change(backend: RedisBackend, prefix: str) -> None:
    writer = await opened(redis_url(prefix))
    try:
        assert await backend.changes_since(await backend.last_seq()) == []
        task = asyncio.create_task(backend.wait_changes(WAIT_S))
        await asyncio.sleep(0.2)
        assert not task.done()
        env = envelope()
        await writer.enqueue([env])
        await asyncio.wait_for(task, WAIT_S / 2)  # long before its end: woken
        (change,) = await backend.changes_since(0)
        assert change.job_id == env.id and change.row.state == "queued"
    finally:
        await writer.close()


async def test_waiters_recover_when_the_wake_up_connection_is_killed(
    prefix: str, raw: aioredis.Redis
) -> None:
    # Given a backend whose connections carry a name we can find
    name = "offload-kill-" + prefix.rstrip(":")
    b = await opened(redis_url(prefix, client_name=name))
    try:
        assert await b.claim([QUEUE], worker_id="w", lease_for=30, limit=1) == []
        # When its pub/sub connection is killed while it waits
        waiting = asyncio.create_task(b.wait([QUEUE], WAIT_S))

        async def subscribers() -> list[dict[str, Any]]:
            return [c for c in await raw.client_list() if c["name"] == name and int(c["sub"]) > 0]

        async with asyncio.timeout(WAIT_S / 2):
            while not (found := await subscribers()):  # noqa: ASYNC110 (the server's list)
                await asyncio.sleep(0.05)
        assert len(found) == 1
        await raw.client_kill_filter(_id=found[0]["id"])
        # Then the waiter wakes (it may have missed an announcement), long before its end ...
        await asyncio.wait_for(waiting, WAIT_S / 2)
        # ... and after resubscribing, announcements wake waiters again
        async with asyncio.timeout(WAIT_S / 2):
            while not await subscribers():  # noqa: ASYNC110 (the server's list)
                await asyncio.sleep(0.05)
        assert await b.claim([QUEUE], worker_id="w", lease_for=30, limit=1) == []
        waiting = asyncio.create_task(b.wait([QUEUE], WAIT_S))
        await asyncio.sleep(0.05)
        await b.enqueue([envelope()])
        await asyncio.wait_for(waiting, WAIT_S / 2)
    finally:
        await b.close()


# -- claims on the wake-up (wait_and_claim) ------------------------------------------------


def waiter_name(prefix: str) -> str:
    """The client name of `named(prefix)`'s connections."""
    return "offload-waiter-" + prefix.rstrip(":")


def named(prefix: str) -> str:
    """The URL of `prefix` with a client name of its own (other tests' workers block too)."""
    return redis_url(prefix, client_name=waiter_name(prefix))


@pytest.fixture
async def waiter(prefix: str) -> AsyncIterator[RedisBackend]:
    """A backend whose connections carry the name `blocked_waiters` looks for."""
    b = await opened(named(prefix))
    try:
        yield b
    finally:
        await b.close()


async def blocked_waiters(
    raw: aioredis.Redis, prefix: str, n: int, deadline_s: float = 5.0
) -> list[dict[str, Any]]:
    """The clients of `named(prefix)` blocked in BLPOP, once there are exactly `n` of them
    (or fail at the deadline)."""
    name = waiter_name(prefix)
    end = time.monotonic() + deadline_s
    while True:
        blocked = [
            c
            for c in await raw.client_list()
            if c["name"] == name and c["cmd"] == "blpop" and "b" in c["flags"]
        ]
        if len(blocked) == n or time.monotonic() > end:
            assert len(blocked) == n, blocked
            return blocked
        await asyncio.sleep(0.01)


async def blocked_claim(
    waiter: RedisBackend, raw: aioredis.Redis, prefix: str
) -> tuple[asyncio.Task[list[Lease]], dict[str, Any]]:
    """`waiter.wait_and_claim` (up to 4 jobs of QUEUE, by worker "w"), once it is blocked in
    BLPOP, and its blocked connection."""
    claiming = asyncio.create_task(
        waiter.wait_and_claim([QUEUE], 30.0, worker_id="w", lease_for=30, limit=4)
    )
    (blocked,) = await blocked_waiters(raw, prefix, 1)
    return claiming, blocked


async def test_a_blocked_claimer_gets_the_job_with_its_wake_up(
    waiter: RedisBackend, prefix: str, raw: aioredis.Redis
) -> None:
    # Given a claimer blocked on its queue's wake-ups, and a producer elsewhere
    producer = await opened(redis_url(prefix))
    try:
        claiming, _ = await blocked_claim(waiter, raw, prefix)
        # When the producer enqueues a job
        env = envelope()
        await producer.enqueue([env])
        # Then the wait ends with that job leased to the claimer
        (lease,) = await asyncio.wait_for(claiming, 5)
        assert lease.job_id == env.id and lease.worker == "w"
        row = await waiter.get(env.id)
        assert row is not None and row.state == JobState.RUNNING and row.attempt == 1
    finally:
        await producer.close()


async def test_one_wake_up_per_claimer_and_a_full_claim_wakes_the_next(
    prefix: str, raw: aioredis.Redis
) -> None:
    # Given two claimers blocked on one queue, each taking at most two jobs
    first, second = await opened(named(prefix)), await opened(named(prefix))
    try:
        claims = [
            asyncio.create_task(b.wait_and_claim([QUEUE], 30.0, worker_id=w, lease_for=30, limit=2))
            for b, w in ((first, "a"), (second, "b"))
        ]
        await blocked_waiters(raw, prefix, 2)
        # When three jobs come in one call (one wake-up for the queue)
        envs = [envelope() for _ in range(3)]
        await first.enqueue(envs)
        # Then one claimer takes two, the claim that left one behind wakes the other, and
        # each job is leased once
        leases = [le for got in await asyncio.wait_for(asyncio.gather(*claims), 5) for le in got]
        assert sorted(le.job_id for le in leases) == sorted(e.id for e in envs)
        assert sorted(len(task.result()) for task in claims) == [1, 2]
    finally:
        await first.close()
        await second.close()


async def test_halting_a_blocked_claimer_ends_its_wait_with_nothing_claimed(
    waiter: RedisBackend, prefix: str, raw: aioredis.Redis
) -> None:
    # Given a claimer blocked on its queue's wake-ups
    claiming, _ = await blocked_claim(waiter, raw, prefix)
    # When its wait is halted (the worker stops) with a job waiting
    env = envelope()
    await waiter.halt_wait()
    # Then the wait ends at once and claims nothing ...
    assert await asyncio.wait_for(claiming, 5) == []
    await waiter.enqueue([env])
    row = await waiter.get(env.id)
    assert row is not None and row.state == JobState.QUEUED and row.attempt == 0
    # ... and the next wait of the same backend claims as usual
    (lease,) = await waiter.wait_and_claim([QUEUE], 30.0, worker_id="w", lease_for=30, limit=4)
    assert lease.job_id == env.id


async def test_wake_up_tokens_nobody_takes_are_capped(
    backend: RedisBackend, prefix: str, raw: aioredis.Redis
) -> None:
    from offload.brokers.redis.backend import WAKE_TOKENS_MAX

    for _ in range(WAKE_TOKENS_MAX + 10):
        await backend.enqueue([envelope()])
    assert await raw.llen(f"{{{prefix}}}wake:{QUEUE}") == WAKE_TOKENS_MAX


async def test_a_blocked_claimer_goes_on_when_its_connection_is_killed(
    waiter: RedisBackend, prefix: str, raw: aioredis.Redis
) -> None:
    # Given a claimer blocked on its queue's wake-ups
    claiming, blocked = await blocked_claim(waiter, raw, prefix)
    # When the server drops its connection
    await raw.client_kill_filter(_id=blocked["id"])
    # Then the call claims again on another connection (nothing waits: nothing claimed)
    assert await asyncio.wait_for(claiming, 5) == []
    # ... and its next wait connects anew and is woken as before
    claiming, _ = await blocked_claim(waiter, raw, prefix)
    env = envelope()
    await waiter.enqueue([env])
    (lease,) = await asyncio.wait_for(claiming, 5)
    assert lease.job_id == env.id


async def test_a_cancelled_caller_is_never_left_running(backend: RedisBackend) -> None:
    """redis-py bounds sends with asyncio.wait_for, which on Python 3.11 can swallow a
    cancellation; the backend must not let that happen (a web tier's feed watcher would
    then never stop)."""
    swallowed = 0
    for _ in range(200):

        async def read_feed() -> bool:
            task = asyncio.current_task()
            assert task is not None
            while True:
                await backend.changes_since(0)
                await backend.stats()
                if task.cancelling():
                    return True  # the cancellation was lost inside a backend call

        reader = asyncio.create_task(read_feed())
        await asyncio.sleep(random.random() * 0.003)
        reader.cancel()
        try:
            swallowed += await asyncio.wait_for(reader, 5)
        except asyncio.CancelledError:
            pass
    assert swallowed == 0


# -- chunked sweeps and indexes ----------------------------------------------------------------


async def test_purge_and_prune_sweep_more_than_one_script_chunk(backend: RedisBackend) -> None:
    # Given 1,200 waiting jobs and 1,200 succeeded ones (more than one script call each)
    await backend.enqueue([envelope("done") for _ in range(1200)])
    leases = await backend.claim(["done"], worker_id="w", lease_for=60, limit=1200)
    assert len(leases) == 1200
    assert all(await backend.settle([Outcome(lease=le, state=JobState.SUCCEEDED) for le in leases]))
    waiting = [envelope() for _ in range(1200)]
    await backend.enqueue(waiting)
    # When the queue is purged and finished jobs are pruned
    assert await backend.purge(QUEUE) == 1200
    assert await backend.prune(-1) == 1200
    # Then no job is left, nor any feed entry of theirs (a purged job's went with it)
    assert await backend.stats() == {}
    assert await backend.list_jobs(owner=None, limit=5000) == []
    assert await backend.changes_since(0, limit=10_000) == []


async def test_a_purge_takes_every_job_that_waited_while_producers_keep_up(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Producers that kept up with it kept a purge going (it deleted until a chunk came
    # back short); one that stopped after a count left the scheduled jobs behind, which new
    # ready jobs sort before
    old = [envelope() for _ in range(700)] + [
        envelope(run_at=time.time() + 3600) for _ in range(300)
    ]
    await backend.enqueue(old)
    run = backend._run

    async def with_producers(script: str, *args: Any) -> Any:
        if script == "purge":  # a hundred ready jobs enqueued before each step
            await backend.enqueue([envelope() for _ in range(100)])
        return await run(script, *args)

    monkeypatch.setattr(backend, "_run", with_producers)
    async with asyncio.timeout(60):  # (it went on for as long as the producers did)
        purged = await backend.purge(QUEUE)
    assert purged >= 1000
    left = await backend.list_jobs(owner=None, limit=5000)
    assert not {r.id for r in left} & {e.id for e in old}  # every job that waited went
    assert await backend.purge(QUEUE) >= 0  # (and a purge of what is left ends too)


async def test_lapsed_leases_are_read_past_one_script_chunk(prefix: str) -> None:
    # Given 600 running jobs whose leases lapsed (one claim, one lease token), and a stale
    # lease index entry in front of them
    clock = ShiftClock()
    backend = RedisBackend.from_url(redis_url(prefix), clock=clock)
    await backend.open()
    try:
        await backend.enqueue([envelope() for _ in range(600)])
        leases = await backend.claim([QUEUE], worker_id="w", lease_for=60, limit=600)
        await backend.settle([Outcome(lease=leases[0], state=JobState.SUCCEEDED)])
        await backend._redis.zadd(f"{prefix}leases", {leases[0].job_id: 1.0})
        clock.advance(61)
        # When the rescuer reads them, in chunks of 500 index entries
        lapsed = await backend.expired(limit=1000)
        # Then every lapsed job is reported once, the stale entry dropped, nothing changed
        assert sorted(one.lease.job_id for one in lapsed) == sorted(le.job_id for le in leases[1:])
        assert (await backend.stats())[QUEUE]["running"] == 599
        assert len(await backend.expired(limit=100)) == 100
        # And decisions for all of them apply in one call
        retry = [Outcome(lease=one.lease, state=JobState.RETRYING) for one in lapsed]
        assert all(await backend.rescue(retry))
        assert (await backend.stats())[QUEUE]["queued"] == 599
        assert await backend.expired(limit=1000) == []
    finally:
        await backend.close()


async def test_a_filtered_listing_walks_past_many_non_matching_jobs(backend: RedisBackend) -> None:
    dead = envelope(max_attempts=1)
    await backend.enqueue([dead])
    (lease,) = await backend.claim([QUEUE], worker_id="w", lease_for=60, limit=1)
    await backend.settle([Outcome(lease=lease, state=JobState.DEAD)])
    await backend.enqueue([envelope() for _ in range(1500)])  # newer, all queued
    assert [r.id for r in await backend.list_jobs(owner=None, state="dead")] == [dead.id]
    page = await backend.list_jobs(owner=None, limit=1000)
    assert len(page) == 1000
    rest = await backend.list_jobs(owner=None, before=page[-1].id, limit=1000)
    assert len(rest) == 501 and rest[-1].id == dead.id


async def test_one_jobs_changes_come_from_its_own_index(backend: RedisBackend) -> None:
    envs = [envelope() for _ in range(300)]
    await backend.enqueue(envs)
    target = envs[150]
    leases = await backend.claim([QUEUE], worker_id="w", lease_for=60, limit=300)
    lease = next(le for le in leases if le.job_id == target.id)
    assert await backend.progress(lease, 0.5, "half")
    changes = await backend.changes_since(0, job_id=target.id)
    assert [c.row.state for c in changes] == ["queued", "running", "running"]
    row = changes[-1].row
    assert (row.progress_fraction, row.progress_message) == (0.5, "half")
    later = await backend.changes_since(changes[0].seq, job_id=target.id, limit=1)
    assert [c.seq for c in later] == [changes[1].seq]


async def test_an_owner_filtered_feed_read_walks_past_other_owners(backend: RedisBackend) -> None:
    mine = envelope(owner="alice")
    await backend.enqueue([envelope(owner="bob") for _ in range(1200)] + [mine])
    changes = await backend.changes_since(0, owner="alice")
    assert [c.job_id for c in changes] == [mine.id]


# -- errors ------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_server_is_a_clear_error_at_open() -> None:
    port = _closed_port()
    b = RedisBackend.from_url(f"redis://127.0.0.1:{port}/0")
    start = time.monotonic()
    with pytest.raises(BackendError, match=f"127.0.0.1:{port}") as info:
        await b.open()
    assert isinstance(info.value.__cause__, RedisConnectionError)
    assert time.monotonic() - start < 5
    with pytest.raises(BackendError, match="not open"):
        await b.get("x")


async def test_driver_errors_are_backend_errors_with_the_cause_kept(
    backend: RedisBackend,
) -> None:
    env = envelope()
    await backend.enqueue([env])
    with pytest.raises(BackendError, match="already exists") as info:
        await backend.enqueue([envelope(), envelope(id=env.id)])
    assert isinstance(info.value.__cause__, ResponseError)


async def test_a_node_of_a_redis_cluster_is_refused_at_open(tmp_path: Path) -> None:
    # A cluster node answered MOVED for the keys of a slot it does not hold: offload,
    # which follows no redirect, failed at its first read with only `15534 host:port`
    require_redis()
    async with _cluster_node(tmp_path) as url:
        with pytest.raises(ConfigurationError, match="a node of a Redis Cluster"):
            await RedisBackend.from_url(url).open()


@contextlib.asynccontextmanager
async def _cluster_node(tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a cluster-enabled redis-server of this test's own, answering; started
    again on another port when the one chosen was taken meanwhile (it exits then)."""
    for attempt in range(5):
        port = free_port()
        server = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{attempt}.conf",
            "--dir", str(tmp_path), stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            async with asyncio.timeout(PATIENCE_S):
                while server.returncode is None:
                    try:
                        await client.ping()
                        break
                    except (RedisConnectionError, OSError):
                        await asyncio.sleep(0.05)
            if server.returncode is None:
                yield f"redis://127.0.0.1:{port}/0"
                return
        finally:
            await client.aclose()
            if server.returncode is None:
                server.kill()
            await server.wait()
    pytest.fail("no cluster-enabled redis-server started")


class _Configured:
    """A Redis server's answers to what `open` asks of its durability."""

    def __init__(
        self,
        policy: str = "noeviction",
        aof: str = "1",
        save: str | None = "3600 1",
        maxmemory: str = "1073741824",
    ) -> None:
        self.policy, self.aof, self.save, self.maxmemory = policy, aof, save, maxmemory

    async def info(self, section: str) -> dict[str, str]:
        if section == "memory":
            return {"maxmemory_policy": self.policy, "maxmemory": self.maxmemory}
        return {"aof_enabled": self.aof}

    async def config_get(self, name: str) -> dict[str, str]:
        if self.save is None:  # a managed server that refuses CONFIG
            raise ResponseError("unknown command 'CONFIG'")
        return {name: self.save}


@pytest.mark.parametrize(
    ("server", "warned"),
    [
        (_Configured(), []),
        (_Configured(policy="allkeys-lru"), ["allkeys-lru", "set maxmemory-policy noeviction"]),
        (_Configured(policy="volatile-ttl", maxmemory="0"), []),  # no limit: nothing evicted
        (_Configured(aof="0", save=""), ["appendonly no", "a restart loses every job"]),
        (_Configured(aof="0"), ["the jobs written since its last snapshot", "appendonly yes"]),
        (_Configured(aof="0", save=None), ["the jobs written since its last snapshot"]),
    ],
    ids=["durable", "evicting", "unlimited", "no-persistence", "snapshots-only", "config-refused"],
)
async def test_a_server_that_may_lose_jobs_is_warned_about_once(
    caplog: pytest.LogCaptureFixture, server: _Configured, warned: list[str]
) -> None:
    DURABILITY_WARNED.clear()  # (what earlier tests of this process were told)
    with caplog.at_level("WARNING", logger="offload.brokers"):
        b = RedisBackend.from_url("redis://127.0.0.1:6379/0")
        await b._check_durability(server)  # type: ignore[arg-type]
        assert all(part in caplog.text for part in warned), caplog.text
        assert bool(caplog.records) is bool(warned)
        # A backend opened anew in this process (an app on a test client's next loop)
        # says it no more; one of another server does.
        caplog.clear()
        await RedisBackend.from_url("redis://127.0.0.1:6379/0")._check_durability(server)  # type: ignore[arg-type]
        assert caplog.records == []
        await RedisBackend.from_url("redis://127.0.0.1:6379/1")._check_durability(server)  # type: ignore[arg-type]
        assert bool(caplog.records) is bool(warned)


async def test_opening_warns_of_the_servers_persistence_as_it_is(
    caplog: pytest.LogCaptureFixture, prefix: str, raw: aioredis.Redis
) -> None:
    appendonly = (await raw.config_get("appendonly"))["appendonly"]
    DURABILITY_WARNED.clear()
    with caplog.at_level("WARNING", logger="offload.brokers"):
        b = await opened(redis_url(prefix))
    await b.close()
    warned = "keeps no append-only file (appendonly no)" in caplog.text
    assert warned is (appendonly == "no"), caplog.text


# -- URLs and the factory ----------------------------------------------------------------------


def test_url_options_are_parsed() -> None:
    b = RedisBackend.from_url(
        "rediss://:pw@cache.example:6380/3?prefix=shop:&pool_size=7&socket_timeout=2"
    )
    assert (b.prefix, b.keyspace, b.pool_size) == ("shop:", "{shop:}", 7)
    assert b.url == "rediss://:pw@cache.example:6380/3?socket_timeout=2"
    assert RedisBackend.from_url("redis://localhost").prefix == "offload:"


@pytest.mark.parametrize(
    "url",
    ["redis://localhost/0?pool_size=many", "redis://localhost/0?prefix=", "redis://h?pool_size=1"],
)
def test_bad_url_options_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisBackend.from_url(url)


def test_factory_opens_redis_and_rediss_urls() -> None:
    assert isinstance(open_backend("redis://localhost:6379/0"), RedisBackend)
    assert isinstance(open_backend("rediss://localhost:6379/0"), RedisBackend)


def test_factory_names_the_extra_when_redis_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    for name in [m for m in sys.modules if m.startswith("offload.brokers.redis")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ConfigurationError, match=r"offload\[redis\]"):
        open_backend("redis://localhost:6379/0")


# -- end to end --------------------------------------------------------------------------------


class Step(Message):
    n: int


async def test_a_worker_runs_jobs_end_to_end_on_redis(prefix: str, tmp_path: Path) -> None:
    # Given an app on Redis with a handler that reports progress and uses Context.once
    app = App(
        "redis-e2e", settings=Settings(url=redis_url(prefix), blobs_url=str(tmp_path), lease_s=2.0)
    )
    app.message("redis.step", queue="steps")(Step)
    effects: list[int] = []

    @app.handles(Step)
    async def step(msg: Step, ctx: Context) -> dict[str, int]:
        await ctx.progress(0.5, "half")
        await ctx.once("effect", lambda: effects.append(msg.n))
        return {"double": msg.n * 2}

    worker = Worker(app, concurrency=8)
    async with app:
        jobs = await app.enqueue_many([Step(n=i) for i in range(50)])
        running = asyncio.create_task(worker.run())
        try:
            # When the worker drains the queue
            records = [await job.wait(timeout=20) for job in jobs]
        finally:
            worker.request_stop()
            await asyncio.wait_for(running, 20)
        # Then every job succeeded once, with its result and its progress in the feed
        assert [r.state for r in records] == [JobState.SUCCEEDED] * 50
        assert [r.result for r in records] == [{"double": i * 2} for i in range(50)]
        assert sorted(effects) == list(range(50))
        states = [c.row.state for c in await app.changes_since(0, job_id=jobs[0].id)]
        assert states == ["queued", "running", "running", "succeeded"]


@pytest.mark.parametrize("round_", range(4))
async def test_a_worker_stopping_as_work_comes_leaves_no_job_half_claimed(
    prefix: str, tmp_path: Path, raw: aioredis.Redis, round_: int
) -> None:
    # Given a worker blocked on its queue's wake-ups (its claim sent behind the wait)
    app = App("redis-stop", settings=Settings(url=named(prefix), blobs_url=str(tmp_path)))
    app.message("redis.step", queue="steps")(Step)

    @app.handles(Step)
    async def step(msg: Step, ctx: Context) -> None:
        return None

    worker = Worker(app, concurrency=2)
    async with app:
        running = asyncio.create_task(worker.run())
        await blocked_waiters(raw, prefix, 1)
        # When a job comes as the worker is told to stop (in either order, or at once)
        if round_ % 2:
            worker.request_stop()
        job = await app.enqueue(Step(n=round_))
        worker.request_stop()
        await asyncio.wait_for(running, 10)
        # Then the worker stopped, its wait no longer blocked, and the job either ran or
        # still waits with its attempt unspent: never left leased to a stopped worker
        assert await blocked_waiters(raw, prefix, 0) == []
        record = await job.status()
        assert (record.state, record.attempt) in {("succeeded", 1), ("queued", 0)}


async def test_limits_declared_while_a_worker_waits_on_its_tokens_hold_its_claims(
    prefix: str, tmp_path: Path, raw: aioredis.Redis
) -> None:
    # Given a worker of a queue with no limit, blocked on its wake-up tokens
    app = App(
        "redis-late-limits",
        settings=Settings(url=named(prefix), blobs_url=str(tmp_path), lease_s=1.5),
    )
    app.message("redis.step", queue="steps")(Step)
    release = asyncio.Event()

    @app.handles(Step)
    async def step(msg: Step, ctx: Context) -> None:
        await release.wait()

    worker = Worker(app, concurrency=4)
    async with app:
        running = asyncio.create_task(worker.run())
        try:
            await blocked_waiters(raw, prefix, 1)
            # When another worker declares one job of the kind at a time, and this one has
            # read the limits again (each registry record)
            other = await opened(redis_url(prefix))
            try:
                await other.declare_limits(
                    [KindLimits(kind="redis.step", queue="steps", max_running=1)]
                )
            finally:
                await other.close()
            end = time.monotonic() + 10
            while not worker.gate.gated:
                assert time.monotonic() < end, "the worker never read the declared limits"
                await asyncio.sleep(0.02)
            # (its blocked wait, a plain claim behind it, was halted: it waits on pub/sub)
            await blocked_waiters(raw, prefix, 0)
            jobs = await app.enqueue_many([Step(n=i) for i in range(3)])
            # Then its claims obey them: one job runs, the others wait (a plain claim on
            # the wake-up would have leased all three at once)
            end = time.monotonic() + 10
            while not (states := [(await j.status()).state for j in jobs]).count("running"):
                assert time.monotonic() < end, states
                await asyncio.sleep(0.02)
            assert sorted(states) == ["queued", "queued", "running"]
        finally:
            release.set()
            worker.request_stop()
            await asyncio.wait_for(running, 10)


async def test_a_worker_waiting_on_its_tokens_receives_no_announcements(
    prefix: str, tmp_path: Path, raw: aioredis.Redis
) -> None:
    # Given a worker of a plain queue, blocked on its wake-up tokens
    app = App("redis-quiet", settings=Settings(url=named(prefix), blobs_url=str(tmp_path)))
    app.message("redis.step", queue="steps")(Step)
    ran = asyncio.Event()

    @app.handles(Step)
    async def step(msg: Step, ctx: Context) -> None:
        ran.set()

    worker = Worker(app, concurrency=2)
    async with app:
        running = asyncio.create_task(worker.run())
        try:
            await blocked_waiters(raw, prefix, 1)
            # When a job comes, and it runs
            await app.enqueue(Step(n=1))
            await asyncio.wait_for(ran.wait(), 10)
            await blocked_waiters(raw, prefix, 1)
            # Then none of its connections is subscribed to the announcements
            mine = [c for c in await raw.client_list() if c["name"] == waiter_name(prefix)]
            assert mine and all(int(c["sub"]) == 0 for c in mine)
        finally:
            worker.request_stop()
            await asyncio.wait_for(running, 10)


async def test_enqueue_in_a_transaction_is_refused_on_redis(prefix: str, tmp_path: Path) -> None:
    app = App("redis-tx", settings=Settings(url=redis_url(prefix), blobs_url=str(tmp_path)))
    app.message("redis.step", queue="steps")(Step)
    async with app:
        with pytest.raises(ConfigurationError, match="cannot enqueue inside your transaction"):
            await app.enqueue_in(object(), Step(n=1))
        assert await app.list_jobs(owner=None) == []


# -- the worker registry ----------------------------------------------------------------------


async def test_the_registry_is_stamped_by_the_servers_clock_not_the_hosts(
    backend: RedisBackend, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker host whose clock runs an hour ahead of the Redis server's
    real = time.time
    monkeypatch.setattr(offload.clock, "time", SimpleNamespace(time=lambda: real() + 3600))
    # When it records itself
    await backend.record_worker(worker_info("ahead", {"a": [1]}))
    # Then its heartbeat is the server's time, so it is live to every host, and not forgotten
    seconds, micros = await raw.time()
    (entry,) = await backend.workers(lost_after_s=WORKER_LOST_AFTER_S)
    assert abs(entry.heartbeat_at.timestamp() - (seconds + micros / 1e6)) < 5
    assert not entry.lost
    assert await backend.live_versions(within_s=30) == {"a": {1}}


# -- the jobs page's indexes ---------------------------------------------------------------


async def test_migrate_indexes_jobs_stored_before_the_jobs_page_indexes(
    backend: RedisBackend, raw: aioredis.Redis, prefix: str
) -> None:
    from offload.contract import JobFilter

    # Given jobs stored by an offload without the state, kind and queue indexes
    old = [envelope(), envelope("other")]
    await backend.enqueue(old)
    for key in await keys_of(raw, prefix):
        if key.split("}", 1)[1].startswith(("st:", "kind:", "qids:")):
            await raw.delete(key)
    assert await backend.search_jobs(JobFilter(kind="test.job")) == []
    # When the keys are migrated (in chunks: more jobs than one script call handles)
    await backend.enqueue([envelope() for _ in range(600)])
    assert await backend.migrate() == [1]
    # Then every job is found by each filter, and a second migrate has nothing to do
    found = await backend.search_jobs(JobFilter(kind="test.job"), limit=1000)
    assert len(found) == 602
    assert await backend.count_jobs(JobFilter(queue="other")) == 1
    assert await backend.count_jobs(JobFilter(state="queued")) == 602
    assert await backend.migrate() == []


async def test_enqueue_packs_envelopes_into_one_argument_losslessly(
    backend: RedisBackend,
) -> None:
    # Given envelopes whose strings hold quotes, escapes, NUL and characters beyond the BMP
    text = 'hé "q" \\ \x00 \U0001f600 \u2028'
    first = envelope(payload={"s": text}, owner="ö\x00", idempotency_key="k\U0001f600")
    second = envelope(payload={"s": text}, owner="ö\x00", idempotency_key="k\U0001f600")
    # When they travel packed into the script's one JSON argument
    results = await backend.enqueue([first, second])
    # Then every field arrives as it left, and the key's repeat is resolved in the script
    assert [(r.id, r.created) for r in results] == [(first.id, True), (first.id, False)]
    row = await backend.get(first.id)
    assert row is not None and row.payload == {"s": text}
    assert (row.owner, row.idempotency_key) == ("ö\x00", "k\U0001f600")


async def test_settle_packs_outcomes_into_one_argument_losslessly(backend: RedisBackend) -> None:
    # Given two running jobs, and outcomes whose strings hold quotes, escapes, NUL and
    # characters beyond the BMP, one with a follow-up job
    text = 'hé "q" \\ \x00 \U0001f600 \u2028'
    await backend.enqueue([envelope(), envelope()])
    done, failed = await backend.claim([QUEUE], worker_id="w", lease_for=30, limit=2)
    follow_up = envelope("notes", payload={"s": text})
    outcomes = [
        Outcome(lease=done, state=JobState.SUCCEEDED, result={"s": text}, follow_ups=(follow_up,)),
        Outcome(lease=failed, state=JobState.DEAD, error={"type": "E", "message": text}),
    ]
    # When they travel packed into the settle script's one JSON argument
    assert await backend.settle(outcomes) == [True, True]
    # Then every field arrives as it left
    row = await backend.get(done.job_id)
    assert row is not None and row.state is JobState.SUCCEEDED and row.result == {"s": text}
    row = await backend.get(failed.job_id)
    assert row is not None and row.state is JobState.DEAD
    assert row.error == {"type": "E", "message": text}
    stored = await backend.get(follow_up.id)
    assert stored is not None and stored.payload == {"s": text}


# -- a server that lost its data ----------------------------------------------------------------


async def test_streams_resume_when_the_feed_starts_anew(
    backend: RedisBackend, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from offload.web.events import Hub

    # Given a hub that followed the feed up to some position, and a stream on it
    assert Capability.FEED_RESTARTS in backend.capabilities  # (as the web tier asks)
    hub = Hub(backend, backend.last_seq, restarts=True)
    await hub.start()
    try:
        with hub.subscribe() as everyone, hub.subscribe(owner="alice") as alices:
            await backend.enqueue([envelope() for _ in range(5)])
            async with asyncio.timeout(PATIENCE_S):
                while hub.position < 5:  # noqa: ASYNC110 (the hub's own read moves it)
                    await asyncio.sleep(0.01)
            # When the server loses its data (a restart without persistence) and the
            # feed numbers its changes from 1 again
            drop_redis_prefix(prefix)
            await backend.enqueue([envelope()])
            # Then the hub follows the new feed, and each stream ends, for its client to
            # resume (every change of the new feed was below what it had sent: none reached it)
            async with asyncio.timeout(PATIENCE_S):
                while not (everyone.ended and alices.ended):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert hub.position == 1 == await backend.last_seq()
            assert any(r.action == "feed_reset" for r in caplog.records if hasattr(r, "action"))
    finally:
        await hub.stop()


# -- over maxmemory ---------------------------------------------------------------------------


async def test_heartbeats_and_worker_records_go_on_over_maxmemory(
    own_server: tuple[RedisBackend, aioredis.Redis],
) -> None:
    backend, raw = own_server
    # Given a running job and a worker's record
    await backend.enqueue([envelope()])
    (lease,) = await backend.claim([QUEUE], worker_id="w", lease_for=30, limit=1)
    await backend.record_worker(worker_info("w"))
    await backend.pause("drained")
    # When the server is over its maxmemory, refusing what would grow it
    await raw.config_set("maxmemory-policy", "noeviction")
    await raw.config_set("maxmemory", "1")
    try:
        # (a refusal, not an outage: storage full, as a full disk is on SQLite, and the
        # readiness check says so until a small write fits again)
        with pytest.raises(StorageFull, match=r"over its maxmemory .*used memory > 'maxmemory'"):
            await backend.enqueue([envelope()])
        with pytest.raises(StorageFull):
            await asyncio.to_thread(backend.enqueue_sync, [envelope()])  # (Django's, Flask's)
        with pytest.raises(StorageFull):
            await backend.ping()
        # Then the job's heartbeat still renews its lease (refused, the lease lapsed and the
        # rescue, which was not refused, ran the job again while it ran), and the worker
        # still records itself (refused, it showed as lost)
        before = await raw.zscore(backend.keyspace + "leases", lease.job_id)
        assert await backend.extend([lease], lease_for=60) == [
            Extension(job_id=lease.job_id, held=True)
        ]
        after = await raw.zscore(backend.keyspace + "leases", lease.job_id)
        assert before is not None and after is not None and after > before
        # and a paused queue can be resumed, to drain it (every transaction is refused)
        assert await backend.resume("drained")
        assert not await raw.sismember(backend.keyspace + "paused", "drained")
        await backend.record_worker(dataclasses.replace(worker_info("w"), processed=7))
        (info,) = await backend.workers(lost_after_s=WORKER_LOST_AFTER_S)
        assert info.processed == 7 and not info.lost
    finally:
        await raw.config_set("maxmemory", "0")
    await backend.ping()  # ready again
    assert [r.created for r in await backend.enqueue([envelope()])] == [True]


async def test_a_user_that_may_not_publish_to_the_channels_is_refused_at_open(
    own_server: tuple[RedisBackend, aioredis.Redis],
) -> None:
    backend, raw = own_server
    # Given a user with every command and key but no channel (a new ACL user's default
    # on Redis 7): each script stored its jobs, then failed at its announcement
    await raw.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "resetchannels")
    url = backend.url.replace("redis://", "redis://app:pw@", 1)
    refused = RedisBackend.from_url(url)
    with pytest.raises(BackendError, match="may not publish to offload's channels"):
        await refused.open()
    assert await raw.dbsize() == 0  # nothing was written
    # and with its channels granted, it opens and enqueues
    await raw.execute_command("ACL", "SETUSER", "app", f"&{backend.keyspace}*")
    granted = await opened(url)
    try:
        assert [r.created for r in await granted.enqueue([envelope()])] == [True]
    finally:
        await granted.close()


# -- the lane: script calls on a connection of their own ---------------------------------------


async def test_script_calls_go_on_when_the_server_lost_its_scripts(
    own_server: tuple[RedisBackend, aioredis.Redis],
) -> None:
    backend, raw = own_server
    # Given a backend that made calls (its scripts loaded, its lane connected)
    await backend.enqueue([envelope()])
    # When the server forgets every script (as a restart without persistence does)
    await raw.script_flush()
    # Then the next calls load them again and run once each
    fresh = envelope()
    assert [r.id for r in await backend.enqueue([fresh])] == [fresh.id]
    leases = await backend.claim([QUEUE], worker_id="w", lease_for=30, limit=5)
    assert len(leases) == 2
    await raw.script_flush()
    assert await backend.settle([Outcome(lease=le, state=JobState.SUCCEEDED) for le in leases])
    for lease in leases:
        row = await backend.get(lease.job_id)
        assert row is not None and row.state is JobState.SUCCEEDED


async def test_calls_go_on_when_the_server_closed_the_lane_between_them(
    prefix: str, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a backend whose lane is connected (its connections named, to be found)
    name = f"lane-{uuid7()}"
    backend = await opened(redis_url(prefix, client_name=name))
    try:
        await lane_closed_between_calls(backend, raw, name, caplog)
    finally:
        await backend.close()


async def lane_closed_between_calls(
    backend: RedisBackend, raw: aioredis.Redis, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    await backend.enqueue([envelope()])
    # When the server closes every connection of this backend between two calls
    for client in await raw.client_list():
        if client["name"] == name:
            await raw.client_kill_filter(_id=client["id"])
    # Then the next call answers at its first try (the closed connection is seen and
    # connected anew before anything is sent, as the pool does), and stores its job once
    fresh = envelope()
    with caplog.at_level("WARNING"):
        results = await backend.enqueue([fresh])
    assert [(r.id, r.created) for r in results] == [(fresh.id, True)]
    assert not [r for r in caplog.records if getattr(r, "action", None) == "backend_retry"]
    assert (await backend.stats())[QUEUE]["queued"] == 2


async def test_a_call_cancelled_on_the_lane_never_hands_its_reply_to_the_next(
    backend: RedisBackend,
) -> None:
    """A reply left unread by a cancelled call would be read by the next call on the
    connection: every call must get its own answer."""
    for _ in range(200):
        doomed = asyncio.create_task(backend.enqueue([envelope()]))
        await asyncio.sleep(random.random() * 0.002)
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        fresh = envelope()
        assert [r.id for r in await backend.enqueue([fresh])] == [fresh.id]
        assert await backend.get(fresh.id) is not None


async def test_blocking_enqueues_go_on_when_the_server_lost_its_scripts(
    own_server: tuple[RedisBackend, aioredis.Redis],
) -> None:
    backend, raw = own_server
    # Given a blocking enqueue made (its lane taken), then the server's scripts flushed
    await asyncio.to_thread(backend.enqueue_sync, [envelope()])
    await raw.script_flush()
    # When another blocking enqueue is made, it loads the script again and stores its job
    fresh = envelope()
    results = await asyncio.to_thread(backend.enqueue_sync, [fresh])
    assert [(r.id, r.created) for r in results] == [(fresh.id, True)]
    assert (await backend.stats())[QUEUE]["queued"] == 2


def _enqueue_in_a_forked_child(backend: RedisBackend, out: Any) -> None:
    ids = []
    for _ in range(300):
        e = envelope()
        ids.append((e.id, backend.enqueue_sync([e])[0].id))
    out.put(ids)


async def test_a_forked_child_takes_its_own_blocking_lane(backend: RedisBackend) -> None:
    """Parent and child enqueueing at once on one inherited connection would read each
    other's replies."""
    await asyncio.to_thread(backend.enqueue_sync, [envelope()])  # the parent's lane taken
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_enqueue_in_a_forked_child, args=(backend, out))
    child.start()
    try:

        def mine() -> list[tuple[str, str]]:
            pairs = []
            for _ in range(300):
                e = envelope()
                pairs.append((e.id, backend.enqueue_sync([e])[0].id))
            return pairs

        parents = await asyncio.to_thread(mine)
        childs = await asyncio.to_thread(out.get, True, 60)
    finally:
        await asyncio.to_thread(child.join, 60)
    assert child.exitcode == 0
    assert all(sent == answered for sent, answered in parents + childs)
    assert (await backend.stats())[QUEUE]["queued"] == 601


async def test_reading_the_schedules_is_tried_again_when_the_connection_is_lost(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a connection lost under the first read of the schedules' states (an outage's
    # start: the dashboard's /v1/schedules answered 503 at once, each scheduler warned
    # every second), as every other read,
    tries = 0
    hgetall = backend._redis.hgetall

    async def lost_once(*args: Any) -> Any:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise RedisConnectionError("Connection closed by server.")
        return await hgetall(*args)

    monkeypatch.setattr(backend._redis, "hgetall", lost_once)
    # then it is tried again on a fresh connection, and answers.
    assert await backend.schedule_states() == []
    assert tries == 2


async def test_a_worker_whose_clock_runs_ahead_waits_for_a_scheduled_job_by_the_servers(
    prefix: str, backend: RedisBackend
) -> None:
    # Given a worker on a host whose clock runs 30 s ahead of the Redis server's
    ahead = RedisBackend.from_url(redis_url(prefix), clock=offload.clock.SkewedClock(30.0))
    await ahead.open()
    try:
        # and a job due in 20 s (stamped by a host with the right time)
        await backend.enqueue([envelope(run_at=time.time() + 20.0)])
        assert await ahead.claim([QUEUE], worker_id="w", limit=1, lease_for=30.0) == []
        # when it waits for work, it waits for the job's time by the server's clock, which
        # makes it ready (by its own, the job was due: it claimed again at once, in a loop)
        left = await ahead._wait_timeout([QUEUE], 60.0)
        assert 15.0 < left <= 20.0
    finally:
        await ahead.close()


async def test_a_deleted_job_given_back_for_a_newer_worker_leaves_no_id_behind(
    prefix: str, backend: RedisBackend, raw: aioredis.Redis
) -> None:
    # Given jobs given back once for a worker that knows their newer version, then run,
    newer = {"type": NEWER_VERSION, "message": "version 2 waits for a worker that runs it"}
    envs = [envelope() for _ in range(3)]
    await backend.enqueue(envs)
    leases = await backend.claim([QUEUE], worker_id="w", lease_for=30.0, limit=3)
    given_back = [
        Outcome(lease=le, state=JobState.QUEUED, refund=True, run_at=time.time(), error=newer)
        for le in leases
    ]
    await backend.settle(given_back)
    leases = await backend.claim([QUEUE], worker_id="w", lease_for=30.0, limit=3)
    await backend.settle([Outcome(lease=le, state=JobState.SUCCEEDED) for le in leases])
    # when they are deleted, and their queue has no work left for `stats` to look at,
    assert await backend.delete_many([e.id for e in envs]) == 3
    # then their ids are gone from the set of those given back (it grew for good)
    assert await raw.scard(f"{{{prefix}}}newer:{QUEUE}") == 0
