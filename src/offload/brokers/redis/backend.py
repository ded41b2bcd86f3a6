"""Redis backend: queue, status records and change feed in one Redis, moved by Lua scripts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ...clock import Clock
from ...contract import (
    EnqueueResult,
    Envelope,
    Extension,
    JobFilter,
    JobRow,
    KindLimits,
    Lapsed,
    Lease,
    Outcome,
    ScheduleState,
    Settled,
    WorkerInfo,
)
from ...errors import (
    BackendError,
    ConfigurationError,
    InvalidTransition,
    JobNotFound,
    StorageFull,
)
from .._retry import DEFAULT_RETRY_DEADLINE_S, PING_DEADLINE_S, Retrier
from .._rows import envelope_of as _envelope
from ..base import FORGET_WORKER_AFTER_S, Capability, Change, mark_paused
from . import search as _search
from .rows import (
    decode,
    decode_flat,
    enqueue_result,
    enqueue_results,
    envelope_args,
    lease_of,
    num,
    opt,
    pairs,
)
from .rows import dumps as _json
from .wake import Announcements, FeedMark, WorkMark

T = TypeVar("T")
log = logging.getLogger("offload.brokers")
#: The durability warnings this process gave: (server, setting, value).
DURABILITY_WARNED: set[tuple[str, str, str]] = set()

#: Key prefix of one application; each key starts with it wrapped in a hash tag.
DEFAULT_PREFIX = "offload:"
#: Connections one backend instance may hold (the pub/sub listener takes one of them).
DEFAULT_POOL_SIZE = 20
#: Wake-up tokens kept per queue (WAKE_TOKENS_MAX of the scripts' library).
WAKE_TOKENS_MAX = 16
#: Seconds a halted waiter's keys are kept (its claim drops the halt key as it runs).
_HALT_KEEP_S = 60
#: Seconds `open` waits for the server's first answer (OFFLOAD_CONNECT_TIMEOUT), and a call
#: for a TCP connection or a free pooled one.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: Seconds one call to Redis may take before it fails with BackendError.
DEFAULT_COMMAND_TIMEOUT_S = 10.0
#: Due scheduled jobs one claim promotes to ready at most (the rest on the next claim).
DEFAULT_PROMOTE_MAX = 1000
#: Ready entries a gated claim reads past per queue at most (jobs of kinds held back by
#: their limits): a limited kind that shares its queue costs a scan of its backlog.
DEFAULT_GATED_SCAN_MAX = 5000
#: Entries one sweeping script call (rescue, purge, prune, filtered reads) handles at most,
#: so that no single script blocks the server for long.
_CHUNK = 500

_SCRIPTS = (
    "enqueue", "claim", "extend", "settle", "expired", "progress", "cancel", "requeue",
    "purge", "prune", "stats", "list", "changes", "workers", "live", "registry",
    "search", "requeue_many", "cancel_many", "delete_many", "reindex", "periodic",
    "claim_gated", "limits", "declare_limits", "resume", "remember", "forget_owner",
    "silence_many",
)  # fmt: skip
#: The version of the key layout `migrate` brings a Redis up to (kept under `schema`):
#: 1 adds the jobs page's id indexes by state, kind and queue.
SCHEMA_VERSION = 1


def _check_driver_options(url: str) -> None:
    """Judge the URL's options for redis-py as it will when it first connects (making a
    connection object sends nothing), so that a misspelt one stops the process at once.

    Raises:
        ConfigurationError: an option redis-py does not take, or a value it refuses.
    """
    try:
        pool = aioredis.ConnectionPool.from_url(url)
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as exc:  # ... got an unexpected keyword argument 'x'
        unknown = str(exc).rpartition(" ")[2]
        raise ConfigurationError(
            f"unknown Redis URL option {unknown}: neither offload's (prefix, pool_size) nor "
            "redis-py's"
        ) from None
    except (ValueError, RedisError) as exc:  # RedisError: ssl_cert_reqs=bogus, protocol=7
        raise ConfigurationError(f"bad Redis URL option: {exc}") from None


@functools.cache
def _lua(name: str) -> str:
    folder = resources.files(__package__).joinpath("lua")
    return folder.joinpath("_lib.lua").read_text("utf-8") + folder.joinpath(
        f"{name}.lua"
    ).read_text("utf-8")


def _lost_connection(exc: BaseException) -> bool:
    """A lost, refused or silent connection, a server still loading its data after a
    restart (BusyLoadingError is a ConnectionError), or one busy with another client's
    long script (`BUSY`: it ran nothing of this call): worth another attempt. Not a refused
    password or command, nor a script's own error (ResponseError)."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return False
    if isinstance(exc, ResponseError):
        return str(exc).startswith("BUSY ")
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError))


def _reason(exc: BaseException) -> str:
    """A driver error's message on one line (its type where it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _leases(answer: Sequence[Any], token: str, worker_id: str) -> list[Lease]:
    """A claim script's answer as leases, in claim order."""
    leases = [lease_of(values, token, worker_id) for values in answer]
    leases.sort(key=lambda le: (le.envelope.priority, le.envelope.run_at, le.job_id))
    return leases


def _lapsed(row: dict[str, Any]) -> Lapsed:
    lease = Lease(
        envelope=_envelope(row),
        token=row["lease_token"],
        expires_at=row["lease_expires"],
        worker=row["worker"],
    )
    return Lapsed(lease=lease, cancel_requested=bool(row["cancel_requested"]))


