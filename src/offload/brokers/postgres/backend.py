"""PostgreSQL: queue, status records and change feed in one table set, woken by LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
import secrets
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import orjson
import psycopg
from psycopg.adapt import AdaptersMap
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from ..._text import JSON_STRING
from ...clock import Clock
from ...contract import (
    EnqueueResult,
    Envelope,
    Extension,
    JobFilter,
    JobRow,
    JobState,
    KindLimits,
    Lapsed,
    Lease,
    Outcome,
    ScheduleState,
    Settled,
    WorkerInfo,
)
from ...errors import BackendError, ConfigurationError, InvalidTransition, JobNotFound, SchemaError
from .._retry import DEFAULT_RETRY_DEADLINE_S, PING_DEADLINE_S, Retrier
from .._rows import envelope_of, fields_of_record
from .._sql import queries
from .._wakeup import Wakeup
from ..base import FORGET_WORKER_AFTER_S, Capability, Change, mark_paused
from . import gates as _gates
from . import search as _search

T = TypeVar("T")
log = logging.getLogger("offload.postgres")
Q = queries(__package__)
#: `extend` for the rows it passed over: waiting for their locks (under a lock_timeout).
_EXTEND_WAITING = Q["extend"].replace(
    "FOR NO KEY UPDATE OF j SKIP LOCKED", "FOR NO KEY UPDATE OF j"
)

#: Schema version this code needs; `offload migrate` brings a database up to it.
SCHEMA_VERSION = 13
#: How long a call waits for a pooled connection before it asks the server directly whether
#: it answers (a busy pool, or a server gone while the pool reconnects), and in all.
POOL_PATIENCE_S = 1.0
POOL_WAIT_S = 30.0
#: After the server answered that question, calls that wait wait without asking again.
ANSWERED_FRESH_S = 5.0
#: libpq's TCP settings unless the URL sets its own: a connection whose server went
#: silent (a link that drops every packet, a NAT or firewall that forgot it) fails, and is
#: tried again on another, within about 20 s. Without them a call waited for a reply on it
#: until the kernel gave up, some 15 minutes with data unacknowledged and never while
#: idle: web requests hung, and a worker stopped without a word. Keepalives are probes
#: the server's kernel answers however long a statement runs; `tcp_user_timeout`
#: (milliseconds) bounds data the server does not acknowledge. Ignored on a Unix socket.
TCP_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "2",
    "tcp_user_timeout": "20000",
}
#: What a server says when it takes no more connections (it is up, and full): its own limit,
#: a role's or a database's (`CONNECTION LIMIT`), or the slots it keeps for others.
_SERVER_FULL = (
    "too many clients",
    "too many connections for",
    "remaining connection slots are reserved",
)
#: How long a heartbeat waits for the lock of a job row its first statement passed over
#: (locked: by offload's own progress or settle for a moment, or by a session of yours).
EXTEND_LOCK_WAIT_MS = 250
#: A prune's and a purge's chunk: the jobs each picks (`doomed`), deleted with their history.
_PRUNE = Q["prune"] + "\n" + Q["doomed_gone"]
_PURGE = Q["purge"] + "\n" + Q["doomed_gone"]
#: Jobs a prune (finished ones) or a purge (waiting ones) deletes per transaction, with
#: their feed entries and step results.
PRUNE_CHUNK_ROWS = 2000
#: psycopg's default: a statement run this often on a connection is prepared there
#: (`?prepare_threshold=none` prepares nothing: behind a transaction pooler).
DEFAULT_PREPARE_THRESHOLD = 5
#: Connections per process in the pool (override with `?pool_size=`).
DEFAULT_POOL_SIZE = 10
#: How long the feed reader waits for a missing position before taking it as rolled back.
DEFAULT_GAP_WAIT_S = 2.0
#: Missing feed positions a backend keeps timing at most (see `_before_gap`).
_GAPS_KEPT = 1000
#: Seconds `open` waits for the server to accept a connection (OFFLOAD_CONNECT_TIMEOUT).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: First pause before the LISTEN connection is made again after it dropped (seconds).
DEFAULT_RELISTEN_FIRST_S = 0.05
#: Longest pause between two attempts to LISTEN again while the server is away (seconds).
DEFAULT_RELISTEN_MAX_S = 1.0
#: A lost LISTEN connection is a warning at most once in this many seconds (its connection
#: killed again and again, as a pooler or an operator's script may, says it once a minute;
#: the others, and each return, are at debug level).
RELISTEN_WARN_EVERY_S = 60.0
#: Longest a process's first claim or feed read waits for its LISTEN to be in place (seconds).
LISTEN_WAIT_S = 10.0
#: Arbitrary key of the advisory lock that serialises concurrent migrations.
_MIGRATION_LOCK = 0x0FF10AD
#: Longest a migration's statement waits for a lock (seconds): a lock on the jobs table
#: waits for every transaction that read it, and every call waits behind that wait. Then
#: the migration is undone and tried again later (`MIGRATE_PATIENCE_S` in all).
MIGRATE_LOCK_WAIT_S = 2.0
MIGRATE_PATIENCE_S = 600.0
_TIME_COLUMNS = ("run_at", "enqueued_at", "lease_expires", "started_at", "finished_at")
#: Feed positions `feed_head` reads per query.
_HEAD_CHUNK = 10_000
_FEED_POSITIONS = "SELECT seq FROM offload_events WHERE seq > %(seq)s ORDER BY seq LIMIT %(limit)s"


#: Wake-up counters: "work" moves on a reconnect (anything may have happened), "work:<queue>"
#: on each NOTIFY naming that queue, so a worker wakes only for the queues it claims from.
_WORK = "work:"


#: The schema of a backend whose tables are not made yet: no wake-up names it.
_NO_SCHEMA = "\x00"


def _work_keys(queues: Sequence[str]) -> list[str]:
    return ["work", *(_WORK + q for q in queues)]


class SyncCursor(Protocol):
    """The part of a synchronous DB-API cursor `enqueue_in_sync` uses."""

    def execute(self, sql: str, params: Mapping[str, Any]) -> Any: ...

    def fetchall(self) -> Sequence[Sequence[Any]]: ...

    def __enter__(self) -> SyncCursor: ...

    def __exit__(self, *exc: object) -> Any: ...


class SyncConnection(Protocol):
    """A synchronous DB-API connection to the backend's database (`enqueue_in_sync`)."""

    def cursor(self) -> SyncCursor: ...


def _prepare_threshold(text: str) -> int | None:
    """A URL's `prepare_threshold`, as psycopg takes it: how many runs of a statement on a
    connection before it is prepared there; `none` (or `off`) prepares nothing, as a
    transaction pooler (PgBouncer's `pool_mode = transaction`) needs: it lends one server
    connection to many clients in turn, and the statements one prepared there answered
    another's calls.

    Raises:
        ConfigurationError: neither a whole number nor `none`.
    """
    if text.strip().lower() in ("none", "off"):
        return None
    if not (text.isascii() and text.isdigit()):
        raise ConfigurationError(
            f"prepare_threshold must be a whole number, or none to prepare nothing: {text!r}"
        )
    return int(text)


def _pool_size(text: str) -> int:
    """A URL's `pool_size`.

    Raises:
        ConfigurationError: not a whole number of at least 1.
    """
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise ConfigurationError(f"pool_size must be a whole number of at least 1: {text!r}")
    return size


def _row(raw: dict[str, Any]) -> JobRow:
    row = dict(raw)
    for name in _TIME_COLUMNS:
        value = row.get(name)
        if isinstance(value, datetime):
            row[name] = value.timestamp()
    return JobRow.of(row)


#: The claim query's SELECT list, in order (envelope fields, then the lease's expiry).
_LEASE_COLUMNS = (
    "id", "kind", "version", "payload", "queue", "priority", "attempt", "max_attempts",
    "run_at", "enqueued_at", "idempotency_key", "owner", "trace", "timeout", "options",
    "lease_expires",
)  # fmt: skip


def _resent(sql: str) -> str:
    """The enqueue statement of a resend: an id already stored is the lost attempt's job,
    skipped like a repeated idempotency key instead of failing the statement."""
    clause = "ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
    if clause not in sql:
        raise AssertionError("the enqueue query lost its ON CONFLICT clause")
    return sql.replace(clause, "ON CONFLICT DO NOTHING")


_ENQUEUE_AGAIN = _resent(Q["enqueue"])


def _without_feed(sql: str) -> str:
    """The enqueue statement without its feed entries (`enqueue_feed` writes them)."""
    start, end = sql.index("), ev AS ("), sql.index("\n)\nSELECT id::text FROM ins")
    return sql[:start] + sql[end:]


_ENQUEUE_JOBS = _without_feed(Q["enqueue"])
_ENQUEUE_JOBS_AGAIN = _resent(_ENQUEUE_JOBS)


class _ChunksFailed(Exception):
    """The caller's chunks of a streamed enqueue raised `error`: its failure, not the
    connection's, so never tried again (even a psycopg error of its own)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _fair_only(sql: str) -> str:
    """`claim_fair` without its plain queues' part, for a claim of fair queues only: a part
    that finds nothing still costs its planning, a fifth of the statement's."""
    start = sql.index("    UNION ALL\n    -- the plain queues'")
    return sql[:start] + sql[sql.index("), srcs AS") :]


_CLAIM_FAIR_ONLY = _fair_only(Q["claim_fair"])


def _lease_of(row: tuple[Any, ...], token: str, worker: str) -> Lease:
    """A lease from one row of the claim query."""
    named = dict(zip(_LEASE_COLUMNS, row, strict=True))
    return Lease(
        envelope=envelope_of(named), token=token, expires_at=named["lease_expires"], worker=worker
    )


