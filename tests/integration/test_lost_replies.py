"""A call whose reply is lost with its connection (the server applied it) is sent again and
answers as the first attempt would have: one job per envelope, a settle that applied is not
stale, a claim's jobs are handed over, and a replaying event stream carries on.

Each test loses one reply for real: the statement or script runs and commits, then the
server ends that very connection before the client reads the answer (PostgreSQL:
`pg_terminate_backend` of the session; Redis: `CLIENT KILL` of the connection's address).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from offload.brokers.base import Backend, Capability
from offload.contract import JobState, KindLimits, Outcome
from offload.errors import BackendError
from offload.web.events import Hub, owner_stream

from ..contract._support import KIND, claim, done, envelope
from ..services import (
    PG_URL,
    REDIS_URL,
    PgSchema,
    drop_redis_prefix,
    redis_prefix,
    redis_url,
    require_pg,
    require_redis,
)

pytestmark = pytest.mark.anyio


class ReplyLoss:
    """Arms the loss of one reply: of the next run of one query (PostgreSQL) or script
    (Redis); `lost` counts the replies lost."""

    def __init__(self, engine: str, backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine = engine
        self.backend = backend
        #: A query's start (PostgreSQL); a command's first arguments (Redis).
        self.armed: Any = None
        self.lost = 0
        (self._pg if engine == "postgres" else self._redis)(monkeypatch)

    def arm(self, name: str, *, query: str | None = None) -> None:
        """Lose the reply of the next run of the query or script `name` (PostgreSQL: or of
        the next statement that starts with `query`; inside a transaction, the reply of
        that transaction's commit)."""
        if self.engine == "postgres":
            from offload.brokers.postgres.backend import Q

            self.armed = query or Q[name]
        else:
            self.armed = ("EVALSHA", self.backend._scripts[name].sha)

    def _pg(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import psycopg

        execute, commit = psycopg.AsyncCursor.execute, psycopg.AsyncTransaction.__aexit__

        async def lose(conn: Any) -> None:
            pid = conn.info.backend_pid
            async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as k:
                await k.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
            self.lost += 1
            await conn.execute("SELECT 1")  # the session is gone: this raises

        async def losing(cur: Any, query: Any, *args: Any, **kw: Any) -> Any:
            answer = await execute(cur, query, *args, **kw)
            if self.armed is not None and str(query).startswith(self.armed):
                self.armed = None
                if cur.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                    await lose(cur.connection)  # autocommit: the statement committed
                else:
                    cur.connection.offload_test_lose = True  # at the commit
            return answer

        async def committing(tx: Any, *exc: Any) -> Any:
            answer = await commit(tx, *exc)
            if getattr(tx.connection, "offload_test_lose", False) and exc[0] is None:
                tx.connection.offload_test_lose = False
                await lose(tx.connection)
            return answer

        monkeypatch.setattr(psycopg.AsyncCursor, "execute", losing)
        monkeypatch.setattr(psycopg.AsyncTransaction, "__aexit__", committing)

    def _redis(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.asyncio.connection import Connection

        send, read = Connection.send_command, Connection.read_response

        async def sending(conn: Any, *args: Any, **kw: Any) -> None:
            conn.offload_test_sent = args[:2]
            await send(conn, *args, **kw)

        async def losing(conn: Any, *args: Any, **kw: Any) -> Any:
            answer = await read(conn, *args, **kw)
            if self._lose(conn, conn._writer.get_extra_info("sockname")):
                return await read(conn, *args, **kw)  # the connection is gone: this raises
            return answer

        monkeypatch.setattr(Connection, "send_command", sending)
        monkeypatch.setattr(Connection, "read_response", losing)

        # The blocking client of `enqueue_sync` (the same scripts, so the same EVALSHA).
        from redis.connection import Connection as BlockingConnection

        send_blocking, read_blocking = (
            BlockingConnection.send_command,
            BlockingConnection.read_response,
        )

        def sending_blocking(conn: Any, *args: Any, **kw: Any) -> None:
            conn.offload_test_sent = args[:2]
            send_blocking(conn, *args, **kw)

        def losing_blocking(conn: Any, *args: Any, **kw: Any) -> Any:
            answer = read_blocking(conn, *args, **kw)
            if self._lose(conn, conn._sock.getsockname()):
                return read_blocking(conn, *args, **kw)  # the connection is gone: this raises
            return answer

        monkeypatch.setattr(BlockingConnection, "send_command", sending_blocking)
        monkeypatch.setattr(BlockingConnection, "read_response", losing_blocking)

    def _lose(self, conn: Any, sockname: tuple[str, int]) -> bool:
        """Whether the reply just read was the armed command's: then the server ends the
        connection (at `sockname`), whose next read raises."""
        sent = getattr(conn, "offload_test_sent", ())
        if self.armed is None or sent[: len(self.armed)] != self.armed:
            return False
        self.armed = None
        import redis

        killer = redis.Redis.from_url(REDIS_URL)
        try:
            killer.client_kill(f"{sockname[0]}:{sockname[1]}")
        finally:
            killer.close()
        self.lost += 1
        return True


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    from offload.brokers import open_backend

    if request.param == "postgres":
        require_pg()
        schema = PgSchema()
        b = open_backend(await schema.create())
        await b.open()
        try:
            yield b
        finally:
            await b.close()
            await schema.drop()
    else:
        require_redis()
        prefix = redis_prefix()
        b = open_backend(redis_url(prefix))
        await b.open()
        try:
            yield b
        finally:
            await b.close()
            drop_redis_prefix(prefix)


@pytest.fixture
def loss(
    request: pytest.FixtureRequest, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ReplyLoss]:
    engine = "postgres" if "postgres" in type(backend).__name__.lower() else "redis"
    yield ReplyLoss(engine, backend, monkeypatch)


async def _jobs(backend: Backend) -> list[str]:
    return [row.id for row in await backend.list_jobs(owner=None, limit=100)]


@pytest.mark.parametrize("key", [None, "once"])
async def test_an_enqueue_whose_reply_was_lost_stores_one_job_reported_created(
    backend: Backend, loss: ReplyLoss, key: str | None
) -> None:
    # Given an enqueue whose first attempt commits and loses its reply
    env = envelope(key=key)
    loss.arm("enqueue")
    # When it is sent again
    (result,) = await backend.enqueue([env])
    # Then it answers as the first attempt: the job, created, stored once
    assert loss.lost == 1
    assert (result.id, result.created) == (env.id, True)
    assert await _jobs(backend) == [env.id]
    assert [c.row.state for c in await backend.changes_since(0)] == [JobState.QUEUED]
    # and a later enqueue of the same key is still a repeat of it.
    if key is not None:
        (again,) = await backend.enqueue([envelope(key=key)])
        assert (again.id, again.created) == (env.id, False)


@pytest.mark.parametrize("backend", [pytest.param("redis", marks=pytest.mark.redis)], indirect=True)
@pytest.mark.parametrize("key", [None, "once"])
async def test_a_blocking_enqueue_whose_reply_was_lost_stores_one_job_reported_created(
    backend: Backend, loss: ReplyLoss, key: str | None
) -> None:
    # Redis only: PostgreSQL has no blocking enqueue (App.enqueue_sync hops to its loop)
    assert Capability.BLOCKING_ENQUEUE in backend.capabilities
    # Given an enqueue from a thread (App.enqueue_sync) whose first attempt runs and loses
    # its reply
    env = envelope(key=key)
    loss.arm("enqueue")
    # When it is sent again
    (result,) = await asyncio.to_thread(backend.enqueue_sync, [env])  # type: ignore[attr-defined]
    # Then it answers as the first attempt: the job, created, stored once
    assert loss.lost == 1
    assert (result.id, result.created) == (env.id, True)
    assert await _jobs(backend) == [env.id]
    assert [c.row.state for c in await backend.changes_since(0)] == [JobState.QUEUED]


async def test_a_batch_whose_reply_was_lost_reports_each_envelope_as_the_first_attempt(
    backend: Backend, loss: ReplyLoss
) -> None:
    # Given a stored job with a key, and a batch of a new job and a repeat of that key
    (first,) = await backend.enqueue([envelope(key="k")])
    fresh, repeat = envelope(), envelope(key="k")
    loss.arm("enqueue")
    # When the batch's reply is lost and it is sent again
    results = await backend.enqueue([fresh, repeat])
    # Then the new job is created once and the repeat still names the first job.
    assert loss.lost == 1
    assert [(r.id, r.created) for r in results] == [(fresh.id, True), (first.id, False)]
    assert sorted(await _jobs(backend)) == sorted([first.id, fresh.id])


@pytest.mark.parametrize("follow_up", [False, True])
async def test_a_settle_whose_reply_was_lost_is_not_reported_stale(
    backend: Backend, loss: ReplyLoss, follow_up: bool
) -> None:
    # Given a running job, and maybe a follow-up to store with its outcome (on PostgreSQL
    # then one transaction, whose commit's reply is lost)
    await backend.enqueue([envelope()])
    (lease,) = await claim(backend)
    follow = envelope("notify")
    outcome = dataclasses.replace(done(lease, "ok"), follow_ups=(follow,) if follow_up else ())
    loss.arm("settle")
    # When its settle applies, loses its reply and is sent again
    applied = await backend.settle([outcome])
    # Then it is reported applied, once: one final change, one follow-up job,
    assert loss.lost == 1
    assert applied == [True]
    row = await backend.get(lease.job_id)
    assert row is not None and row.state == JobState.SUCCEEDED
    changes = await backend.changes_since(0, job_id=lease.job_id)
    assert [c.row.state for c in changes].count(JobState.SUCCEEDED) == 1
    assert (follow.id in await _jobs(backend)) is follow_up
    # and the same outcome sent by its caller once more is stale, as before.
    assert await backend.settle([done(lease, "again")]) == [False]


@pytest.mark.parametrize("given_back", [False, True])
async def test_a_settle_a_cancel_ended_whose_reply_was_lost_says_so_and_notifies_once(
    backend: Backend, loss: ReplyLoss, given_back: bool
) -> None:
    # Given a running job cancelled unheard, its attempt failed (or given back at a stop),
    job = envelope()
    await backend.enqueue([job])
    (lease,) = await claim(backend)
    await backend.cancel(job.id)
    note = envelope("notify", kind="offload.webhook")
    outcome = Outcome(
        lease=lease,
        state=JobState.QUEUED if given_back else JobState.RETRYING,
        error={"type": "RuntimeError", "message": "boom"},
        run_at=time.time(),
        refund=given_back,
        on_cancel=(note,),
    )
    loss.arm("settle")
    # when its settle ends it cancelled, loses its reply and is sent again,
    applied = await backend.settle([outcome])
    # then the answer says it ended cancelled, and its notification is stored once.
    assert loss.lost == 1
    assert applied == [True] and applied.cancelled == {job.id}
    row = await backend.get(job.id)
    assert row is not None and row.state == JobState.CANCELLED
    assert sorted(await _jobs(backend)) == sorted([job.id, note.id])


async def test_a_claim_whose_reply_was_lost_hands_over_what_it_leased(
    backend: Backend, loss: ReplyLoss
) -> None:
    # Given three ready jobs, and a claim of two whose reply is lost
    envs = [envelope() for _ in range(3)]
    await backend.enqueue(envs)
    loss.arm("claim")
    # When the claim is sent again
    leases = await claim(backend, limit=2)
    # Then it answers the two jobs the lost attempt leased (their first attempt), and
    # leaves the third ready: nothing is leased to nobody.
    assert loss.lost == 1
    assert [le.job_id for le in leases] == [e.id for e in envs[:2]]
    assert [le.envelope.attempt for le in leases] == [1, 1]
    assert [le.job_id for le in await claim(backend)] == [envs[2].id]
    assert await backend.settle([done(le) for le in leases]) == [True, True]


@pytest.fixture
def stall(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[Any]]:
    """`stall()`: from now, the backend's next retried call fails as past the retry deadline
    (a stalled server: the client gives up) without being sent; the list it returns holds
    that call's attempt, for the test to run as the server would once it goes on."""

    def arm() -> list[Any]:
        given_up: list[Any] = []
        run = backend.retrier.run  # type: ignore[attr-defined]

        async def stalled(attempt: Any, **kw: Any) -> Any:
            if not given_up:
                given_up.append(attempt)
                raise BackendError("Redis: no answer within 10s")
            return await run(attempt, **kw)

        monkeypatch.setattr(backend.retrier, "run", stalled)  # type: ignore[attr-defined]
        return given_up

    return arm


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("runs", ["before the next claim", "after the next claim"])
async def test_a_claim_given_up_on_that_a_stalled_server_runs_later_leases_nothing_unheard_of(
    backend: Backend, stall: Callable[[], list[Any]], gated: bool, runs: str
) -> None:
    # Given three ready jobs, and a claim of two that got no answer by the retry deadline
    # (a stalled server: the client gives up, while its attempt waits in the server's
    # buffer, to run once the server goes on),
    envs = [envelope() for _ in range(3)]
    await backend.enqueue(envs)
    given_up = stall()

    async def next_claim(limit: int = 2) -> list[str]:
        if gated:
            leases = await backend.claim_gated(["q"], worker_id="w1", lease_for=60.0, limit=limit)
        else:
            leases = await claim(backend, limit=limit)
        return [le.job_id for le in leases]

    with pytest.raises(BackendError):
        await next_claim()
    # when the server runs that attempt before the worker's next claim, or after it,
    if runs == "before the next claim":
        await given_up[0](False)
        claimed = await next_claim()
    else:
        claimed = await next_claim()
        await given_up[0](False)
    # then the next claim gets the two jobs (their first attempt) whichever ran first, and
    # the attempt given up on leased no others: none lapses, its attempt spent, unrun.
    assert claimed == [e.id for e in envs[:2]]
    rows = [await backend.get(e.id) for e in envs]
    assert [(r.state, r.attempt) for r in rows if r] == [
        (JobState.RUNNING, 1),
        (JobState.RUNNING, 1),
        (JobState.QUEUED, 0),
    ]
    assert await next_claim(10) == [envs[2].id]  # a claim after those takes anew


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_a_claim_given_up_on_that_runs_after_empty_claims_leases_nothing_unheard_of(
    backend: Backend, stall: Callable[[], list[Any]]
) -> None:
    # Given a claim given up on (as above) while the queue was empty, and the worker's next
    # claims, which find nothing either,
    given_up = stall()
    with pytest.raises(BackendError):
        await claim(backend)
    assert await claim(backend) == [] and await claim(backend) == []
    # when a job comes, and only then the server runs the attempt given up on (a server
    # serves the connections that waited through a stall in no set order),
    env = envelope()
    await backend.enqueue([env])
    await given_up[0](False)
    # then the worker's next claim gets the job it leased (its first attempt), leased to no
    # one else.
    (lease,) = await claim(backend)
    assert (lease.job_id, lease.envelope.attempt) == (env.id, 1)
    assert await backend.settle([done(lease)]) == [True]


@pytest.mark.parametrize("gate", ["limited", "fair"])
async def test_a_gated_claim_whose_reply_was_lost_hands_over_what_it_leased(
    backend: Backend, loss: ReplyLoss, gate: str
) -> None:
    # Given three ready jobs of a kind limited to 2 running (or on a fair queue), and a
    # gated claim of two whose reply is lost (PostgreSQL: the limited claim's commit, or
    # the fair claim's one statement)
    fair = ["q"] if gate == "fair" else []
    if gate == "limited":
        await backend.declare_limits([KindLimits(kind=KIND, queue="q", max_running=2)])
    envs = [envelope(owner=f"o{n}") for n in range(3)]
    await backend.enqueue(envs)

    async def gated(limit: int) -> list[str]:
        leases = await backend.claim_gated(
            ["q"], worker_id="w1", lease_for=60.0, limit=limit, fair=fair
        )
        assert [le.envelope.attempt for le in leases] == [1] * len(leases)
        return [le.job_id for le in leases]

    if loss.engine == "redis":
        loss.arm("claim_gated")
    elif gate == "limited":
        loss.arm("claim_picked")
    else:  # a claim of fair queues only: `claim_fair` without its plain queues' part
        from offload.brokers.postgres.backend import _CLAIM_FAIR_ONLY

        loss.arm("claim_fair", query=_CLAIM_FAIR_ONLY)
    # When the claim is sent again
    first = await gated(2)
    # Then it answers the two jobs the lost attempt leased (their first attempt), leases no
    # second batch, and the third is the next claim's once a slot frees.
    assert loss.lost == 1
    assert len(first) == 2 and set(first) < {e.id for e in envs}
    rows = [await backend.get(job_id) for job_id in first]
    assert [row.state if row else None for row in rows] == [JobState.RUNNING] * 2
    (third,) = {e.id for e in envs} - set(first)
    if gate == "limited":
        assert await gated(10) == []
        assert [lim.running for lim in await backend.limits()] == [2]
    row = await backend.get(third)
    assert row is not None and (row.state, row.attempt) == (JobState.QUEUED, 0)


async def test_a_replaying_event_stream_carries_on_after_a_lost_reply(
    backend: Backend, loss: ReplyLoss
) -> None:
    # Given 30 jobs of one owner in the feed
    envs = [envelope(owner="alice") for _ in range(30)]
    await backend.enqueue(envs)
    hub = Hub(backend, backend.last_seq)
    # When a stream replays them from the start and the replay's reply is lost
    loss.arm("changes", query="SELECT seq, job_id, owner, record FROM offload_events")
    stream = owner_stream(hub, backend, "alice", 0, lambda row: {"id": row.id})
    events = []
    async for chunk in stream:
        if chunk.startswith(b"id: ") and b"event:" in chunk:
            events.append(chunk)
        if len(events) == 30:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    # Then every change is replayed, in order, once.
    assert loss.lost == 1
    assert [int(e.split(b"\n")[0][4:]) for e in events] == list(range(1, 31))


async def test_an_event_stream_ends_cleanly_when_the_backend_stays_down(
    backend: Backend,
) -> None:
    # Given a stream resuming from a position, and a backend that is gone (closed)
    await backend.enqueue([envelope(owner="alice")])
    hub = Hub(backend, backend.last_seq)
    stream = owner_stream(hub, backend, "alice", 0, lambda row: {"id": row.id})
    first = await stream.__anext__()
    assert first.startswith(b"retry:")
    await backend.close()
    try:
        # When it replays, then the stream ends (no error escapes to the server).
        assert [chunk async for chunk in stream] == []
    finally:
        await backend.open()


async def test_a_cancel_whose_reply_was_lost_answers_the_cancelled_job(
    backend: Backend, loss: ReplyLoss
) -> None:
    # Given a waiting job whose cancel, with a follow-up, applies and loses its reply
    env, follow = envelope(), envelope("notify")
    await backend.enqueue([env])
    loss.arm("cancel", query="WITH upd AS (\n    UPDATE offload_jobs SET state = 'cancelled'")
    # When it is sent again
    row = await backend.cancel(env.id, [follow])
    # Then it answers the cancelled job (not "already cancelled"), follow-up stored once.
    assert loss.lost == 1
    assert (row.id, row.state) == (env.id, JobState.CANCELLED)
    assert sorted(await _jobs(backend)) == sorted([env.id, follow.id])


@pytest.mark.redis
async def test_a_redis_backend_opening_while_its_connection_is_killed_opens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a Redis that answered, and a connection killed while the scripts load
    from offload.brokers.redis import RedisBackend

    require_redis()
    prefix = redis_prefix()
    backend = RedisBackend.from_url(redis_url(prefix))
    loss = ReplyLoss("redis", backend, monkeypatch)
    loss.armed = ("SCRIPT LOAD",)
    try:
        # When the backend opens, then it does, and works.
        await backend.open()
        assert loss.lost == 1
        env = envelope()
        assert [r.id for r in await backend.enqueue([env])] == [env.id]
    finally:
        await backend.close()
        drop_redis_prefix(prefix)


@pytest.mark.postgres
async def test_a_postgres_backend_opening_while_its_connection_is_killed_opens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a PostgreSQL that answered, and its connection killed while the schema is read
    from offload.brokers.postgres import PostgresBackend

    require_pg()
    schema = PgSchema()
    backend = PostgresBackend.from_url(await schema.create())
    loss = ReplyLoss("postgres", backend, monkeypatch)
    loss.armed = "SELECT to_regclass('offload_migrations')"
    try:
        # When the backend opens, then it does, and works.
        await backend.open()
        assert loss.lost == 1
        env = envelope()
        assert [r.id for r in await backend.enqueue([env])] == [env.id]
    finally:
        await backend.close()
        await schema.drop()