class RedisBackend:
    """Broker and JobStore on one Redis (6.2 or newer), safe for any number of processes.

    Every transition is one Lua script (EVALSHA), so a claim, a settle or an enqueue of
    many jobs is one round trip and atomic; the script also appends the job's row to the
    change feed (a stream with ids `<seq>-0`), so feed order is transition order. Key
    layout and scripts: `brokers/redis/lua/_lib.lua`.

    All keys start with the prefix wrapped in braces (`{offload:}job:…`): the braces are a
    Redis Cluster hash tag, so one application's keys share one slot and every script's
    keys are co-located. A prefix that already holds a `{…}` tag is used as it is. Scripts
    derive key names from the prefix and declare one of them, which routes the call.

    Leases, their rescue, settles and the worker registry keep the server's clock (`TIME`
    inside the script), one for every host, as PostgreSQL keeps `now()`: a host whose clock
    is off can neither rescue healthy leases nor stamp its own as lapsed. Other times
    (enqueue, stats, operators' actions) come from this process's clock. A clock that
    stands in for the server's (a test's) replaces `TIME` everywhere.

    Durability is the server's: run Redis with `appendonly yes` and `maxmemory-policy
    noeviction` (`open` warns about any other policy), or a restart or eviction loses jobs.

    Wake-ups: scripts PUBLISH on `work` (queue name) and `changes`; one pub/sub connection
    per instance counts the announcements, and `wait`/`wait_changes` compare the counts
    with those seen at the caller's last claim or feed read, so no wake-up is lost between
    a read and the wait that follows it.

    Args:
        url: the driver URL (`redis://` or `rediss://`), without offload's own options.
        prefix: key prefix that isolates one application (or one test).
        pool_size: most connections this instance holds at once.
        clock: time source for run_at and timestamps; for leases too if it stands in for
            the server's (`Clock.stands_in_for_server`).
    """

    #: Its connections belong to the event loop that opened it (`App` refuses another).
    loop_bound = True

    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.DEDUP,
            Capability.PUSH,
            Capability.BLOCKING_ENQUEUE,
            Capability.FEED_RESTARTS,
        }
    )

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        pool_size: int = DEFAULT_POOL_SIZE,
        clock: Clock | None = None,
        promote_max: int = DEFAULT_PROMOTE_MAX,
        command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
    ) -> None:
        if not prefix:
            raise ConfigurationError("the Redis key prefix must not be empty")
        if pool_size < 2:
            raise ConfigurationError("pool_size must be at least 2 (pub/sub takes one)")
        self.url = url
        self.prefix = prefix
        self.keyspace = prefix if "{" in prefix else "{" + prefix + "}"
        self.pool_size = pool_size
        self.clock = clock or Clock()
        #: Leases and the worker registry keep the server's clock (one for every host),
        #: unless the clock injected stands in for it (tests move it instead of sleeping).
        self._server_clock = clock is None or not clock.stands_in_for_server
        self.promote_max = promote_max
        self.command_timeout_s = command_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retrier = Retrier(
            _lost_connection, deadline_s=retry_deadline_s, log=log, engine="Redis"
        )
        self._client: aioredis.Redis | None = None
        #: A write was refused over the server's maxmemory, and none succeeded since: the
        #: readiness check (`ping`) asks whether one fits again.
        self._full = False
        self._scripts: dict[str, Any] = {}
        #: The lane (see `_on_lane`): a connection of the pool kept for script calls, and
        #: whether no call is on it now. Only with a connection left for the others beside
        #: it and pub/sub's.
        self._lane: Any = None
        self._lane_free = pool_size >= 3
        #: The connection `wait_and_claim` blocks on (taken from the pool at its first
        #: wait, and kept), and the token of the wait blocked on it now, if any.
        self._waiter: Any = None
        self._waiting: str | None = None
        #: Whether the last blocked wait lost its connection (the next one logs its return).
        self._wait_lost = False
        #: The token of a claim that got no answer (`_claiming`), for the next claim.
        self._unanswered: str | None = None
        #: The enqueue script on a blocking client, for threads with no event loop
        #: (`enqueue_sync`): made on first use, under `_blocking_lock`.
        self._blocking: tuple[redis.Redis, Any] | None = None
        self._blocking_lock = threading.Lock()
        #: The blocking client's lane and the process that took it (see `_on_sync_lane`),
        #: used by one thread at a time.
        self._sync_lane: tuple[Any, int] = (None, 0)
        self._sync_lane_lock = threading.Lock()
        self._news: Announcements | None = None
        # What this instance's claimer and feed reader saw last (see Announcements).
        self._seen_work: WorkMark | None = None
        self._seen_feed: FeedMark | None = None
        #: What held jobs back at this instance's last gated claim: whether a limit did,
        #: and when a start is next due by a rate (see `wait`).
        self._held_back: tuple[bool, float | None] = (False, None)
        #: This instance's gated claims so far: whose turn it is among the plain queues
        #: and the fair ones (`limits.in_turn`).
        self._turns = 0
        #: The limited kinds (and their queues) this instance claimed: their settles wake
        #: the workers waiting for a free slot.
        self._limited: dict[str, str] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Clock | None = None,
        connect_timeout_s: float | None = None,
        retry_deadline_s: float | None = None,
    ) -> RedisBackend:
        """`redis://host:port/db?prefix=app:&pool_size=20`; `rediss://` for TLS.

        Other query options (`socket_timeout`, `client_name`, …) go to redis-py;
        `connect_timeout_s` bounds `open` (default 5 s); `retry_deadline_s` how long a call
        tries again after a lost connection (default 10 s).

        Raises:
            ConfigurationError: not a redis URL, a database that is no number, or an option
                that is ours or redis-py's with a bad value, or neither's.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigurationError(f"not a Redis URL: {parts.scheme}://")
        ours = {"prefix": DEFAULT_PREFIX, "pool_size": str(DEFAULT_POOL_SIZE)}
        rest: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in ours:
                ours[key] = value
            else:
                rest.append((key, value))
        try:
            pool_size = int(ours["pool_size"])
        except ValueError:
            raise ConfigurationError(
                f"pool_size must be an integer: {ours['pool_size']!r}"
            ) from None
        database = parts.path.strip("/")
        if database and not (database.isascii() and database.isdigit()):
            # redis-py would ignore it and use database 0, which may hold another app's data.
            raise ConfigurationError(f"the Redis URL's database is no number: {database!r}")
        driver_url = urlunsplit(parts._replace(query=urlencode(rest)))
        _check_driver_options(driver_url)
        timeout = DEFAULT_CONNECT_TIMEOUT_S if connect_timeout_s is None else connect_timeout_s
        return cls(
            driver_url,
            prefix=ours["prefix"],
            pool_size=pool_size,
            clock=clock,
            connect_timeout_s=timeout,
            retry_deadline_s=DEFAULT_RETRY_DEADLINE_S
            if retry_deadline_s is None
            else retry_deadline_s,
        )

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _guard(self, what: str = "Redis", *, connecting: bool = False) -> AsyncIterator[None]:
        """Driver errors become BackendError (cause kept, message on one line), and every
        call is bounded here (by `connect_timeout_s` while `connecting`, else by
        `command_timeout_s`) rather than by the driver's socket timeout (see `open`)."""
        limit = self.connect_timeout_s if connecting else self.command_timeout_s
        setting = " (OFFLOAD_CONNECT_TIMEOUT)" if connecting else ""
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError as exc:
            raise BackendError(f"{what}: no answer within {limit:g}s{setting}") from exc
        except (RedisError, OSError) as exc:
            raise self._failed(what, exc) from exc

    def _failed(self, what: str, exc: RedisError | OSError) -> BackendError:
        """A driver error as the BackendError to raise: `StorageFull` for a write refused
        over the server's maxmemory (as a whole: nothing of the call was written), which
        the readiness check then asks after (`ping`)."""
        if isinstance(exc, OutOfMemoryError):
            self._full = True
            return StorageFull(f"{what}: the server is over its maxmemory ({_reason(exc)})")
        return BackendError(f"{what}: {_reason(exc)}")

    def _key(self, name: str) -> str:
        return self.keyspace + name

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise BackendError("the Redis backend is not open")
        return self._client

    @property
    def _announcements(self) -> Announcements:
        if self._news is None:
            raise BackendError("the Redis backend is not open")
        return self._news

    async def _retried(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, bounded and its errors made BackendErrors (`_guard`), tried again while
        the connection is lost, until the retry deadline: for reads, and writes whose
        repetition changes nothing (see the scripts' callers for the others)."""

        async def attempt(_resent: bool) -> T:
            async with self._guard():
                return await call()

        return await self.retrier.run(attempt)

    async def _script(self, script: str, *args: str | bytes | int) -> Any:
        """One attempt of one script call: on the lane when it is free, else on a connection
        of the pool."""
        client = self._redis
        async with self._guard():
            if self._lane_free:
                self._lane_free = False
                try:
                    return await self._on_lane(client, script, args)
                finally:
                    self._lane_free = True
            return await self._scripts[script](
                keys=[self._key("seq")], args=[self.keyspace, *args], client=client
            )

    async def _on_lane(self, client: aioredis.Redis, script: str, args: tuple[Any, ...]) -> Any:
        """A script call on the lane: a connection taken from the pool once and kept, the
        command written and its reply read on it directly. redis-py's client and pool
        layers (lending, releasing, their metrics, its retry wrapper) took about a quarter
        of a lone enqueue's CPU, and the calls that go one after another (a web process's
        enqueues, a worker's claims) take this lane. The connection is checked as the pool
        checks one it lends (one the server closed is connected anew), and redis-py
        disconnects it on any failure or cancellation, so the next call connects again."""
        pool = client.connection_pool
        lane = self._lane
        if lane is None:
            lane = self._lane = await pool.get_connection()  # type: ignore[no-untyped-call]
        else:
            await pool.ensure_connection(lane)
        code = self._scripts[script]
        key = self._key("seq")
        await lane.send_command("EVALSHA", code.sha, 1, key, self.keyspace, *args)
        try:
            return await lane.read_response()
        except NoScriptError:
            # The server lost its scripts (a restart, SCRIPT FLUSH); nothing ran. The
            # client's way loads the script and calls it.
            return await code(keys=[key], args=[self.keyspace, *args], client=client)

    async def _run(self, script: str, *args: str | int) -> Any:
        """A script call, sent again while the connection is lost (see `_retried`)."""
        return await self.retrier.run(lambda _resent: self._script(script, *args))

    async def _in_chunks(self, script: str, *args: str | int) -> int:
        """Run a deleting script (`_CHUNK` jobs per call) until a call deletes fewer; returns
        the jobs deleted in all."""
        total = 0
        while True:
            n: int = await self._run(script, *args, _CHUNK)
            total += n
            if n < _CHUNK:
                return total

    def _where(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"

    # -- lifecycle --------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Put jobs stored before the jobs page's indexes existed into them (`_CHUNK` jobs
        per script call); returns [1] when it did, [] when the keys were up to date (or
        there is no job yet). Jobs
        stored since are indexed as they are written, so the jobs page finds old jobs once
        this ran (`offload migrate`); nothing else depends on it.

        Raises:
            BackendError: the backend is not open, or Redis failed.
        """
        key = self._key("schema")
        async with self._guard():
            if int(await self._redis.get(key) or 0) >= SCHEMA_VERSION:
                return []
            if not await self._redis.zcard(self._key("ids")):  # no job to index: up to date
                await self._redis.set(key, SCHEMA_VERSION)
                return []
        cursor = ""
        while True:
            cursor = await self._run("reindex", opt(cursor or None), _CHUNK)
            if not cursor:
                break
        async with self._guard():
            await self._redis.set(key, SCHEMA_VERSION)
        return [SCHEMA_VERSION]

    async def open(self, *, check_schema: bool = True, create: bool = True) -> None:
        """Connect, check the server answers (within `connect_timeout_s`) and load the
        scripts; wake-ups are subscribed to with the first claim or feed read
        (`Announcements.follow`). Keys need no schema and reads create none, so
        `check_schema` and `create` change nothing here.

        Raises:
            BackendError: the server is unreachable (the cause is kept).
            ConfigurationError: the URL cannot be used.
        """
        if self._client is not None:
            return
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.pool_size,
                timeout=self.connect_timeout_s,
                socket_connect_timeout=self.connect_timeout_s,
                # No driver socket timeout (a `socket_timeout` URL option still sets one):
                # redis-py bounds each send with asyncio.wait_for, which on Python 3.11
                # swallows a cancellation that lands as the send completes, so a cancelled
                # caller would carry on. `_guard` bounds calls with asyncio.timeout instead.
                socket_timeout=None,
                decode_responses=True,
                # The driver sends nothing twice on its own: `Retrier` does, where each
                # operation knows what a resend after a lost reply must answer (see
                # `enqueue`, `claim` and `_settle`). A connection the server closed while
                # idle in the pool never fails a call: the pool sees its end of file as
                # it lends it and connects anew (no round trip); one closed under a call
                # fails it, and `Retrier` sends it again.
                retry=AsyncRetry(NoBackoff(), 0),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad Redis URL {self._where()}: {exc}") from exc
        client = aioredis.Redis(connection_pool=pool)
        news = Announcements(client, work=self._key("work"), changes=self._key("changes"))
        where = f"cannot use Redis at {self._where()}"

        async def prepare(_resent: bool) -> None:
            async with self._guard(where):
                await self._check_not_cluster(client)
                await self._check_durability(client)
                await self._check_channels(client)
                await news.start()
                for name in _SCRIPTS:
                    self._scripts[name] = client.register_script(_lua(name))
                    await client.script_load(_lua(name))

        try:
            # The handshake (a server that accepts and never answers included) is bounded by
            # the connect timeout, and fails at once: a server that is not there is said
            # so. Once it answered, a connection lost while the scripts load (killed, or
            # the server restarting) is retried as any call is, each step bounded by the
            # command timeout.
            async with self._guard(where, connecting=True):
                await client.ping()
            await self.retrier.run(prepare)
        except BaseException:
            await news.stop()
            await client.aclose()
            await pool.disconnect()
            raise
        self._client, self._news = client, news

    async def _check_channels(self, client: aioredis.Redis) -> None:
        """Refuse a user that may not publish on offload's two channels (Redis 7's default
        for a new ACL user, `acl-pubsub-default resetchannels`): a script announces work
        and changes after its writes, which Redis does not undo when the announcement is
        refused, so each enqueue would store its jobs and then fail (a retried request
        stored them again). What is published here wakes no one for long: no queue has the
        empty name, and a reader of the feed reads it once more."""
        channels = (self._key("work"), self._key("changes"))
        try:
            async with client.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.publish(channel, "")
                await pipe.execute()
        except NoPermissionError as exc:
            raise NoPermissionError(
                f"this user may not publish to offload's channels {', '.join(channels)} "
                f"({exc}): grant them, and the command, as `ACL SETUSER <user> +publish "
                f"&{self.keyspace}*` does"
            ) from exc

    async def _check_not_cluster(self, client: aioredis.Redis) -> None:
        """Refuse a node of a Redis Cluster: offload talks to one server (a primary, with
        replicas behind it or not), and follows no `MOVED` redirect, so it would work on the
        node that holds its keys' slot until a reshard or failover moved it."""
        cluster = await client.info("cluster")
        if str(cluster.get("cluster_enabled", "0")) == "1":
            raise ConfigurationError(
                f"Redis at {self._where()} is a node of a Redis Cluster, which offload does "
                "not use: point OFFLOAD_URL at a single Redis server (a primary)"
            )

    async def _check_durability(self, client: aioredis.Redis) -> None:
        """Warn, as it opens, of a server that may lose jobs: one that evicts keys, or one
        that keeps no append-only file (a restart loses what was written since its last
        snapshot, and everything when it takes none). Once a process for each server and
        setting: an app opened anew on each loop (a test client's) says it once."""
        memory = await client.info("memory")
        policy = memory.get("maxmemory_policy", "noeviction")
        limited = int(memory.get("maxmemory", 1) or 0) > 0  # (without a limit none is evicted)
        if policy != "noeviction" and limited and self._first_warning("maxmemory-policy", policy):
            log.warning(
                "Redis at %s evicts keys (maxmemory-policy %s): jobs can vanish; "
                "set maxmemory-policy noeviction",
                self._where(),
                policy,
                extra={"action": "redis_eviction_policy", "policy": policy},
            )
        persistence = await client.info("persistence")
        if str(persistence.get("aof_enabled", "1")) != "0":
            return
        try:  # a managed server may refuse CONFIG: then what INFO said is all there is
            snapshots = (await client.config_get("save")).get("save", "?")
        except aioredis.ResponseError:
            snapshots = "?"
        lost = "every job" if snapshots == "" else "the jobs written since its last snapshot"
        if not self._first_warning("appendonly", str(snapshots)):
            return
        log.warning(
            "Redis at %s keeps no append-only file (appendonly no): a restart loses %s; "
            "set appendonly yes",
            self._where(),
            lost,
            extra={"action": "redis_not_durable", "snapshots": snapshots},
        )

    def _first_warning(self, setting: str, value: str) -> bool:
        """Whether this process has not yet warned of `setting` at `value` on this server."""
        said = (self._where(), setting, value)
        if said in DURABILITY_WARNED:
            return False
        DURABILITY_WARNED.add(said)
        return True

    async def close(self) -> None:
        if self._client is None:
            return
        with self._blocking_lock:
            client, self._client = self._client, None
            blocking, self._blocking = self._blocking, None
        # The pools' disconnects below close the lanes with the lent connections (a call
        # still on one fails, as on any of them); the loop does not wait for a thread's call.
        self._lane, self._sync_lane, self._waiter = None, (None, 0), None
        if blocking is not None:
            with contextlib.suppress(RedisError, OSError):
                blocking[0].close()
                blocking[0].connection_pool.disconnect()
        if self._news is not None:
            await self._news.stop()
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()
            await client.connection_pool.disconnect()

    async def ping(self) -> None:
        """Check the server answers, retrying a lost connection for a second at most; after
        a write was refused over the server's maxmemory, that a small write fits again.

        Raises:
            StorageFull: the server still refuses writes over its maxmemory.
            BackendError: the server does not answer.
        """

        async def attempt(_resent: bool) -> None:
            async with self._guard():
                if self._full:
                    await self._redis.set(self._key("probe"), "1", px=1000)
                    self._full = False
                else:
                    await self._redis.ping()

        await self.retrier.run(attempt, deadline_s=min(PING_DEADLINE_S, self.retrier.deadline_s))

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when work was announced for `queues` since the last claim, when the next
        scheduled job of these queues is due, or after `timeout` seconds."""
        news = self._announcements
        if self._seen_work is None:
            # The claim before came while this instance did not follow the announcements
            # (a worker that waits on its tokens never does): follow them now, and mark
            # before the read below, which sees any job stored before the mark.
            await news.follow()
            self._seen_work = news.work_mark()
            if self._held_back[0]:  # the read cannot tell new jobs from held ones
                return
        timeout = await self._wait_timeout(queues, timeout)
        await news.wait_until(lambda: news.work_moved(self._seen_work, queues), timeout)

    def _work_mark(self) -> WorkMark | None:
        """What a claim saw of the announcements, for the `wait` after it; None while this
        instance does not follow them (its first `wait` does: `wait_and_claim` needs none,
        and a worker that waits on its tokens never receives an announcement)."""
        news = self._announcements
        return news.work_mark() if news.following else None

    async def _wait_timeout(self, queues: Sequence[str], timeout: float) -> float:
        """`timeout`, cut to when the next scheduled job of `queues` is due (for a gated
        claim's instance: to when a start is next due by a rate, see `claim_gated`)."""

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.smembers(self._key("paused"))
                for queue in queues:
                    pipe.zrange(self._key("waiting:" + queue), 0, 0, withscores=True)
                if self._server_clock:
                    pipe.time()
                return await pipe.execute()

        paused, *heads = await self._retried(read)
        # A scheduled job is made ready by the claim's clock, the server's: the time left
        # is read from it too (by this host's, a host ahead of the server claimed in a loop,
        # a thousand times a second, until the server's clock caught up).
        now = self.clock.now()
        if self._server_clock:
            seconds, micros = heads.pop()
            now = seconds + micros / 1e6
        # Not a paused queue's: its due jobs would wake the claim loop at once, again and again.
        due = [h[0][1] for q, h in zip(queues, heads, strict=True) if h and q not in paused]
        held, next_start_at = self._held_back
        if held:  # ready jobs wait for a limit: not for the next due job, which may be one
            due = [] if next_start_at is None else [next_start_at]
        if due:
            timeout = max(0.0, min(timeout, min(due) - now))
        return timeout

    # -- broker -----------------------------------------------------------------------------

    async def enqueue(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        """Store the envelopes in one script call, all or none.

        Sent again on a lost connection, marked as a resend: the script is atomic, so the
        lost attempt stored all of the batch or none of it, and a resend takes a stored id
        (or an idempotency key naming the envelope's own id) for that attempt's job,
        answered as created. The job is stored once and reported as the first attempt
        would have been.

        Raises:
            BackendError: an id is already stored (or repeated in the batch), in a first
                attempt: nothing is stored.
        """
        if not envelopes:
            return []
        now, packed = self._enqueue_args(envelopes)
        out = await self.retrier.run(
            lambda resent: self._script("enqueue", now, _flag(resent), packed)
        )
        return enqueue_results(out)

    def _enqueue_args(self, envelopes: Sequence[Envelope]) -> tuple[str, bytes]:
        """The enqueue script's time and packed envelopes, the same in every attempt (as
        bytes: the client sends them as they are, where text it would encode again, a
        copy of what may be megabytes)."""
        return num(self.clock.now()), orjson.dumps(envelope_args(envelopes))

    def enqueue_sync(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        """`enqueue` for a thread that is not the event loop's (`App.enqueue_sync`): the
        same script, resends and deadline, on a blocking client of its own (made on first
        use, shared by every such thread) in the calling thread, with no hop to the loop.

        Raises:
            BackendError: as `enqueue`; or the backend is not open.
        """
        if not envelopes:
            return []
        client, script = self._blocking_client()
        now, packed = self._enqueue_args(envelopes)

        def attempt(resent: bool) -> Any:
            args: list[str | bytes] = [self.keyspace, now, _flag(resent), packed]
            try:
                # The lane when no other thread is on it (as `_script`), else the pool.
                if self._sync_lane_lock.acquire(blocking=False):
                    try:
                        return self._on_sync_lane(client, script, args)
                    finally:
                        self._sync_lane_lock.release()
                return script(keys=[self._key("seq")], args=args, client=client)
            except (RedisError, OSError) as exc:
                raise self._failed("Redis", exc) from exc

        return enqueue_results(self.retrier.run_sync(attempt))

    def _on_sync_lane(self, client: redis.Redis, script: Any, args: list[str | bytes]) -> Any:
        """`_on_lane` for the blocking client (the caller holds `_sync_lane_lock`). A lane
        taken before a fork is left to the parent: the child takes its own."""
        pool = client.connection_pool
        lane, pid = self._sync_lane
        if lane is None or pid != os.getpid():
            lane = pool.get_connection()
            self._sync_lane = (lane, os.getpid())
        else:
            pool.ensure_connection(lane)
        key = self._key("seq")
        lane.send_command("EVALSHA", script.sha, 1, key, *args)
        try:
            return lane.read_response()
        except NoScriptError:  # as in `_on_lane`
            return script(keys=[key], args=args, client=client)

    def _blocking_client(self) -> tuple[redis.Redis, Any]:
        """The blocking client and its enqueue script (see `enqueue_sync`)."""
        made = self._blocking
        if made is not None:
            return made
        with self._blocking_lock:  # request threads may make their first call at once
            if self._client is None:
                raise BackendError("the Redis backend is not open")
            if self._blocking is None:
                pool = redis.BlockingConnectionPool.from_url(
                    self.url,
                    max_connections=self.pool_size,
                    timeout=self.connect_timeout_s,
                    socket_connect_timeout=self.connect_timeout_s,
                    # A blocking call is bounded by its socket (no asyncio here, see `open`).
                    socket_timeout=self.command_timeout_s,
                    decode_responses=True,
                    retry=Retry(NoBackoff(), 0),  # resends are `Retrier`'s (see `open`)
                )
                client = redis.Redis(connection_pool=pool)
                self._blocking = (client, client.register_script(_lua("enqueue")))
            return self._blocking

    async def _claiming(self, claim: Callable[[str], Awaitable[list[Lease]]]) -> list[Lease]:
        """`claim(token)` under a new token, or under the one of the last claim when that
        got no answer (it failed past the retry deadline), so that an attempt of it still
        waiting at a stalled server, run once the server goes on, leases nothing the worker
        never hears of: the claim script notes what a token leased, and of all the claims
        sent under one token the first to run that leases claims, the others answer its
        jobs. A claim that fails leaves its token to the next; so does one under a token
        passed on that leased nothing (the attempt given up on may run after it)."""
        carried = self._unanswered
        token, self._unanswered = carried or secrets.token_hex(12), None
        try:
            leases = await claim(token)
        except BaseException:
            self._unanswered = token
            raise
        if carried is not None and not leases:
            self._unanswered = token
        return leases

    async def claim(
        self, queues: Sequence[str], *, worker_id: str, lease_for: float, limit: int
    ) -> list[Lease]:
        """Lease up to `limit` ready jobs in one script call (see Broker.claim).

        Sent again on a lost connection with the same token: the script notes the ids each
        claim leased (under its token, for as long as the lease), and a claim whose token
        noted some answers those still leased to it instead of claiming more, so a claim
        whose reply was lost neither leaves its jobs to lapse with an attempt spent nor
        leases a second batch; one that finds no note claims anew. A claim that got no
        answer at all passes its token on (`_claiming`).
        """
        if limit <= 0 or not queues:
            return []
        self._seen_work = self._work_mark()

        async def claim(token: str) -> list[Lease]:
            args = (self._now_arg(), token, num(lease_for), worker_id, limit, self.promote_max)
            answer = await self.retrier.run(
                lambda _resent: self._script("claim", *args, opt(None), *dict.fromkeys(queues))
            )
            return _leases(answer, token, worker_id)

        return await self._claiming(claim)

    async def wait_and_claim(
        self, queues: Sequence[str], timeout: float, *, worker_id: str, lease_for: float, limit: int
    ) -> list[Lease]:
        """`wait`, then `claim`, in one round trip: block on the queues' wake-up tokens
        (BLPOP) with the claim sent behind it on the same connection, so that Redis runs
        the claim the moment a token comes (or the wait ends) and the jobs come back with
        the wake-up, not one round trip after it. A token wakes one blocked worker, not
        every one: an announcement of work pushes one per queue, and a claim that took
        `limit` jobs and left ready ones behind pushes one more. `halt_wait` ends the wait
        at once with a claim that takes nothing.

        The wait ends as `wait`'s does when a scheduled job of these queues falls due
        (at once, with a plain claim, if one is due now). On a lost connection the claim is
        sent again with its token, as `claim` does: the jobs a lost attempt leased are
        answered, or it claims anew.

        Raises:
            BackendError: Redis failed past the retry deadline.
        """
        if limit <= 0 or not queues:
            return []
        timeout = await self._wait_timeout(queues, timeout)
        if timeout <= 0:
            return await self.claim(queues, worker_id=worker_id, lease_for=lease_for, limit=limit)
        return await self._claiming(
            lambda token: self._wait_and_claim(queues, timeout, token, worker_id, lease_for, limit)
        )

    async def _wait_and_claim(
        self,
        queues: Sequence[str],
        timeout: float,
        token: str,
        worker_id: str,
        lease_for: float,
        limit: int,
    ) -> list[Lease]:
        names = list(dict.fromkeys(queues))
        args = (self._now_arg(), token, num(lease_for), worker_id, limit, self.promote_max)
        code = self._scripts["claim"]
        blpop = ("BLPOP", *[self._key("wake:" + q) for q in names], self._key("waiter:" + token))
        evalsha = ("EVALSHA", code.sha, 1, self._key("seq"), self.keyspace, *args)
        pool = self._redis.connection_pool
        self._waiting = token
        try:
            # Bounded by the wait and then a command's time (not by `_guard`'s alone).
            async with asyncio.timeout(timeout + self.command_timeout_s):
                conn = self._waiter
                if conn is None:
                    conn = self._waiter = await pool.get_connection()  # type: ignore[no-untyped-call]
                else:
                    await pool.ensure_connection(conn)
                await conn.send_packed_command(
                    conn.pack_commands([(*blpop, num(timeout)), (*evalsha, opt(token), *names)])
                )
                if self._wait_lost:
                    self._wait_lost = False
                    log.info("Redis wake-up wait back", extra={"action": "redis_wait_back"})
                await conn.read_response()
                answer = await conn.read_response()
        except NoScriptError:  # nothing ran (the server lost its scripts): the client's way
            return await self.claim(queues, worker_id=worker_id, lease_for=lease_for, limit=limit)
        except (RedisError, OSError, TimeoutError) as exc:
            if not isinstance(exc, TimeoutError) and not _lost_connection(exc):
                raise BackendError(f"Redis: {_reason(exc)}") from exc
            reason = "no answer" if isinstance(exc, TimeoutError) else _reason(exc)
            log.warning("Redis wake-up wait lost: %s", reason, extra={"action": "redis_wait_lost"})
            self._wait_lost = True
            # The claim may have run, its reply lost: sent again, it answers what it leased
            # (or claims anew). The connection was dropped with the error: the next wait
            # connects again.
            answer = await self.retrier.run(
                lambda _resent: self._script("claim", *args, opt(None), *names)
            )
        finally:
            self._waiting = None
        return _leases(answer, token, worker_id)

    async def halt_wait(self) -> None:
        """End this instance's `wait_and_claim` now, if one is blocked, its claim taking
        nothing (the worker is stopping). Its wait may end with jobs all the same, when a
        token came first."""
        token = self._waiting
        if token is None or self._client is None:
            return

        async def run() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key("halt:" + token), "1", ex=_HALT_KEEP_S)
                pipe.lpush(self._key("waiter:" + token), "1")
                pipe.expire(self._key("waiter:" + token), _HALT_KEEP_S)
                await pipe.execute()

        await self._retried(run)

    async def claim_gated(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        lease_for: float,
        limit: int,
        fair: Collection[str] = (),
    ) -> list[Lease]:
        """`claim` within the limits of the queues' kinds, fair queues round-robin over
        owners, in one script call. Once a fair claim has seen a queue's ready jobs they
        wait in per-owner lists: every worker of a fair queue should declare it fair (run
        one version of the code); a claim that reads the queue plain (no kind of it fair
        any more) moves them back, a chunk a claim (`gather_fair`).

        Sent again on a lost connection with the same token, as `claim` is: a resend
        answers the jobs the lost attempt leased, and leases no more; a claim that got no
        answer passes its token on (`_claiming`)."""
        if limit <= 0 or not queues:
            return []
        self._seen_work = self._work_mark()
        fairs = sorted(set(fair))
        tail: tuple[str | int, ...] = (len(fairs), *fairs, *dict.fromkeys(queues))

        turn, self._turns = self._turns, self._turns + 1

        async def claim(token: str) -> list[Lease]:
            head = (self._now_arg(), token, num(lease_for), worker_id, limit, self.promote_max)
            flats, held, next_start_at, kinds = await self.retrier.run(
                lambda _resent: self._script(
                    "claim_gated", *head, DEFAULT_GATED_SCAN_MAX, turn, *tail
                )
            )
            self._held_back = (bool(held), float(next_start_at) if next_start_at else None)
            self._limited.update(zip(kinds[::2], kinds[1::2], strict=True))
            return [lease_of(values, token, worker_id) for values in flats]  # in the order taken

        return await self._claiming(claim)

    async def declare_limits(self, limits: Sequence[KindLimits]) -> None:
        args: list[str] = []
        for lim in limits:
            spec = {
                "queue": lim.queue,
                "max_running": lim.max_running,
                "rate": lim.rate,
                "per_s": lim.per_s,
            }
            args += [lim.kind, orjson.dumps(spec).decode() if lim.limited else ""]
        if args:
            await self._run("declare_limits", *args)

    async def limits(self) -> list[KindLimits]:
        out = []
        for kind, spec, running, starts in await self._run("limits", self._now_arg()):
            lim = orjson.loads(spec)
            self._limited[kind] = lim["queue"]
            out.append(
                KindLimits(
                    kind=kind,
                    queue=lim["queue"],
                    max_running=lim["max_running"],
                    rate=lim["rate"],
                    per_s=None if lim["per_s"] is None else float(lim["per_s"]),
                    running=running,
                    recent_starts=starts,
                )
            )
        return out

    async def _announce_slots(self, outcomes: Sequence[Outcome], applied: Sequence[bool]) -> None:
        """Wake the workers waiting for a slot of the limited kinds whose jobs settled."""
        kinds = {o.lease.envelope.kind for o, ok in zip(outcomes, applied, strict=True) if ok}
        queues = sorted({self._limited[k] for k in kinds if k in self._limited})
        if queues:  # a wake-up sent twice (a resend) wakes for nothing, harmlessly
            await self.retrier.run(lambda _resent: self._publish_work(queues))

    async def _publish_work(self, queues: Sequence[str]) -> None:
        async with self._guard():
            for queue in queues:
                await self._redis.publish(self._key("work"), queue)

    async def extend(self, leases: Sequence[Lease], *, lease_for: float) -> list[Extension]:
        """Push the leases out in one script call; a stale lease reports held=False."""
        if not leases:
            return []
        args = [self._now_arg(), num(lease_for)]
        for lease in leases:
            args += [lease.job_id, lease.token]
        answers = await self._run("extend", *args)
        return [
            Extension(job_id=le.job_id, held=a > 0, cancel_requested=a == 2)
            for le, a in zip(leases, answers, strict=True)
        ]

    async def settle(self, outcomes: Sequence[Outcome]) -> Settled:
        applied = await self._settle(outcomes, lapsed=False)
        if self._limited:
            await self._announce_slots(outcomes, applied)
        return applied

    async def _settle(self, outcomes: Sequence[Outcome], *, lapsed: bool) -> Settled:
        """Apply the outcomes, with the follow-ups of those that apply, in one script call.

        Sent again on a lost connection, marked as a resend. A settle (or rescue) spends its
        lease token, marking it settled (rescued) on the job: in a resend, an outcome whose
        first attempt applied finds its own mark and answers 1, storing nothing twice, while
        a lease that a rescue or another claim took still answers 0. A call that is not a
        resend never takes the mark as its own (an outcome sent twice by its caller is
        stale the second time). One case still answers 0: a retrying or released job
        claimed again (a new token) between the lost reply and the resend; the worker then
        takes its result as stale.

        Returns:
            Per outcome, False where the lease was stale (its follow-ups are not stored),
            and the jobs that ended cancelled instead of running again.

        Raises:
            BackendError: a follow-up's id is already stored; nothing was applied.
        """
        if not outcomes:
            return Settled()
        fields: list[str] = []
        # An outcome's follow-ups; for one that runs the job again, those of a cancelled
        # end, which the script stores only if the job ends so.
        notes = [o.follow_ups if o.state.final else o.on_cancel for o in outcomes]
        for o, mine in zip(outcomes, notes, strict=True):
            fields += [
                o.lease.job_id, o.lease.token, o.state.value, opt(_json(o.result)),
                opt(_json(o.error)), opt(None if o.run_at is None else num(o.run_at)),
                "1" if o.refund else "0",
                opt(None if o.max_attempts is None else str(o.max_attempts)),
                str(len(mine)),
            ]  # fmt: skip
        fields += envelope_args(f for mine in notes for f in mine)
        # One argument for them all (as the enqueue's envelopes): the client packs one
        # string instead of nine or more per outcome.
        packed = orjson.dumps(fields).decode()
        now, n, rescue = self._now_arg(), str(len(outcomes)), _flag(lapsed)
        answer = await self.retrier.run(
            lambda resent: self._script("settle", now, n, rescue, _flag(resent), packed)
        )
        return Settled(
            (bool(a) for a in answer),
            (o.lease.job_id for o, a in zip(outcomes, answer, strict=True) if a == 2),
        )

    async def expired(self, *, limit: int) -> list[Lapsed]:
        """The lapsed leases, a few hundred index entries per script call."""
        out: list[Lapsed] = []
        while len(out) < limit:
            chunk = min(_CHUNK, limit - len(out))
            # Lapsed entries stay in the index (nothing changes): skip those already read.
            answer: list[Any] = await self._run("expired", self._now_arg(), len(out), chunk)
            scanned, rows = answer
            out += [_lapsed(decode_flat(flat)) for flat in rows]
            if scanned < chunk:
                break
        return out

    async def rescue(self, decisions: Sequence[Outcome]) -> Settled:
        applied = await self._settle(decisions, lapsed=True)
        if self._limited:
            await self._announce_slots(decisions, applied)
        return applied

    async def stats(self) -> dict[str, dict[str, Any]]:
        """Per queue: queued (ready now), scheduled, running, dead, oldest_age_s; read from
        per-queue indexes, never by scanning jobs."""
        now = self.clock.now()
        out: dict[str, dict[str, Any]] = {}
        paused = cast(
            set[str], await self._retried(lambda: self._redis.smembers(self._key("paused")))
        )
        for queue, ready, later, running, dead, oldest, newer in await self._run("stats", num(now)):
            out[queue] = {
                "queued": ready,
                "scheduled": later,
                "running": running,
                "dead": dead,
                "oldest_age_s": max(0.0, now - float(oldest)) if oldest else 0.0,
                "awaiting_newer_worker": newer,
            }
        return mark_paused(out, paused)

    async def purge(self, queue: str) -> int:
        """Delete the waiting jobs of `queue`, with their feed entries and effects, a scan
        step (a few hundred) per script call: every job that waited through it goes,
        wherever its run_at sorts it; a job enqueued meanwhile may go too (the SQL backends
        keep those)."""
        cursor, total = "0", 0
        while True:
            cursor, deleted = await self._run("purge", queue, cursor, _CHUNK)
            total += int(deleted)
            cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
            if cursor == "0":
                return total

    # -- workers ----------------------------------------------------------------------------

    def _now_arg(self) -> str:
        """The `now` of a lease or registry script: none (the script reads the server's
        `TIME`), or the injected clock's where it stands in for the server's."""
        return opt(None if self._server_clock else num(self.clock.now()))

    async def record_worker(self, worker: WorkerInfo) -> None:
        """Record the worker's entry and kinds in one script call."""
        entry = worker.entry()
        kinds, info = orjson.dumps(entry["kinds"]).decode(), orjson.dumps(entry).decode()
        forget = num(FORGET_WORKER_AFTER_S)
        await self._run("workers", self._now_arg(), worker.id, opt(kinds), opt(info), forget)

    async def forget_worker(self, worker_id: str) -> None:
        forget = num(FORGET_WORKER_AFTER_S)
        await self._run("workers", self._now_arg(), worker_id, opt(None), opt(None), forget)

    async def workers(self, *, lost_after_s: float) -> list[WorkerInfo]:
        """Every registry entry, read in one script call (O(workers))."""
        now, *flat = await self._run("registry", self._now_arg())
        lost_before = float(now) - lost_after_s
        return [
            WorkerInfo.of(
                orjson.loads(info), heartbeat_at=float(seen), lost=float(seen) < lost_before
            )
            for _id, seen, info in zip(flat[::3], flat[1::3], flat[2::3], strict=True)
        ]

    async def live_versions(self, *, within_s: float) -> dict[str, set[int]]:
        live: dict[str, set[int]] = {}
        for entry in await self._run("live", self._now_arg(), num(within_s)):
            for kind, versions in orjson.loads(entry).items():
                live.setdefault(kind, set()).update(versions)
        return live

    # -- paused queues ----------------------------------------------------------------------

    async def pause(self, queue: str) -> bool:
        """Pause `queue`; False when it was paused already (or by a resend's lost attempt)."""
        return bool(await self._retried(lambda: self._redis.sadd(self._key("paused"), queue)))

    async def resume(self, queue: str) -> bool:
        """Resume `queue` and announce work on it, in one script: its waiting workers wake
        as for an enqueue."""
        return bool(await self._run("resume", queue))

    # -- job store --------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRow | None:
        key = self._key("job:" + job_id)
        raw = cast(dict[str, str], await self._retried(lambda: self._redis.hgetall(key)))
        return JobRow.of(decode(raw)) if raw else None

    async def list_jobs(
        self,
        *,
        owner: str | None,
        state: str | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[JobRow]:
        """Rows newest first (by id), filtered; each script call reads a bounded slice."""
        index = "ids" if owner is None else "own:" + owner
        rows: list[JobRow] = []
        cursor = before
        while len(rows) < limit:
            out = await self._run(
                "list", index, opt(state), opt(kind), opt(cursor), limit - len(rows), _CHUNK
            )
            rows += [JobRow.of(decode_flat(flat)) for flat in out[1:]]
            if not out[0]:
                break
            cursor = out[0]
        return rows

    # -- operators: finding jobs and acting on many (see search.py, lua/search.lua) --------

    async def _smallest_index(self, f: JobFilter) -> str:
        """Of the id indexes that hold every match of `f`, the one with fewest entries."""
        names = _search.indexes(f)
        if len(names) == 1:
            return names[0]

        async def read() -> list[int]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zcard(self._key(name))
                return cast(list[int], await pipe.execute())

        sizes = await self._retried(read)
        return min(zip(sizes, names, strict=True))[1]

    async def _walk(
        self,
        mode: str,
        f: JobFilter,
        states: Collection[str] | None,
        before: str | None,
        limit: int,
    ) -> tuple[int, list[JobRow]]:
        """Walk the smallest index of `f` newest first, `_CHUNK` entries per script call,
        until `limit` matches are found or the index is exhausted: (matches, rows)."""
        index = await self._smallest_index(f)
        found, rows, cursor = 0, [], before
        while found < limit:
            filters = _search.args(f, states, cursor)
            out = await self._run("search", mode, index, *filters, limit - found, _CHUNK)
            found += out[1]
            rows += [JobRow.of(decode_flat(flat)) for flat in out[2:]]
            if not out[0]:
                break
            cursor = out[0]
        return found, rows

    async def search_jobs(
        self,
        f: JobFilter,
        *,
        states: Collection[str] | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[JobRow]:
        """Matching rows newest first. The smallest index among the filters' (owner, kind,
        queue, state; else all ids) is walked and every other filter (dates, text) checked
        on each job read: a rare match among many candidates reads many jobs, in script
        calls of `_CHUNK` entries each, so none blocks Redis for long."""
        if limit <= 0:
            return []
        return (await self._walk("rows", f, states, before, limit))[1]

    async def count_jobs(self, f: JobFilter, *, cap: int | None = None) -> int:
        """Exact from one index's size when one exact filter (and an id prefix) is all there
        is; else counted by walking, as `search_jobs` reads, up to `cap`."""
        if _search.only_index(f, None):
            low, high = _search.lex_range(f)
            key = self._key(_search.indexes(f)[0])
            n = int(await self._retried(lambda: self._redis.zlexcount(key, low, high)))
            return n if cap is None else min(n, cap)
        return (await self._walk("count", f, None, None, 2**53 if cap is None else cap))[0]

    async def requeue_many(self, ids: Sequence[str]) -> int:
        return int(await self._run("requeue_many", num(self.clock.now()), *ids)) if ids else 0

    async def cancel_many(
        self, ids: Sequence[str], follow_ups: Mapping[str, Sequence[Envelope]]
    ) -> int:
        if not ids:
            return 0
        args: list[str | int] = [num(self.clock.now()), len(ids)]
        for job_id in ids:
            args += [job_id, len(follow_ups.get(job_id, ()))]
        args += envelope_args(e for job_id in ids for e in follow_ups.get(job_id, ()))
        return int(await self._run("cancel_many", *args))

    async def delete_many(self, ids: Sequence[str]) -> int:
        return int(await self._run("delete_many", *ids)) if ids else 0

    async def silence_many(self, ids: Sequence[str]) -> int:
        return int(await self._run("silence_many", *ids)) if ids else 0

    async def forget_owner(self, owner: str) -> int:
        return int(await self._run("forget_owner", owner))

    async def history(self, *, since: float) -> list[tuple[float, str, str, int]]:
        """From per-minute counters that settle keeps (a day and an hour of them): unlike the
        SQL backends, which count stored rows, deleting or re-queuing a job later does not
        take it out of the minute it ended in."""
        now = int(self.clock.now() // 60) * 60
        first = max(int(since // 60) * 60, now - 60 * _search.HISTORY_KEEP_MINUTES)
        minutes = list(range(first, now + 60, 60))

        async def read() -> list[dict[str, str]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for minute in minutes:
                    pipe.hgetall(self._key(f"hist:{minute}"))
                return cast(list[dict[str, str]], await pipe.execute())

        answers = await self._retried(read)
        return [
            fact
            for minute, fields in zip(minutes, answers, strict=True)
            for fact in _search.history_counts(minute, fields)
        ]

    async def progress(self, lease: Lease, fraction: float | None, message: str | None) -> bool:
        return bool(
            await self._run(
                "progress", lease.job_id, lease.token,
                opt(None if fraction is None else num(fraction)), opt(message),
            )
        )  # fmt: skip

    async def cancel(self, job_id: str, follow_ups: Sequence[Envelope] = ()) -> JobRow:
        """Cancel a waiting job (storing `follow_ups` with it), or flag a running one for
        its worker (which settles it, with the follow-ups).

        Raises:
            JobNotFound, InvalidTransition (already final), BackendError (a follow-up's id
            is already stored; nothing changed).
        """
        args = (num(self.clock.now()), job_id, *envelope_args(follow_ups))
        answer = await self._transition("cancel", job_id, "cancelled", *args)
        if answer[0] == "ok":
            return JobRow.of(decode_flat(answer[1]))
        if answer[0] == "missing":
            raise JobNotFound(job_id)
        raise InvalidTransition(f"job {job_id} is already {answer[1]}")

    async def _transition(self, script: str, job_id: str, reached: str, *args: str) -> Any:
        """A cancel or requeue script's answer, sent again on a lost connection. A resend
        refused because the job is `reached` already answers it as done: the lost attempt
        did it (or the job was there before, which a lost reply cannot tell apart; either
        way it is where the caller wants it), follow-ups stored with it, not again."""

        async def attempt(resent: bool) -> Any:
            answer = await self._script(script, *args)
            if resent and answer[0] not in ("ok", "missing") and answer[1] == reached:
                async with self._guard():
                    raw = await self._redis.hgetall(self._key("job:" + job_id))
                return ["ok", [item for pair in raw.items() for item in pair]]
            return answer

        return await self.retrier.run(attempt)

    async def requeue(self, job_id: str) -> JobRow:
        """Queue a dead, failed or cancelled job again with attempt 0.

        Raises:
            JobNotFound, InvalidTransition (any other state).
        """
        answer = await self._transition("requeue", job_id, "queued", num(self.clock.now()), job_id)
        if answer[0] == "ok":
            return JobRow.of(decode_flat(answer[1]))
        if answer[0] == "missing":
            raise JobNotFound(job_id)
        raise InvalidTransition(
            f"job {job_id} is {answer[1]}; only dead, failed or cancelled jobs can be re-queued"
        )

    @staticmethod
    def _change(seq: int, fields: dict[str, str]) -> Change:
        row = decode(fields)
        return Change(seq=seq, job_id=row["id"], owner=row["owner"], row=JobRow.of(row))

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]:
        """Feed entries after `seq`, oldest first; one job's come from its own index."""
        if limit <= 0:
            return []
        if job_id is None and owner is None:  # the one feed reader of this instance
            await self._announcements.follow()
            self._seen_feed = self._announcements.feed_mark()
            feed = self._key("feed")
            entries = cast(
                list[tuple[str, dict[str, str]]],
                await self._retried(
                    lambda: self._redis.xrange(feed, min=f"{seq + 1}-0", count=limit)
                ),
            )
            return [self._change(int(sid.split("-")[0]), fields) for sid, fields in entries]
        changes: list[Change] = []
        cursor = seq
        while len(changes) < limit:
            out = await self._run(
                "changes", cursor, opt(job_id), opt(owner), limit - len(changes), _CHUNK
            )
            changes += [self._change(int(sid.split("-")[0]), pairs(flat)) for sid, flat in out[1:]]
            if out[0] == "":
                break
            cursor = int(out[0])
        return changes

    async def last_seq(self) -> int:
        """The newest change-feed position (0 before the first change): the counter every
        entry takes its position from, kept when old entries are pruned (0 again only when
        the server lost its data)."""
        newest = await self._retried(lambda: self._redis.get(self._key("seq")))
        return int(newest or 0)

    async def feed_head(self, seq: int) -> int:
        # Entries are appended by scripts, one at a time: no gap ever fills.
        return max(seq, await self.last_seq())

    async def wait_changes(self, timeout: float) -> None:
        """Return once the feed grew since this instance's last unfiltered read."""
        news = self._announcements
        await news.wait_until(lambda: self._seen_feed != news.feed_mark(), timeout)

    async def remember(self, job_id: str, key: str, value: Any, *, first: bool = False) -> None:
        raw = orjson.dumps(value).decode()
        await self._run("remember", job_id, key, raw, 1 if first else 0)

    async def recall(self, job_id: str, key: str) -> tuple[bool, Any]:
        raw = await self._retried(lambda: self._redis.hget(self._key("fx:" + job_id), key))
        return (False, None) if raw is None else (True, orjson.loads(raw))

    async def prune(self, older_than_s: float) -> int:
        """Delete finished jobs (not dead ones) that ended more than `older_than_s` ago,
        with their feed entries and effects."""
        return await self._in_chunks("prune", num(self.clock.now() - older_than_s))

    # -- periodic schedules -----------------------------------------------------------------

    async def fire_schedule(
        self, name: str, *, spec: Mapping[str, Any], fires: Sequence[tuple[float, Envelope]]
    ) -> list[EnqueueResult | None]:
        """One script call: see `ScheduleStore.fire_schedule` (and `lua/periodic.lua`)."""
        if not fires:
            return []
        ticks = [num(t) for t, _ in fires]
        envelopes = envelope_args(e for _, e in fires)
        out = await self._run(
            "periodic", num(self.clock.now()), name, _json(dict(spec)) or "{}", len(fires),
            *ticks, *envelopes,
        )  # fmt: skip
        return [
            None if int(out[i + 1]) < 0 else enqueue_result(out[i], int(out[i + 1]))
            for i in range(0, len(out), 2)
        ]

    async def schedule_states(self) -> list[ScheduleState]:
        stored = await self._retried(lambda: self._redis.hgetall(self._key("periodic")))
        states = []
        for name, raw in stored.items():
            state = orjson.loads(raw)
            states.append(
                ScheduleState(
                    name=str(name),
                    last_tick=float(state["last_tick"]),
                    last_job_id=state["last_job_id"],
                    fired_at=float(state["fired_at"]),
                    spec=orjson.loads(state["spec"]),
                )
            )
        return states


__all__ = ["DEFAULT_PREFIX", "RedisBackend"]