def _change(event: dict[str, Any]) -> Change:
    """A feed entry: it carries the row's fields (schema 2), or a whole status record as
    entries written before migration 2 hold it."""
    stored: dict[str, Any] = event["record"]
    fields = fields_of_record(stored) if "links" in stored else stored
    owner = event["owner"]
    return Change(
        seq=event["seq"],
        job_id=str(event["job_id"]),
        owner=owner,
        row=JobRow.of({**fields, "owner": owner}),
    )


#: SQLSTATEs of a server that ends or refuses a session: admin shutdown
#: (`pg_terminate_backend`), crash shutdown, cannot connect now (starting up).
_GONE = frozenset({"57P01", "57P02", "57P03"})


def _lost_connection(exc: BaseException) -> bool:
    """A lost or refused connection: the libpq errors without a SQLSTATE (closed socket,
    refused connection), class 08 (connection exception) and the sessions the server
    ended; a new connection that got no answer within `connect_timeout_s` (a network or
    proxy that hangs: `_connect`'s TimeoutError); or a statement prepared before a
    migration changed what it returns (`_stale_plan`: the connection forgets its prepared
    statements, and the call is tried again). Not an integrity, data or syntax error, nor
    a cancelled statement."""
    if _stale_plan(exc) or isinstance(exc, TimeoutError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _GONE


def _stale_plan(exc: BaseException) -> bool:
    """A statement prepared on a connection (psycopg prepares one run often) before a
    migration added a column to the rows it returns: the server refuses to run it ("cached
    plan must not change result type"), and runs nothing of it."""
    if not isinstance(exc, psycopg.errors.FeatureNotSupported):
        return False
    where = getattr(exc.diag, "source_function", None)  # not translated, as the message is
    return where == "RevalidateCachedQuery" or "cached plan" in str(exc)


def _uuid(job_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        return None


#: A JSON string (skipped as it is), or a number orjson wrote with a positive exponent.
_EXPONENT = re.compile(JSON_STRING + rb"|-?[0-9]+(?:\.[0-9]+)?e\+[0-9]+")


def json_text(value: Any) -> str:
    """`value` as JSON text whose numbers jsonb keeps as they were.

    jsonb stores a number as `numeric`, which keeps a fraction as written (`1.0` reads back
    `1.0`, a float) but writes an exponent out: `6.02e+23`, as orjson writes a float from
    1e16 up, would read back as the integer 602214076000000000000000, past what JSON's
    readers take as an integer (64 bits) and no float any more. Such a float is written out
    in full with its `.0`, the same number to the last digit.
    """
    data = orjson.dumps(value)
    if b"e+" in data:  # rare: a float from 1e16 up, or a string that has the two letters
        data = _EXPONENT.sub(_written_out, data)
    return data.decode()


def _written_out(found: re.Match[bytes]) -> bytes:
    token = found[0]
    if token[:1] == b'"':
        return token
    return format(Decimal(token.decode()), "f").encode() + b".0"


#: How often a cancel or a requeue reads a job that moved between its statements again.
_TRANSITION_TRIES = 5


def _json(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value, dumps=json_text)


#: How offload's connections read json and jsonb: with orjson, which is faster than the
#: standard library and reads an integer past 64 bits (written before `json_text`) as the
#: float it was, where `json.loads` made an integer no JSON writer of offload's takes.
_TYPES = AdaptersMap(psycopg.adapters)
set_json_loads(orjson.loads, _TYPES)


class PostgresBackend:
    """Broker and JobStore on PostgreSQL (psycopg 3, async pool).

    Claims use `FOR UPDATE SKIP LOCKED` in batches; every transition and its change-feed
    entry commit in one statement; one LISTEN connection per process wakes claimers and the
    change-feed watcher. It is made by the process's first claim or feed read, not at open:
    a process that only enqueues (a web tier that streams nothing, a producer script) would
    otherwise receive, and parse, a notification for every job it stores.
    """

    #: Its connections belong to the event loop that opened it (`App` refuses another).
    loop_bound = True

    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.PUSH,
            Capability.DEDUP,
            Capability.TRANSACTIONAL_ENQUEUE,
            Capability.STREAMED_ENQUEUE,
        }
    )

    def __init__(
        self,
        conninfo: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        gap_wait_s: float = DEFAULT_GAP_WAIT_S,
        clock: Clock | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
        prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
    ) -> None:
        self.conninfo = conninfo
        self.connect_timeout_s = connect_timeout_s
        #: psycopg's: runs of a statement before a connection prepares it (None: never).
        self.prepare_threshold = prepare_threshold
        self.retrier = Retrier(
            _lost_connection,
            deadline_s=retry_deadline_s,
            log=log,
            engine="PostgreSQL",
            on_retry=self._check_pool,
        )
        #: A clock that stands in for the server's (a test's: `Clock.stands_in_for_server`)
        #: replaces `now()` in every query; None keeps the server's clock, which every host
        #: sharing the database agrees on, also when a host's own clock is given.
        self.clock = clock if clock is not None and clock.stands_in_for_server else None
        self.pool_size = pool_size
        self.gap_wait_s = gap_wait_s
        self._pool: AsyncConnectionPool | None = None
        #: Statements prepared before a migration changed the rows they return fail once;
        #: then every connection forgets its prepared ones when next lent (`_conn`): the
        #: era each connection last did so in, and the current one (0: none failed yet, and
        #: a lend looks nothing up).
        self._plans: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._plans_era = 0
        self._listener: asyncio.Task[None] | None = None
        self._versions = {"work": 0, "feed": 0}
        self._seen: dict[str, int] = {}
        self._wakeup = Wakeup()
        #: Gaps in the feed's positions: the first missing -> the last, when a read first
        #: met them, and the highest position that read had seen (`_gap_met`).
        self._gaps: dict[int, tuple[int, float, int]] = {}
        self._listening = asyncio.Event()
        #: When the listener was started (loop time): the first readers wait for its LISTEN
        #: until `LISTEN_WAIT_S` after that, no longer.
        self._listen_started = 0.0
        #: LISTEN to the change feed too: set by the first read of or wait for the feed (web
        #: processes);
        #: a worker never reads the feed, so its claims and settles do not wake it.
        self._feed_wanted = False
        #: The schema of this backend's tables, which its wake-ups name (migration_10): the
        #: channels are the database's, shared with every other offload schema in it.
        self._schema = _NO_SCHEMA
        #: What held jobs back at this instance's last gated claim: whether a limit did,
        #: and when a start is next due by a rate (see `wait`).
        self._held_back: tuple[bool, float | None] = (False, None)
        #: This instance's gated claims so far: whose turn it is among the plain queues
        #: and the fair ones (`limits.in_turn`).
        self._turns = 0
        #: The limited kinds (and their queues) this instance claimed: their settles wake
        #: the workers waiting for a free slot.
        self._limited: dict[str, str] = {}
        #: The direct connection `_lend` makes to ask whether the server answers, when it
        #: last did (monotonic), and whether it did not the last time it was asked.
        self._asking: asyncio.Future[None] | None = None
        self._answered_at = -math.inf
        self._unanswered = False
        #: The closing of pools replaced by `_renew_pool` (awaited by `close`).
        self._retired: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Clock | None = None,
        connect_timeout_s: float | None = None,
        retry_deadline_s: float | None = None,
    ) -> PostgresBackend:
        """`postgresql://user@host:port/db?pool_size=20&sslmode=require` (libpq options pass
        through; `pool_size` and `prepare_threshold` are ours).

        Args:
            connect_timeout_s: how long `open` waits for the server (default 5 s).
            retry_deadline_s: how long a call tries again after a lost connection (10 s).

        Raises:
            ConfigurationError: a port, `pool_size` or `prepare_threshold` that is no
                number (libpq judges its own options when it connects).
        """
        parts = urlsplit(url)
        hosts = parts.netloc.rpartition("@")[2]  # not the credentials
        for host in hosts.split(","):  # libpq's failover form: h1:5432,h2:5432
            port = host.rpartition("]")[2] if host.startswith("[") else host
            port = port.rpartition(":")[2] if ":" in port else ""
            if port and not (port.isascii() and port.isdigit()):
                raise ConfigurationError(f"the PostgreSQL URL's port is no number: {hosts!r}")
        options = parse_qs(parts.query, keep_blank_values=True)
        pool_size = _pool_size(options.pop("pool_size", [str(DEFAULT_POOL_SIZE)])[-1])
        prepare = options.pop("prepare_threshold", [str(DEFAULT_PREPARE_THRESHOLD)])[-1]
        for name, value in TCP_DEFAULTS.items():
            options.setdefault(name, [value])
        # %20, not +, for spaces: libpq decodes percent escapes only (options=-c a=1 -c b=2)
        query = urlencode({k: v[-1] for k, v in options.items()}, quote_via=quote)
        scheme = "postgresql" if parts.scheme.startswith("postgres") else parts.scheme
        # Not urlunsplit: without a host (postgresql:///db?host=/run/postgresql) it drops
        # the // that libpq needs.
        conninfo = f"{scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
        timeout = DEFAULT_CONNECT_TIMEOUT_S if connect_timeout_s is None else connect_timeout_s
        deadline = DEFAULT_RETRY_DEADLINE_S if retry_deadline_s is None else retry_deadline_s
        return cls(
            conninfo,
            pool_size=pool_size,
            clock=clock,
            connect_timeout_s=timeout,
            retry_deadline_s=deadline,
            prepare_threshold=_prepare_threshold(prepare),
        )

    # -- plumbing ---------------------------------------------------------------------------

    def _clock_now(self) -> float:
        """This process's idea of the backend's clock (the injected one, else the wall
        clock), for timeouts only."""
        return time.time() if self.clock is None else self.clock.now()

    def _now(self) -> datetime | None:
        """The `now` parameter of the queries: None means the server's clock."""
        return None if self.clock is None else datetime.fromtimestamp(self.clock.now(), UTC)

    def _next_turn(self) -> int:
        """This gated claim's turn (`limits.in_turn`): whose turn it is, the plain queues'
        or the fair ones', one claim after another."""
        turn, self._turns = self._turns, self._turns + 1
        return turn

    @property
    def pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise BackendError("the PostgreSQL backend is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        """A pooled connection for one call (its transaction ended as it is given back)."""
        try:
            # The pool the connection goes back to, if close or a renewal runs meanwhile.
            pool, conn = await self._lend()
            try:
                if self._plans_era and self._plans.get(conn, 0) < self._plans_era:
                    await conn.execute("DEALLOCATE ALL")  # (psycopg forgets its own too)
                    self._plans[conn] = self._plans_era
                async with conn:
                    yield conn
            except psycopg.Error as exc:
                if _stale_plan(exc):  # every connection's prepared statements may be stale
                    self._plans_era += 1
                raise
            finally:
                await pool.putconn(conn)
        except psycopg.Error as exc:
            raise BackendError(f"PostgreSQL: {exc}") from exc

    async def _lend(self) -> tuple[AsyncConnectionPool, psycopg.AsyncConnection[Any]]:
        """A connection of the pool, and that pool. None free within `POOL_PATIENCE_S`: a
        busy pool, or a server that is gone while the pool reconnects; the server is asked
        directly (one connection made for every call that asks meanwhile), so that a busy
        pool's caller waits its turn (up to `POOL_WAIT_S`) and a gone server's fails now,
        with the reason, for `Retrier` to try again until the retry deadline."""
        try:
            return await self._take(POOL_PATIENCE_S)
        except PoolTimeout:
            pass
        if time.monotonic() - self._answered_at > ANSWERED_FRESH_S:
            if self._asking is None or self._asking.done():
                self._asking = asyncio.ensure_future(self._ask_server())
            await asyncio.shield(self._asking)  # BackendError: the server does not answer
        return await self._take(POOL_WAIT_S - POOL_PATIENCE_S)

    async def _take(
        self, timeout: float
    ) -> tuple[AsyncConnectionPool, psycopg.AsyncConnection[Any]]:
        """A connection of the pool within `timeout`; a wait that the pool's renewal ends
        (`_renew_pool` closes the pool it replaces) goes on with the new pool."""
        deadline = time.monotonic() + timeout
        while True:
            pool = self.pool
            try:
                conn = await pool.getconn(timeout=max(0.0, deadline - time.monotonic()))
            except PoolClosed:
                if self._pool is pool or self._pool is None:
                    raise  # the backend is closing, not renewing its pool
                continue
            # A connection came: the pool is whole again (it reconnected by itself), and
            # an outage noted before needs no renewal once the server answers a probe.
            self._unanswered = False
            return pool, conn

    async def _ask_server(self) -> None:
        """Whether the server answers a new connection; one that refuses it for want of
        slots (a full server: the pools are busy, not broken) answers too. Answering after
        it did not, it has the pool renewed."""
        try:
            conn = await self._connect()
        except BackendError as exc:
            if not any(full in str(exc) for full in _SERVER_FULL):
                self._unanswered = True
                raise
            self._answered_at = time.monotonic()  # full: a new pool would only add to it
            return
        await conn.close()
        self._answered_at = time.monotonic()
        if self._unanswered:
            self._unanswered = False
            await self._renew_pool()

    def _new_pool(self) -> AsyncConnectionPool:
        """A pool of up to `pool_size` connections, not open yet."""
        return AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=self.pool_size,
            kwargs={
                "autocommit": True,
                "prepare_threshold": self.prepare_threshold,
                "context": _TYPES,
            },
            open=False,
            name="offload",
            timeout=POOL_WAIT_S,  # `_lend` asks the server first when none comes at once
        )

    async def _renew_pool(self) -> None:
        """Replace the pool by a new one, which connects at once, and close the old one.

        The server is back after it did not answer: the old pool's connections are lost,
        and psycopg_pool makes each again after a pause that doubles with every failed
        attempt (1, 2, 4, 8 ... s, for up to 5 minutes), so that after a long outage its
        next attempt can come a minute after the server's return (nothing in its API asks
        for one now). Calls waiting on the old pool go on with the new one (`_take`);
        connections lent by the old one are closed when given back to it.
        """
        old = self._pool
        if old is None:  # closed meanwhile
            return
        new = self._new_pool()
        await new.open()  # not waiting for its first connection: callers wait their turn
        self._pool = new
        log.info("PostgreSQL is back: new connection pool", extra={"action": "pg_pool_renewed"})
        closing = asyncio.create_task(old.close(), name="offload-pg-pool-close")
        self._retired.add(closing)
        closing.add_done_callback(self._retired.discard)

    async def _retrying(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run `fn` on a pooled connection, again on another while the connection is lost
        (server restart, `pg_terminate_backend`), until the retry deadline. Only for reads
        and for writes whose repetition changes nothing (see `Retrier`)."""

        async def attempt(_resent: bool) -> T:
            async with self._conn() as conn:
                return await fn(conn)

        return await self.retrier.run(attempt)

    async def _check_pool(self) -> None:
        """Drop the pool's dead idle connections before a retry. The pool lends a connection
        without checking it (a check would cost a round trip per call), so one the server
        closed while idle fails its first statement; a restart or a kill of every
        connection leaves several, and each would cost an attempt."""
        if self._pool is not None:
            await self._pool.check()

    async def _fetch(
        self, sql: str, params: dict[str, Any], *, retry: bool = True
    ) -> list[dict[str, Any]]:
        async def run(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(sql, params)
                return await cur.fetchall() if cur.description else []

        if retry:
            return await self._retrying(run)
        async with self._conn() as conn:
            return await run(conn)

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self, *, check_schema: bool = True, create: bool = True) -> None:
        """Connect (within `connect_timeout_s`), check the schema and start listening. The
        schema is made by `migrate` only, so `create` changes nothing here."""
        if self._pool is not None:
            return
        await self._probe(check_schema)
        self._wakeup.open()
        pool = self._new_pool()
        try:
            await pool.open(wait=True, timeout=self.connect_timeout_s)
        except Exception as exc:
            await pool.close()
            raise self._unreachable(exc) from exc
        except asyncio.CancelledError:  # (a deadline): its connections are closed
            await pool.close()
            raise
        self._pool = pool
        self._listening = asyncio.Event()

    async def _probe(self, check_schema: bool) -> None:
        """One connection made by hand before the pool, which would retry a refused or
        silent server until its timeout and then hide why: this one fails fast, with the
        driver's reason. Once the server answered, a connection lost while the schema is
        read (killed, or the server restarting) is retried as any call is."""
        first = await self._connect()
        if not check_schema:
            await first.close()
            return

        async def read(resent: bool) -> int:
            conn = await self._connect() if resent else first
            try:
                async with conn:
                    return await self._schema_version(conn)
            except psycopg.Error as exc:
                raise BackendError(f"PostgreSQL: {exc}") from exc

        self._check_version(await self.retrier.run(read))

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        """A connection, or a BackendError saying why not within `connect_timeout_s`."""
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await psycopg.AsyncConnection.connect(
                    self.conninfo,
                    autocommit=True,
                    prepare_threshold=self.prepare_threshold,
                    context=_TYPES,
                )
        except TimeoutError as exc:
            raise BackendError(
                f"cannot connect to PostgreSQL at {self._where()}: "
                f"no answer within {self.connect_timeout_s:g}s (OFFLOAD_CONNECT_TIMEOUT)"
            ) from exc
        except psycopg.Error as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> BackendError:
        reason = " ".join(str(exc).split()) or type(exc).__name__  # libpq's is multi-line
        return BackendError(f"cannot connect to PostgreSQL at {self._where()}: {reason}")

    def _where(self) -> str:
        """Host(s), port(s) and database, without credentials (for messages)."""
        parts = urlsplit(self.conninfo)
        hosts = parts.netloc.rpartition("@")[2] or "localhost"
        if "," not in hosts and not hosts.rpartition("]")[2].count(":"):
            hosts += ":5432"  # the default port, said
        return f"{hosts}{parts.path}"

    async def _schema_version(self, conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute("SELECT to_regclass('offload_migrations') IS NOT NULL")
        exists = (await cur.fetchone())[0]  # type: ignore[index]
        if not exists:
            return 0
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM offload_migrations")
        return int((await cur.fetchone())[0])  # type: ignore[index]

    def _check_version(self, version: int) -> None:
        if version < SCHEMA_VERSION:
            raise SchemaError(
                f"the PostgreSQL schema at {self._where()} is at version {version}, this "
                f"offload needs {SCHEMA_VERSION}: run `offload migrate`"
            )
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"the PostgreSQL schema is at version {version}, newer than "
                f"this offload ({SCHEMA_VERSION}): upgrade offload"
            )

    async def migrate(self) -> list[int]:
        """Apply pending schema migrations (under an advisory lock); returns those applied.

        A statement of theirs waits `MIGRATE_LOCK_WAIT_S` at most for a lock (a transaction
        left open on the jobs table holds one): then they are undone, the transactions in
        the way are logged, and they are tried again after a pause that doubles, for up to
        `MIGRATE_PATIENCE_S`, rather than hold every call behind the lock they wait for.

        Raises:
            BackendError: the locks were not had within `MIGRATE_PATIENCE_S`.
        """
        give_up = time.monotonic() + MIGRATE_PATIENCE_S
        pause = 1.0
        while True:
            try:
                return await self._migrate()
            except BackendError as exc:
                if not isinstance(exc.__cause__, psycopg.errors.LockNotAvailable):
                    raise
                if time.monotonic() + pause > give_up:
                    raise BackendError(
                        f"offload migrate: no lock on offload's tables within "
                        f"{MIGRATE_PATIENCE_S:g}s; {await self._in_the_way()}"
                    ) from exc
            log.warning(
                "migrating waits for a lock on offload's tables, held by another "
                "transaction: %s; trying again in %gs",
                await self._in_the_way(),
                pause,
                extra={"action": "migrate_lock_wait"},
            )
            await asyncio.sleep(pause)
            pause = min(30.0, pause * 2)

    async def _in_the_way(self) -> str:
        """The other transactions open on this database, oldest first (for a log line)."""
        async with self._conn() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                "SELECT pid, extract(epoch FROM now() - xact_start), state, left(query, 60) "
                "FROM pg_stat_activity WHERE datname = current_database() "
                "AND xact_start IS NOT NULL AND pid <> pg_backend_pid() "
                "ORDER BY xact_start LIMIT 3"
            )
            rows = await cur.fetchall()
        said = [
            f"pid {pid} ({state}, open {float(open_s):.0f}s: {' '.join(str(query).split())})"
            for pid, open_s, state, query in rows
        ]
        return "; ".join(said) or "none open now"

    async def _migrate(self) -> list[int]:
        applied: list[int] = []
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            wait_ms = int(MIGRATE_LOCK_WAIT_S * 1000)
            await conn.execute(f"SET LOCAL lock_timeout = {wait_ms}")
            current = await self._schema_version(conn)
            if current > SCHEMA_VERSION:  # a rollback's migrate: not "up to date"
                self._check_version(current)
            if current == SCHEMA_VERSION:
                # Up to date: nothing is created, so the role the processes run as (which
                # may not create in the schema) may run it too, as a deploy step.
                return applied
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS offload_migrations ("
                "version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                await conn.execute(Q[f"migration_{version}"].encode())
                await conn.execute(
                    "INSERT INTO offload_migrations (version) VALUES (%s)", (version,)
                )
                applied.append(version)
        if applied:  # the listener read the schema before the tables were there
            async with self._conn() as conn:
                self._schema = await self._own_schema(conn)
        return applied

    async def close(self) -> None:
        self._listening.set()  # a first reader waiting for its LISTEN stops waiting
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._asking is not None and not self._asking.done():
            self._asking.cancel()
            with contextlib.suppress(asyncio.CancelledError, BackendError):
                await self._asking
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        await asyncio.gather(*self._retired, return_exceptions=True)

    async def ping(self) -> None:
        """Check the server answers, retrying a lost connection for a second at most."""

        async def attempt(_resent: bool) -> None:
            async with self._conn() as conn:
                await conn.execute("SELECT 1")

        await self.retrier.run(attempt, deadline_s=min(PING_DEADLINE_S, self.retrier.deadline_s))

    async def _listen(self) -> None:
        """One LISTEN connection per process; when it drops (a restart of the server, a
        killed backend) it tries again every `DEFAULT_RELISTEN_MAX_S` at most, so wake-ups
        return within about that of the server's return, however long it was away."""
        pause = DEFAULT_RELISTEN_FIRST_S
        lost = False
        loop = asyncio.get_running_loop()
        warned_at: float | None = None  # when a loss was last a warning (loop time)
        level = logging.INFO  # of the loss being mended, and so of its return
        while True:
            try:
                async with await self._listen_connection() as conn:
                    pause = DEFAULT_RELISTEN_FIRST_S
                    # Anything may have happened before this LISTEN (while away, or before
                    # the first): a waiter that marked what it had seen looks again.
                    self._bump("work", "feed")
                    if lost:
                        log.log(level, "LISTEN connection back", extra={"action": "pg_listen_back"})
                    lost = False
                    self._listening.set()
                    # Other schemas of the database use the same channels (migration_10).
                    async for note in conn.notifies():
                        if note.channel == "offload_work":  # "<schema>:<queue>"
                            prefix = self._schema + ":"
                            if note.payload.startswith(prefix):
                                self._bump(_WORK + note.payload[len(prefix) :])
                        elif note.payload == self._schema:
                            self._bump("feed")
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if not lost:
                    now = loop.time()
                    if warned_at is None or now - warned_at >= RELISTEN_WARN_EVERY_S:
                        warned_at, level = now, logging.INFO
                        log.warning(
                            "LISTEN connection lost: %s", exc, extra={"action": "pg_listen"}
                        )
                    else:
                        level = logging.DEBUG
                        log.debug("LISTEN connection lost: %s", exc, extra={"action": "pg_listen"})
                lost = True
            await asyncio.sleep(pause)
            pause = min(pause * 2, DEFAULT_RELISTEN_MAX_S)

    @staticmethod
    async def _own_schema(conn: psycopg.AsyncConnection[Any]) -> str:
        """The schema this backend's tables are in, as wake-ups name it (quoted as
        `quote_ident` does); before `migrate` made them, one no wake-up names."""
        row = await (await conn.execute(Q["wake_prefix"])).fetchone()
        return str(row[0]) if row else _NO_SCHEMA

    async def _follow(self) -> None:
        """Start the listener unless it runs, and return once its LISTEN is in place (or
        `LISTEN_WAIT_S` after it started, while the server cannot be reached): wake-ups
        count from here, so a reader marks what it has seen only after this."""
        if self._listener is None:
            if self._pool is None:
                return  # not open, or closed: nothing wakes anyone
            self._listen_started = asyncio.get_running_loop().time()
            self._listener = asyncio.create_task(self._listen(), name="offload-pg-listen")
        if self._listening.is_set():
            return
        left = self._listen_started + LISTEN_WAIT_S - asyncio.get_running_loop().time()
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), left)

    async def _listen_connection(self) -> psycopg.AsyncConnection[Any]:
        """A connection LISTENing to the work channel (and the feed's, once wanted); the
        connect is bounded, as a server that accepts and never answers would hang it."""
        async with asyncio.timeout(self.connect_timeout_s):
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo,
                autocommit=True,
                prepare_threshold=self.prepare_threshold,
                context=_TYPES,
            )
        try:
            self._schema = await self._own_schema(conn)
            await conn.execute("LISTEN offload_work")
            if self._feed_wanted:
                await conn.execute("LISTEN offload_feed")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _follow_feed(self) -> None:
        """`_follow`, with the feed channel too: the first call reconnects a listener that
        follows work only. Once it listens it bumps every version (as after any reconnect),
        so a change made meanwhile is read, not missed."""
        if self._feed_wanted:
            await self._follow()
            return
        self._feed_wanted = True
        old = self._listener
        if old is None:
            await self._follow()  # the first listener: it follows the feed
            return
        # The new listener first, so a caller cancelled below never leaves the process deaf.
        self._listener = asyncio.create_task(self._listen(), name="offload-pg-listen")
        old.cancel()
        await asyncio.gather(old, return_exceptions=True)

    def _bump(self, *names: str) -> None:
        for name in names:
            self._versions[name] = self._versions.get(name, 0) + 1
        self._wakeup.ring()

    def _moved(self, names: Sequence[str]) -> bool:
        return any(self._versions.get(n, 0) != self._seen.get(n, 0) for n in names)

    def _mark(self, names: Sequence[str]) -> None:
        for name in names:
            self._seen[name] = self._versions.get(name, 0)

    async def _wait_version(self, names: Sequence[str], timeout: float) -> None:
        await self._follow()
        await self._wakeup.wait_until(lambda: self._moved(names), timeout)

    # -- broker -----------------------------------------------------------------------------

    @staticmethod
    def _batch(envelopes: Sequence[Envelope]) -> str:
        return json_text(
            [
                {
                    "id": e.id,
                    "kind": e.kind,
                    "version": e.version,
                    "queue": e.queue,
                    "priority": e.priority,
                    "payload": e.payload,
                    "attempt": e.attempt,
                    "max_attempts": e.max_attempts,
                    "run_at": e.run_at,
                    "enqueued_at": e.enqueued_at,
                    "idempotency_key": e.idempotency_key,
                    "owner": e.owner,
                    "trace": e.trace,
                    "timeout": e.timeout,
                    "options": e.options or None,
                    "unique_key": e.unique_key,
                    "unique_mode": e.unique,
                    "n": n,
                }
                for n, e in enumerate(envelopes)
            ]
        )

    async def enqueue_in(
        self,
        conn: psycopg.AsyncConnection[Any],
        envelopes: Sequence[Envelope],
        *,
        resent: bool = False,
    ) -> list[EnqueueResult]:
        """Enqueue on the caller's own connection, inside their open transaction: the jobs
        exist if and only if that transaction commits (the transactional outbox).

        Args:
            resent: an earlier attempt of this very call may have committed (its reply was
                lost): an envelope whose id is stored is that attempt's job, reported as
                created. Otherwise a stored id is an error.

        Raises:
            BackendError: an envelope's id is already stored (not `resent`); nothing is
                (the statement fails on the primary key, which undoes all of it).
        """
        if not envelopes:
            return []
        if any(e.unique_key is not None for e in envelopes):
            return await _enqueue_unique(conn, envelopes, self._batch, resent=resent)
        async with conn.cursor() as cur:
            sql = _ENQUEUE_AGAIN if resent else Q["enqueue"]
            await cur.execute(sql, {"batch": self._batch(envelopes)})
            created = {str(r[0]) for r in await cur.fetchall()}
            missing = [e for e in envelopes if e.id not in created]
            first = await _first_jobs(cur, missing)
        return [self._result(e, created, first, resent) for e in envelopes]

    def enqueue_in_sync(
        self, conn: SyncConnection, envelopes: Sequence[Envelope]
    ) -> list[EnqueueResult]:
        """`enqueue_in` on a synchronous DB-API connection (psycopg's `Connection`, or a
        framework's wrapper of one, such as Django's): inside the caller's open
        transaction, in the calling thread; the jobs exist if and only if it commits. It
        needs no open backend: only the caller's connection is used.

        Raises:
            BackendError: a job of a `unique` kind (its enqueue takes several rounds,
                async only), or an envelope's id already stored (nothing is).
        """
        if not envelopes:
            return []
        if any(e.unique_key is not None for e in envelopes):
            raise BackendError("jobs of unique kinds are enqueued on async connections only")
        with conn.cursor() as cur:
            try:
                cur.execute(Q["enqueue"], {"batch": self._batch(envelopes)})
            except Exception as exc:
                if UNDEFINED_TABLE in (_sqlstate(exc), _sqlstate(exc.__cause__)):
                    raise SchemaError(
                        f"offload's tables are not in the database at {self._where()} (or "
                        "not on its search_path): run `offload migrate` with this URL"
                    ) from exc
                raise
            created = {str(r[0]) for r in cur.fetchall()}
            first: dict[tuple[str, str], str] = {}
            repeats = [e for e in envelopes if e.id not in created and e.idempotency_key]
            for owner in {e.owner for e in repeats}:
                keys = [e.idempotency_key for e in repeats if e.owner == owner]
                cur.execute(Q["find_idem"], {"owner": owner, "keys": keys})
                first.update({(owner, k): str(i) for k, i in cur.fetchall()})
        return [self._result(e, created, first, False) for e in envelopes]

    @staticmethod
    def _result(
        e: Envelope, created: set[str], first: dict[tuple[str, str], str], resent: bool
    ) -> EnqueueResult:
        """One envelope's answer: stored now; stored by the lost first attempt of a resent
        call (the id is taken: the statement is all or nothing, so that attempt stored the
        whole batch); or a repeat of the job its idempotency key names."""
        if e.id in created:
            return EnqueueResult(id=e.id, created=True)
        earlier = first.get((e.owner, e.idempotency_key or ""))
        if resent and earlier in (None, e.id):
            return EnqueueResult(id=e.id, created=True)
        if earlier is None:
            raise BackendError(f"PostgreSQL: job id {e.id} already exists; nothing was stored")
        return EnqueueResult(id=earlier, created=False)

    async def enqueue(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        """Store the envelopes atomically, all or none (see Broker.enqueue).

        Tried again on a lost connection: the statement is atomic and the ids are primary
        keys, so a resend after a lost reply cannot store a job twice, and it answers as
        the first attempt did (`enqueue_in`, `resent`).
        """
        if not envelopes:
            return []

        # No BEGIN/COMMIT: the enqueue is one statement, atomic on its own (jobs, their feed
        # entries and the NOTIFY), so an autocommit connection makes it one round trip. A
        # batch with unique jobs takes several statements (see _enqueue_unique): one
        # transaction, all or none.
        unique = any(e.unique_key is not None for e in envelopes)

        async def attempt(resent: bool) -> list[EnqueueResult]:
            async with self._conn() as conn:
                if not unique:
                    return await self.enqueue_in(conn, envelopes, resent=resent)
                async with conn.transaction():
                    return await self.enqueue_in(conn, envelopes, resent=resent)

        return await self.retrier.run(attempt)

    async def enqueue_stream(
        self, chunks: AsyncIterator[Sequence[Envelope]]
    ) -> list[EnqueueResult]:
        """Store every chunk `chunks` yields atomically, all or none, each sent as it comes
        (Capability.STREAMED_ENQUEUE): one statement a chunk, pipelined in one transaction,
        so the server inserts a chunk while the caller stamps the next (a third more jobs/s
        for 10,000 jobs than one statement after all are stamped: bench/RESULTS.md,
        "pg-bulk-overlap"). For jobs without idempotency or unique keys (`App.enqueue_many`
        sends only those here).

        The feed entries of the new jobs go last, just before the commit (`enqueue_feed`):
        no feed position waits uncommitted while the caller stamps. Tried again on a lost
        connection as `enqueue` is: the chunks already taken are sent again (`resent`), then
        the rest. An error of `chunks` itself is raised as it is, never tried again.
        """
        taken: list[Sequence[Envelope]] = []

        async def every() -> AsyncIterator[Sequence[Envelope]]:
            for chunk in list(taken):
                yield chunk
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise _ChunksFailed(exc) from exc
                taken.append(chunk)
                yield chunk

        async def attempt(resent: bool) -> list[EnqueueResult]:
            sql = _ENQUEUE_JOBS_AGAIN if resent else _ENQUEUE_JOBS
            sent: list[tuple[Sequence[Envelope], psycopg.AsyncCursor[Any]]] = []
            async with self._conn() as conn, conn.transaction(), conn.pipeline() as pipeline:
                async for chunk in every():
                    if any(e.unique_key is not None or e.idempotency_key for e in chunk):
                        raise ValueError("a streamed enqueue takes jobs without keys only")
                    cur = conn.cursor()
                    await cur.execute(sql, {"batch": self._batch(chunk)})
                    sent.append((chunk, cur))
                await pipeline.sync()
                created = [r[0] for _, cur in sent for r in await cur.fetchall()]
                if created:  # the feed entries last: see the query
                    await conn.execute(Q["enqueue_feed"], {"ids": created})
            stored = set(created)
            return [self._result(e, stored, {}, resent) for chunk, _ in sent for e in chunk]

        try:
            return await self.retrier.run(attempt)
        except _ChunksFailed as failed:
            raise failed.error from None

    async def claim(
        self, queues: Sequence[str], *, worker_id: str, lease_for: float, limit: int
    ) -> list[Lease]:
        """Lease up to `limit` ready jobs in one statement (see Broker.claim).

        Tried again on a lost connection with the same token: a resend first reads the jobs
        leased to that token, so a claim whose reply was lost hands over what it leased
        instead of leaving it, its attempt spent, to lapse. A resend that finds none claims
        anew (the lost attempt leased nothing, or was rolled back). The one case it cannot
        see is a first attempt still running on a server that lost only the client (a
        network partition, not a killed session): those jobs wait out their lease, and the
        rescuer gives them back.
        """
        if limit <= 0 or not queues:
            return []
        await self._follow()
        self._mark(_work_keys(queues))
        token = secrets.token_hex(12)
        params = {
            "queues": list(queues),
            "limit": limit,
            "token": token,
            "lease_for": lease_for,
            "worker": worker_id,
            "now": self._now(),
        }

        async def attempt(resent: bool) -> list[tuple[Any, ...]]:
            async with self._conn() as conn:
                return await claim_on(cast(psycopg.AsyncConnection[Any], conn), resent)

        async def claim_on(
            conn: psycopg.AsyncConnection[Any], resent: bool
        ) -> list[tuple[Any, ...]]:
            async with conn.cursor() as cur:  # plain tuples: no dict per claimed row
                if resent:  # the lost attempt's jobs, if it ran: leased to this token
                    await cur.execute(Q["claimed"], params)
                    rows = await cur.fetchall()
                    if rows:
                        return rows
                await cur.execute(Q["claim"], params)
                return await cur.fetchall()

        return [_lease_of(row, token, worker_id) for row in await self.retrier.run(attempt)]

    async def claim_gated(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        lease_for: float,
        limit: int,
        fair: Collection[str] = (),
    ) -> list[Lease]:
        """Lease up to `limit` ready jobs within their kinds' limits, fair queues round-robin
        over owners (see Broker.claim_gated).

        Tried again on a lost connection with the same token, as `claim` is: a resend first
        reads the jobs leased to that token, so a claim whose reply was lost hands over what
        it leased (its starts logged once) instead of leasing a second batch.
        """
        if limit <= 0 or not queues:
            return []
        await self._follow()
        self._mark(_work_keys(queues))
        token = secrets.token_hex(12)
        if not set(queues) & set(self._limited.values()):
            return await self._claim_fair(
                queues, frozenset(fair), token, worker_id, lease_for, limit
            )
        now = self._now()
        params = {"limit": limit, "now": now, "token": token}
        turn = self._next_turn()

        began = 0.0  # this host's time as the claim's transaction began (see below)

        async def attempt(resent: bool) -> tuple[list[tuple[Any, ...]], _gates.Usage | None]:
            nonlocal began
            async with self._conn() as conn:
                began = self._clock_now()
                async with conn.transaction():
                    return await picked(cast(psycopg.AsyncConnection[Any], conn), resent)

        async def picked(
            c: psycopg.AsyncConnection[Any], resent: bool
        ) -> tuple[list[tuple[Any, ...]], _gates.Usage | None]:
            if resent and (rows := await _claimed(c, token)):
                return rows, None
            usage = await _gates.read(c, queues, now)
            ids, served = await _gates.pick(c, queues, frozenset(fair), usage.gate(), params, turn)
            if not ids:
                return [], usage
            await _gates.take_turns(c, served)
            claim = {
                "ids": ids,
                "token": token,
                "lease_for": lease_for,
                "worker": worker_id,
                "now": now,
                **_gates.claim_params(usage),
            }
            async with c.cursor(row_factory=tuple_row) as cur:
                await cur.execute(Q["claim_picked"], claim)
                return await cur.fetchall(), usage

        rows, usage = await self.retrier.run(attempt)
        if usage is not None:
            self._limited.update({x.kind: x.queue for x in usage.limits})
            after = usage.gate([row[1] for row in rows])
            due = after.next_start_at
            if due is not None:  # by the server's clock (its `now()`, the transaction's
                due += began - usage.now_s  # start), as the claim counts: on this host's
            self._held_back = (bool(after.blocked), due)
        return [_lease_of(row, token, worker_id) for row in rows]

    async def _claim_fair(
        self,
        queues: Sequence[str],
        fair: frozenset[str],
        token: str,
        worker_id: str,
        lease_for: float,
        limit: int,
    ) -> list[Lease]:
        """A gated claim of queues with no limit (as this instance last read the limits):
        fair queues round-robin over owners, in one statement; a resend reads what the
        token holds first, as `claim` does."""
        params = {
            "queues": [q for q in queues if q not in fair],
            "fair": [q for q in queues if q in fair],
            "limit": limit,
            "token": token,
            "lease_for": lease_for,
            "worker": worker_id,
            "now": self._now(),
            "turn": self._next_turn(),
        }
        sql = Q["claim_fair"] if params["queues"] else _CLAIM_FAIR_ONLY

        async def attempt(resent: bool) -> list[tuple[Any, ...]]:
            async with self._conn() as conn:
                c = cast(psycopg.AsyncConnection[Any], conn)
                if resent and (rows := await _claimed(c, token)):
                    return rows
                async with c.cursor(row_factory=tuple_row) as cur:
                    await cur.execute(sql, params)
                    return await cur.fetchall()

        self._held_back = (False, None)
        return [_lease_of(row, token, worker_id) for row in await self.retrier.run(attempt)]

    async def declare_limits(self, limits: Sequence[KindLimits]) -> None:
        """Store the limits (an upsert per kind: a resend after a lost reply changes
        nothing more)."""

        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await _gates.declare(conn, limits)

        await self._retrying(run)
        self._limited.update({x.kind: x.queue for x in limits if x.limited})

    async def limits(self) -> list[KindLimits]:
        """Every stored kind's limits with its usage; what this instance then knows of them
        picks its gated claim's way (a queue with no limit claims in one statement)."""

        async def run(conn: psycopg.AsyncConnection[Any]) -> list[KindLimits]:
            async with conn.transaction():
                return (await _gates.read(conn, None, self._now())).limits

        stored = await self._retrying(run)
        self._limited = {x.kind: x.queue for x in stored}
        return stored

    async def _announce_slots(self, outcomes: Sequence[Outcome], applied: Sequence[bool]) -> None:
        """Wake the workers waiting for a slot of the limited kinds whose jobs settled."""
        kinds = {o.lease.envelope.kind for o, ok in zip(outcomes, applied, strict=True) if ok}
        queues = sorted({self._limited[k] for k in kinds if k in self._limited})
        if queues:
            await self._fetch(Q["announce_work"], {"queues": queues})

    async def extend(self, leases: Sequence[Lease], *, lease_for: float) -> list[Extension]:
        if not leases:
            return []
        rows = await self._fetch(
            Q["extend"],
            {
                "lease_for": lease_for,
                "now": self._now(),
                "ids": [le.job_id for le in leases],
                "tokens": [le.token for le in leases],
            },
        )
        renewed = {str(r["id"]): r["cancel_requested"] for r in rows}
        passed_over = [le for le in leases if le.job_id not in renewed]
        if passed_over:  # lost, or locked by another transaction: a moment's wait for those
            renewed.update(await self._extend_waiting(passed_over, lease_for))
        held = dict(renewed)
        locked = [le for le in passed_over if le.job_id not in renewed]
        if locked:  # lost, or still locked: which of the two
            rows = await self._fetch(
                Q["still_held"],
                {"ids": [le.job_id for le in locked], "tokens": [le.token for le in locked]},
            )
            held.update((str(r["id"]), r["cancel_requested"]) for r in rows)
        return [
            Extension(
                job_id=le.job_id,
                held=le.job_id in held,
                cancel_requested=bool(held.get(le.job_id)),
                renewed=le.job_id in renewed,
            )
            for le in leases
        ]

    async def _extend_waiting(self, leases: Sequence[Lease], lease_for: float) -> dict[str, bool]:
        """Renew the leases `extend` passed over, waiting `EXTEND_LOCK_WAIT_MS` at most for
        their rows' locks: together, then, if one of them stays locked longer, one by one.
        Returns the renewed ones' cancel flags by id."""
        together = await self._renewed_waiting(leases, lease_for)
        if together is not None:
            return together
        renewed: dict[str, bool] = {}
        if len(leases) > 1:
            for lease in leases:
                renewed.update(await self._renewed_waiting([lease], lease_for) or {})
        return renewed

    async def _renewed_waiting(
        self, leases: Sequence[Lease], lease_for: float
    ) -> dict[str, bool] | None:
        """One `_EXTEND_WAITING` of `leases`: the renewed ones' cancel flags by id, or None
        when a row stayed locked past `EXTEND_LOCK_WAIT_MS` (nothing renewed)."""
        params = {
            "lease_for": lease_for,
            "now": self._now(),
            "ids": [le.job_id for le in leases],
            "tokens": [le.token for le in leases],
        }

        async def run(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {EXTEND_LOCK_WAIT_MS}")
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(_EXTEND_WAITING, params)
                    return await cur.fetchall()

        try:
            rows = await self._retrying(run)
        except BackendError as exc:
            if isinstance(exc.__cause__, psycopg.errors.LockNotAvailable):
                return None
            raise
        return {str(r["id"]): r["cancel_requested"] for r in rows}

    async def settle(self, outcomes: Sequence[Outcome]) -> Settled:
        """Apply the outcomes in one statement (with their follow-ups, one transaction).

        Tried again on a lost connection, as a resend. A settle spends its lease token,
        marking it settled: in a resend, an outcome whose first attempt applied (the reply
        lost) finds its own mark and answers True, follow-ups not stored twice; a lease that
        a rescue or another claim took answers False as before, and so does an outcome its
        caller sends twice (not a resend). One case still answers False:
        a retrying or released job claimed again (a new token) between the lost reply and
        the resend, a few milliseconds; the worker then takes its result as stale.
        """
        applied = await self._settle(outcomes, lapsed=False)
        if self._limited:
            await self._announce_slots(outcomes, applied)
        return applied

    async def _settle(self, outcomes: Sequence[Outcome], *, lapsed: bool) -> Settled:
        if not outcomes:
            return Settled()
        now = self._now()
        batch = json_text(
            [
                {
                    "id": o.lease.job_id,
                    "token": o.lease.token,
                    "state": o.state.value,
                    "final": o.state.final,
                    "result": o.result,
                    "error": o.error,
                    "run_at": o.run_at,
                    "refund": 1 if o.refund else 0,
                    "max_attempts": o.max_attempts,
                    "lapsed": lapsed,
                }
                for o in outcomes  # (locked in id order by the statement: see `extend`)
            ]
        )

        async def run(conn: psycopg.AsyncConnection[Any], resent: bool) -> _Applied:
            async with conn.cursor() as cur:
                await cur.execute(Q["settle"], {"batch": batch, "now": now, "resent": resent})
                return {job_id: (state, written) for job_id, state, written in await cur.fetchall()}

        follow = any(o.follow_ups or o.on_cancel for o in outcomes)

        async def attempt(resent: bool) -> _Applied:
            async with self._conn() as conn:
                if not follow:  # one statement: autocommit, one round trip
                    return await run(conn, resent)
                async with conn.transaction():
                    applied = await run(conn, resent)
                    notes = [e for o in outcomes for e in _notes(o, applied)]
                    await self.enqueue_in(conn, notes, resent=resent)
                return applied

        applied = await self.retrier.run(attempt)
        return Settled(
            (o.lease.job_id in applied for o in outcomes),
            (o.lease.job_id for o in outcomes if _ended_cancelled(o, applied)),
        )

    async def expired(self, *, limit: int) -> list[Lapsed]:
        async def run(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            async with conn.cursor() as cur:
                await cur.execute(Q["expired"], {"limit": limit, "now": self._now()})
                return await cur.fetchall()

        return [
            Lapsed(lease=_lease_of(row[:-3], row[-3], row[-2]), cancel_requested=row[-1])
            for row in await self._retrying(run)
        ]

    async def rescue(self, decisions: Sequence[Outcome]) -> Settled:
        applied = await self._settle(decisions, lapsed=True)
        if self._limited:
            await self._announce_slots(decisions, applied)
        return applied

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        held, next_start_at = self._held_back
        if held:  # ready jobs wait for a limit: not for the next due job, which may be one
            if next_start_at is not None:
                timeout = max(0.0, min(timeout, next_start_at - self._clock_now()))
            await self._wait_version(_work_keys(queues), timeout)
            return
        rows = await self._fetch(Q["next_run_at"], {"queues": list(queues), "now": self._now()})
        until_next = next(iter(rows[0].values())) if rows else None
        if until_next is not None:
            timeout = max(0.0, min(timeout, float(until_next)))
        await self._wait_version(_work_keys(queues), timeout)

    async def stats(self) -> dict[str, dict[str, Any]]:
        rows = await self._fetch(Q["stats"], {"now": self._now()})
        paused = [r["queue"] for r in await self._fetch(Q["paused"], {})]
        return mark_paused(self._stats_of(rows), paused)

    @staticmethod
    def _stats_of(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {
            r["queue"]: {
                "queued": r["queued"],
                "scheduled": r["scheduled"],
                "running": r["running"],
                "dead": r["dead"],
                "oldest_age_s": max(0.0, float(r["oldest_age_s"])),
                "awaiting_newer_worker": r["awaiting_newer_worker"],
            }
            for r in rows
        }

    async def purge(self, queue: str) -> int:
        """Delete the waiting jobs of `queue`, with their feed entries and step results,
        `PRUNE_CHUNK_ROWS` per transaction; those enqueued after the newest that waited
        when it began are kept, as if it had been one. A resend after a lost reply counts
        only what it deleted itself."""
        rows = await self._fetch(Q["newest_waiting"], {"queue": queue})
        newest = rows[0]["newest"] if rows else None
        if newest is None:
            return 0
        params = {"queue": queue, "newest": newest, "chunk": PRUNE_CHUNK_ROWS}
        return await self._in_chunks(_PURGE, lambda: params)

    async def _in_chunks(self, sql: str, params: Callable[[], dict[str, Any]]) -> int:
        """Run `sql`, a chunk of a prune or a purge (`doomed_gone`: it counts the jobs it
        deleted), with `params()`, until a chunk deletes fewer than `PRUNE_CHUNK_ROWS`;
        returns the jobs deleted in all."""
        total = 0
        while True:
            n = int((await self._fetch(sql, params()))[0]["count"])
            total += n
            if n < PRUNE_CHUNK_ROWS:
                return total

    # -- workers ----------------------------------------------------------------------------

    async def record_worker(self, worker: WorkerInfo) -> None:
        entry = worker.entry()
        params = {
            "id": worker.id,
            "kinds": _json(entry["kinds"]),
            "info": _json(entry),
            "now": self._now(),
            "forget": FORGET_WORKER_AFTER_S,
        }
        await self._fetch(Q["record_worker"], params)

    async def forget_worker(self, worker_id: str) -> None:
        await self._fetch(Q["forget_worker"], {"id": worker_id})

    async def workers(self, *, lost_after_s: float) -> list[WorkerInfo]:
        rows = await self._fetch(Q["registry"], {"now": self._now(), "lost_after": lost_after_s})
        return [WorkerInfo.of(r["info"], heartbeat_at=r["seen_at"], lost=r["lost"]) for r in rows]

    async def live_versions(self, *, within_s: float) -> dict[str, set[int]]:
        rows = await self._fetch(Q["live_workers"], {"within": within_s, "now": self._now()})
        live: dict[str, set[int]] = {}
        for row in rows:
            for kind, versions in row["kinds"].items():
                live.setdefault(kind, set()).update(versions)
        return live

    # -- paused queues ----------------------------------------------------------------------

    async def pause(self, queue: str) -> bool:
        return bool(await self._fetch(Q["pause"], {"queue": queue, "now": self._now()}))

    async def resume(self, queue: str) -> bool:
        return bool(await self._fetch(Q["resume"], {"queue": queue}))

    # -- job store --------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRow | None:
        key = _uuid(job_id)
        if key is None:
            return None
        rows = await self._fetch(Q["get"], {"id": key})
        return _row(rows[0]) if rows else None

    async def list_jobs(
        self,
        *,
        owner: str | None,
        state: str | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[JobRow]:
        try:
            f = JobFilter(owner=owner, state=state, kind=kind)
        except ValueError:  # an unknown state: no job is in it
            return []
        # The jobs page's query: a kind without a state is read one state at a time (search.py)
        return await self.search_jobs(f, before=before or None, limit=limit)

    # -- operators: finding jobs and acting on many (see search.py) -------------------------

    async def search_jobs(
        self,
        f: JobFilter,
        *,
        states: Collection[str] | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[JobRow]:
        query = _search.search_sql(f, states, before, limit)
        if query is None:
            return []
        return [_row(r) for r in await self._fetch(*query)]

    async def count_jobs(self, f: JobFilter, *, cap: int | None = None) -> int:
        query = _search.count_sql(f, cap)
        return 0 if query is None else int((await self._fetch(*query))[0]["n"])

    @staticmethod
    def _keys(ids: Sequence[str]) -> list[uuid.UUID]:
        return [key for key in map(_uuid, ids) if key is not None]

    async def requeue_many(self, ids: Sequence[str]) -> int:
        rows = await self._fetch(Q["requeue_many"], {"ids": self._keys(ids), "now": self._now()})
        return int(rows[0]["n"])

    async def cancel_many(
        self, ids: Sequence[str], follow_ups: Mapping[str, Sequence[Envelope]]
    ) -> int:
        params = {"ids": self._keys(ids), "now": self._now()}

        # Retried: a resend after a lost commit finds the jobs cancelled already, so it
        # stores no follow-up twice (and counts only what it changed itself).
        async def run(conn: psycopg.AsyncConnection[Any]) -> int:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(Q["cancel_many_waiting"], params)
                ended = [job_id for (job_id,) in await cur.fetchall()]
                await cur.execute(Q["cancel_many_running"], params)
                flagged = cur.rowcount
                # Each statement reads the jobs afresh: one whose attempt settled `retrying`
                # after the first looked fits neither; a second look at the waiting finds it.
                await cur.execute(Q["cancel_many_waiting"], params)
                ended += [job_id for (job_id,) in await cur.fetchall()]
                await self.enqueue_in(conn, [e for i in ended for e in follow_ups.get(i, ())])
                return len(ended) + flagged

        return await self._retrying(run)

    async def delete_many(self, ids: Sequence[str]) -> int:
        rows = await self._fetch(Q["delete_many"], {"ids": self._keys(ids)})
        return int(rows[0]["count"])

    async def silence_many(self, ids: Sequence[str]) -> int:
        rows = await self._fetch(Q["silence_many"], {"ids": self._keys(ids)})
        return int(rows[0]["count"])

    async def forget_owner(self, owner: str) -> int:
        rows = await self._fetch(Q["forget_owner"], {"owner": owner})
        return int(rows[0]["count"])

    async def history(self, *, since: float) -> list[tuple[float, str, str, int]]:
        rows = await self._fetch(Q["history"], {"since": since})
        return [(float(r["minute"]), r["queue"], r["state"], int(r["n"])) for r in rows]

    async def progress(self, lease: Lease, fraction: float | None, message: str | None) -> bool:
        rows = await self._fetch(
            Q["progress"],
            {"fraction": fraction, "message": message, "id": lease.job_id, "token": lease.token},
        )
        return bool(rows[0]["count"])

    async def _transition(
        self,
        first: str,
        job_id: str,
        *,
        fallback: str | None,
        refused: str,
        reached: str,
        applies: frozenset[str],
        follow_ups: Sequence[Envelope] = (),
    ) -> JobRow:
        """Try `first`, then `fallback`, which apply to a job in one of the states `applies`
        names; `follow_ups` go in with `first` only.

        Tried again on a lost connection. A resend refused because the job is `reached`
        already answers the job as done: the lost attempt did it (or the job was there
        before it, which a lost reply cannot tell apart; either way it is where the caller
        wants it), and its follow-ups were stored with it, not again.
        """
        key = _uuid(job_id)
        if key is None:
            raise JobNotFound(job_id)

        async def attempt(resent: bool) -> tuple[bool, dict[str, Any] | None]:
            async with self._conn() as conn, conn.transaction():
                async with conn.cursor(row_factory=dict_row) as cur:
                    # Each statement reads the job afresh: a job that moved between them (a
                    # running job's attempt settled `retrying` after the first looked) fits
                    # neither; it is tried again while its state is one they apply to.
                    for _ in range(_TRANSITION_TRIES):
                        for sql in filter(None, (Q[first], fallback and Q[fallback])):
                            await cur.execute(sql, {"id": key, "now": self._now()})
                            rows = await cur.fetchall()
                            if rows:
                                if sql == Q[first]:
                                    await self.enqueue_in(conn, follow_ups)
                                return True, rows[0]
                        await cur.execute(Q["get"], {"id": key})
                        current = await cur.fetchone()
                        if current is None or current["state"] not in applies:
                            break
            return resent and current is not None and current["state"] == reached, current

        done, current = await self.retrier.run(attempt)
        if current is None:
            raise JobNotFound(job_id)
        if not done:
            raise InvalidTransition(refused.format(id=job_id, state=current["state"]))
        return _row(current)

    async def cancel(self, job_id: str, follow_ups: Sequence[Envelope] = ()) -> JobRow:
        return await self._transition(
            "cancel_waiting",
            job_id,
            fallback="cancel_running",
            refused="job {id} is already {state}",
            reached="cancelled",
            applies=frozenset({"queued", "retrying", "running"}),
            follow_ups=follow_ups,
        )

    async def requeue(self, job_id: str) -> JobRow:
        return await self._transition(
            "requeue",
            job_id,
            fallback=None,
            refused="job {id} is {state}; only dead, failed or cancelled jobs can be re-queued",
            reached="queued",
            applies=frozenset({"dead", "failed", "cancelled"}),
        )

    async def changes_since(
        self,
        seq: int,
        *,
        job_id: str | None = None,
        owner: str | None = None,
        limit: int = 500,
    ) -> list[Change]:
        sql = "SELECT seq, job_id, owner, record FROM offload_events WHERE seq > %(seq)s"
        params: dict[str, Any] = {"seq": seq, "limit": limit}
        if job_id is not None:
            key = _uuid(job_id)
            if key is None:
                return []
            sql += " AND job_id = %(job_id)s"
            params["job_id"] = key
        if owner is not None:
            if "\x00" in owner:  # (no owner has one: PostgreSQL cannot store it)
                return []
            sql += " AND owner = %(owner)s"
            params["owner"] = owner
        if job_id is None and owner is None:  # the feed's reader: it will wait for the feed
            await self._follow_feed()
            self._mark(("feed",))
        rows = await self._fetch(sql + " ORDER BY seq LIMIT %(limit)s", params)
        changes = [_change(r) for r in rows]
        if job_id is None and owner is None:
            changes = self._contiguous(seq, changes)
        return changes

    def _contiguous(self, seq: int, changes: list[Change]) -> list[Change]:
        """`changes` (after `seq`, oldest first) up to a gap in positions (`_before_gap`)."""
        return changes[: self._before_gap(seq, [change.seq for change in changes])]

    def _before_gap(self, seq: int, positions: Sequence[int]) -> int:
        """How many of `positions` (after `seq`, ascending) come before a gap.

        Positions come from a sequence, taken at insert time: a transaction that took a
        lower position may commit after one that took a higher. A reader that skipped the
        gap would never see that change, so the feed stops before a gap until it fills, or
        until `gap_wait_s` has passed (then the position was rolled back and never comes).
        Each missing position is waited for from when a read first met it: a gap that
        opens while another is being waited out gets its own full wait (one shared timer
        let a reader skip a fresh gap at once, and lose a change that then committed). A
        read notes every gap it meets, those past the first too, so that the gaps of one
        read are waited out together (the holes of deleted jobs cost a reader one wait a
        read, where it met them one at a time, a wait each).
        """
        expected = seq + 1
        high = positions[-1] if positions else seq  # (the read has seen every position to it)
        for n, position in enumerate(positions):
            if position != expected:
                now = time.monotonic()
                if now - self._gap_met(expected, position - 1, now, high) < self.gap_wait_s:
                    self._note_gaps(positions[n:], now, high)
                    return n
            if self._gaps:  # the positions passed are filled, or rolled back
                for missing in [p for p in self._gaps if expected <= p <= position]:
                    del self._gaps[missing]
            expected = position + 1
        return len(positions)

    def _gap_met(self, first: int, last: int, now: float, high: int) -> float:
        """When the wait of the gap of the missing positions `first` to `last` began: when a
        read first met it (now, if none did), by a read that had seen every position up to
        `high`. A gap that has grown since past what that read had seen holds positions no
        read saw missing (the holes of jobs deleted since joined it, and a change may take
        a position there still): its wait starts again, from a read that sees them. One
        that grew within it waits on (its new positions were seen, committed then, so no
        change comes there), and so does one that shrank (part of it filled)."""
        met = self._gaps.get(first)
        if met is None or last > met[2]:
            if met is None and len(self._gaps) > _GAPS_KEPT:  # readers that left: the oldest
                del self._gaps[min(self._gaps, key=lambda k: self._gaps[k][1])]
            met = self._gaps[first] = (last, now, high)
        return met[1]

    def _note_gaps(self, positions: Sequence[int], now: float, high: int) -> None:
        """Start the wait of each gap between `positions` (ascending) not yet met."""
        for before, after in itertools.pairwise(positions):
            if after != before + 1 and len(self._gaps) <= _GAPS_KEPT:
                self._gap_met(before + 1, after - 1, now, high)

    async def feed_head(self, seq: int) -> int:
        while True:
            rows = await self._fetch(_FEED_POSITIONS, {"seq": seq, "limit": _HEAD_CHUNK})
            positions = [int(row["seq"]) for row in rows]
            n = self._before_gap(seq, positions)
            if n:
                seq = positions[n - 1]
            if n < len(positions) or len(positions) < _HEAD_CHUNK:
                return seq

    async def last_seq(self) -> int:
        rows = await self._fetch("SELECT coalesce(max(seq), 0) AS seq FROM offload_events", {})
        return int(rows[0]["seq"])

    async def wait_changes(self, timeout: float) -> None:
        await self._follow_feed()
        if self._gaps:  # re-read soon: a gap may have filled
            timeout = min(timeout, 0.05)
        await self._wait_version(("feed",), timeout)

    async def remember(self, job_id: str, key: str, value: Any, *, first: bool = False) -> None:
        sql = Q["remember_first" if first else "remember"]
        job = _uuid(job_id)
        if job is None:
            return  # (no job has such an id: nothing is kept, as on the other backends)
        await self._fetch(sql, {"id": job_id, "job": job, "key": key, "value": _json(value)})

    async def recall(self, job_id: str, key: str) -> tuple[bool, Any]:
        rows = await self._fetch(Q["recall"], {"id": job_id, "key": key})
        return (True, rows[0]["value"]) if rows else (False, None)

    async def prune(self, older_than_s: float) -> int:
        """Delete finished jobs (not dead ones) that ended more than `older_than_s` ago, with
        their feed entries and step results, `PRUNE_CHUNK_ROWS` per transaction."""
        return await self._in_chunks(
            _PRUNE, lambda: {"age": older_than_s, "now": self._now(), "chunk": PRUNE_CHUNK_ROWS}
        )

    # -- periodic schedules -----------------------------------------------------------------

    async def fire_schedule(
        self, name: str, *, spec: Mapping[str, Any], fires: Sequence[tuple[float, Envelope]]
    ) -> list[EnqueueResult | None]:
        async with self._conn() as conn, conn.transaction():
            await conn.execute(Q["lock_schedule"], {"name": name})
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(Q["schedule_last"], {"name": name})
                row = await cur.fetchone()
            fresh = [(t, e) for t, e in fires if row is None or t > row["last_tick"]]
            results = await self.enqueue_in(conn, [e for _, e in fresh])
            stored = dict(zip((e.id for _, e in fresh), results, strict=True))
            if fresh:
                tick, newest = fresh[-1]
                params = {
                    "name": name,
                    "tick": tick,
                    "job": stored[newest.id].id,
                    "now": self._now(),
                    "spec": _json(dict(spec)),
                }
                await conn.execute(Q["record_fire"], params)
        return [stored.get(e.id) for _, e in fires]

    async def schedule_states(self) -> list[ScheduleState]:
        rows = await self._fetch(Q["schedule_states"], {})
        return [
            ScheduleState(
                name=r["name"],
                last_tick=r["last_tick"],
                last_job_id=r["last_job_id"],
                fired_at=r["fired_at"],
                spec=r["spec"],
            )
            for r in rows
        ]


__all__ = ["PostgresBackend"]


async def _claimed(conn: psycopg.AsyncConnection[Any], token: str) -> list[tuple[Any, ...]]:
    """The jobs leased to `token`: what a resent claim answers if its first attempt ran."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(Q["claimed"], {"token": token})
        return await cur.fetchall()


async def _first_jobs(
    cur: psycopg.AsyncCursor[Any], repeats: Sequence[Envelope]
) -> dict[tuple[str, str], str]:
    """(owner, idempotency key) -> id of the stored job, for the envelopes not stored."""
    first: dict[tuple[str, str], str] = {}
    for owner in {e.owner for e in repeats}:
        keys = [e.idempotency_key for e in repeats if e.owner == owner and e.idempotency_key]
        await cur.execute(Q["find_idem"], {"owner": owner, "keys": keys})
        first.update({(owner, k): str(i) for k, i in await cur.fetchall()})
    return first


#: How many times a batch with unique jobs is offered again for the jobs whose key's
#: holder left its holding states between the insert and the read of it (a claim).
UNIQUE_ROUNDS = 5


async def _enqueue_unique(
    conn: psycopg.AsyncConnection[Any],
    envelopes: Sequence[Envelope],
    batch: Callable[[Sequence[Envelope]], str],
    *,
    resent: bool = False,
) -> list[EnqueueResult]:
    """Enqueue a batch holding unique jobs, inside the caller's transaction. In a `resent`
    call (see `enqueue_in`), a job found stored under its own id is the lost first
    attempt's, reported as created.

    The insert skips every conflicting row (`enqueue_unique`): a row whose idempotency key
    is stored is an idempotent repeat; else one whose unique key has a holder (committed,
    or earlier in this batch: the insert waited for any other transaction inserting it) is
    a unique repeat; else its holder left the holding states meanwhile and it is offered
    again; a row with neither key conflicted on its id, which aborts the batch.

    Raises:
        BackendError: an id is already stored (or repeated in the batch), or a key's
            holder kept changing.
    """
    if len({e.id for e in envelopes}) < len(envelopes):
        raise BackendError("a job id is repeated in the batch; nothing was stored")
    results: dict[str, EnqueueResult] = {}
    pending = list(envelopes)
    async with conn.cursor() as cur:
        for _ in range(UNIQUE_ROUNDS):
            await cur.execute(Q["enqueue_unique"], {"batch": batch(pending)})
            for (job_id,) in await cur.fetchall():
                results[str(job_id)] = EnqueueResult(id=str(job_id), created=True)
            pending = [e for e in pending if e.id not in results]
            pending = await _repeats(cur, pending, results, resent=resent)
            if not pending:
                return [results[e.id] for e in envelopes]
    raise BackendError("unique jobs: the holder of a key kept changing; nothing was stored")


async def _repeats(
    cur: psycopg.AsyncCursor[Any],
    missing: Sequence[Envelope],
    results: dict[str, EnqueueResult],
    *,
    resent: bool = False,
) -> list[Envelope]:
    """Record in `results` why each of `missing` was not stored; returns those to offer
    again (their key's holder is gone).

    Raises:
        BackendError: one conflicted on its id.
    """
    if not missing:
        return []
    first = await _first_jobs(cur, missing)
    stored: set[str] = set()
    if resent:  # the lost first attempt's jobs, whatever state they have reached since
        await cur.execute(Q["find_ids"], {"ids": [e.id for e in missing]})
        stored = {str(i) for (i,) in await cur.fetchall()}
    keys = [e.unique_key for e in missing if e.unique_key is not None]
    holders: dict[str, str] = {}
    if keys:
        await cur.execute(Q["find_unique"], {"keys": keys})
        holders = {k: str(i) for k, i in await cur.fetchall()}
    again: list[Envelope] = []
    for e in missing:
        idem = first.get((e.owner, e.idempotency_key or ""))
        if e.id in stored:
            results[e.id] = EnqueueResult(id=e.id, created=True)
        elif idem is not None:
            results[e.id] = EnqueueResult(id=idem, created=False)
        elif e.unique_key in holders:
            holder = holders[e.unique_key or ""]
            results[e.id] = EnqueueResult(id=holder, created=False, unique_repeat=True)
        elif e.unique_key is not None:
            again.append(e)
        else:
            raise BackendError(f"job id {e.id} is already stored; nothing was stored")
    return again


#: The SQLSTATE of a table that does not exist.
UNDEFINED_TABLE = "42P01"


#: What the settle statement answers: each applied outcome's job, the state it left the
#: job in, and whether it wrote it now (else a resend found its first attempt applied).
_Applied = dict[str, tuple[str, bool]]


def _ended_cancelled(outcome: Outcome, applied: _Applied) -> bool:
    """Whether a settle ended a job cancelled that its outcome would have run again (a
    cancel asked for while it ran)."""
    found = applied.get(outcome.lease.job_id)
    return found is not None and not outcome.state.final and found[0] == JobState.CANCELLED


def _notes(outcome: Outcome, applied: _Applied) -> tuple[Envelope, ...]:
    """The notifications to enqueue with an outcome as the settle applied it: none if it
    did not apply, those of a cancelled end if it ended so instead. A resend's outcome
    found applied before stores its follow-ups again (each collapses into the stored one),
    and a cancelled end's not at all: stored then, or the job cancelled by a user since,
    whose cancel sent its own."""
    found = applied.get(outcome.lease.job_id)
    if found is None:
        return ()
    if _ended_cancelled(outcome, applied):
        return outcome.on_cancel if found[1] else ()
    return outcome.follow_ups


def _sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a driver's error: psycopg's (`sqlstate`) or psycopg2's (`pgcode`), as
    a framework's connection raises it or wraps it (Django's `ProgrammingError`)."""
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
