"""The embedded default: queue, status records and change feed in one SQLite file (WAL)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import orjson

from ..._group import DEFAULT_GROUP_MAX_JOBS
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
from ...errors import (
    BackendError,
    ConfigurationError,
    InvalidTransition,
    JobNotFound,
    SchemaError,
    StorageFull,
)
from .._rows import RECORD_FIELDS, fields_of_record
from .._rows import envelope_of as _envelope
from .._sql import queries
from .._wakeup import Wakeup
from ..base import (
    EMPTY_QUEUE_STATS,
    FORGET_WORKER_AFTER_S,
    Capability,
    Change,
    WalReading,
    mark_paused,
)
from . import gates as _gates
from . import search as _search
from . import stalls as _stalls
from .checkpoint import DEFAULT_WAL_CAP_BYTES, Checkpointer
from .gates import QUEUES_A_QUERY, in_chunks
from .reader import Reader
from .wake import CrossWake

log = logging.getLogger("offload.sqlite")

T = TypeVar("T")

#: Page cache of the connection, KiB (SQLite's default is 2,000).
CACHE_KIB = 65_536
#: Version of the SQLite schema this code writes; a newer file is refused, an older one is
#: upgraded on open. Additions that older code ignores (the workers table, the newer-version
#: index) are made on open by `CREATE … IF NOT EXISTS` without a new version; 3 is one
#: that older code must not ignore (paused queues, which every claim reads), and so is 4
#: (unique keys, which every enqueue honours and a requeue must drop).
SCHEMA_VERSION = 5
#: How often an idle waiter checks whether another process committed (seconds).
DEFAULT_POLL_S = 0.02
#: How often a waiter checks while the database was busy within the last second. Other
#: instances' stored work wakes it by its socket (wake.py); the poll catches what sends no
#: wake-up (claims and progress, which feed readers show) and waiters that cannot bind one.
DEFAULT_BUSY_POLL_S = 0.001
#: How long after the last claim that got jobs (or feed read that got changes) the fast
#: polling goes on (seconds).
DEFAULT_BUSY_WINDOW_S = 1.0
#: How long a writer waits for another process's write lock before failing (seconds).
DEFAULT_BUSY_TIMEOUT_S = 60.0
#: A write tried again within this many seconds of one that could not be made (the lock
#: held past `DEFAULT_BUSY_TIMEOUT_S`, a full disk) waited through the stall with it: it
#: pays the stall from the first one's start. After a longer pause, from its own (a
#: process that stopped trying would pay, much later, for time it did not wait).
STALL_CARRY_S = 5.0
#: While another connection holds the write lock, a writer tries again after this long,
#: doubling up to `DEFAULT_LOCK_RETRY_MAX_S` (seconds). SQLite's own busy handler sleeps 1,
#: 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 then 100 ms between tries, so a writer missed a lock
#: freed just after a try by as much: a web process's enqueue waited 54 and 79 ms behind a
#: worker's few-millisecond writes (bench/RESULTS.md, the burst).
DEFAULT_LOCK_RETRY_S = 0.0002
DEFAULT_LOCK_RETRY_MAX_S = 0.002
#: The most jobs an enqueue writes on the event loop's own thread (`_enqueue_now`): a
#: group commit's largest, a couple of milliseconds; a bigger batch (`enqueue_many`) goes
#: to the writer thread. There a group's transaction waited for the GIL between its
#: statements whenever the loop's thread was busy (a web process under load), holding the
#: write lock meanwhile: 35 jobs once took 24 ms (bench/RESULTS.md).
DEFAULT_INLINE_MAX_JOBS = DEFAULT_GROUP_MAX_JOBS
#: The most jobs a claim takes on the event loop's own thread (`_claim_now`); a claim while
#: work piles up goes to the writer thread, which holds the loop for no longer than a hop.
DEFAULT_INLINE_CLAIM_MAX_JOBS = 8
#: Rows one write transaction of a long operation (purge, prune, bulk changes) touches at
#: most: tens of milliseconds of the write lock (bench/sqlite_locks.py), a small fraction of
#: the shortest lease.
CHUNK_ROWS = 500
#: Shortest time the lock is left free between two chunks of one operation (seconds).
CHUNK_GAP_S = 0.002
#: Bytes the readiness probe writes (and deletes) while the disk is full: room for a few
#: jobs, so that ready means a job can be accepted.
PROBE_BYTES = 64 << 10

Q = queries(__package__)
_JSON_COLUMNS = ("payload", "trace", "options", "result", "error")


def _row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> dict[str, Any]:
    row = {d[0]: v for d, v in zip(cursor.description, values, strict=True)}
    for name in _JSON_COLUMNS:
        raw = row.get(name)
        if raw is not None:
            row[name] = orjson.loads(raw)
    return row


def _entry(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """The feed entry (job id, owner, record) of a row a statement returned whole (`RETURNING
    *`, JSON columns parsed: `_row`), as `insert_events` would read it back in SQL."""
    return row["id"], row["owner"], orjson.dumps({k: row[k] for k in RECORD_FIELDS}).decode()


def _new_entry(e: Envelope) -> tuple[str, str, str]:
    """A new job's feed entry (job id, owner, record), from what its insert wrote: the
    fields an enqueue sets, as `insert_events` would read them back (a reader takes the
    absent ones as NULL: JobRow.of), without reading the row back in SQL."""
    record = {
        "id": e.id,
        "kind": e.kind,
        "version": e.version,
        "queue": e.queue,
        "state": "queued",
        "priority": e.priority,
        "attempt": e.attempt,
        "max_attempts": e.max_attempts,
        "enqueued_at": e.enqueued_at,
        "run_at": e.run_at,
    }
    return e.id, e.owner, orjson.dumps(record).decode()


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _migrate_feed_to_fields(conn: sqlite3.Connection) -> None:
    """Schema 1 to 2: feed entries held whole status records; now they hold the row's fields
    (the web tier presents them). Rewrites every entry, in the opening transaction."""
    entries = conn.execute("SELECT seq, record FROM offload_events").fetchall()
    conn.executemany(
        "UPDATE offload_events SET record = ? WHERE seq = ?",
        [(orjson.dumps(fields_of_record(orjson.loads(r))).decode(), s) for s, r in entries],
    )
    conn.execute("UPDATE offload_meta SET value = '2' WHERE key = 'schema_version'")


def _migrate_to_registry(conn: sqlite3.Connection) -> None:
    """Schema 2 to 3 (and a new file): the workers' registry entries and the paused queues,
    in the opening transaction."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(offload_workers)")}
    for statement in Q["migration_3"].split(";"):
        if "ADD COLUMN info" in statement and "info" in columns:
            continue  # a file made by this code's `schema`, or one migrated before
        conn.execute(statement)
    conn.execute("UPDATE offload_meta SET value = '3' WHERE key = 'schema_version'")


def _migrate_to_unique(conn: sqlite3.Connection) -> None:
    """Schema 3 to 4 (and a new file): the unique keys of jobs, in the opening transaction."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(offload_jobs)")}
    for statement in Q["migration_4"].split(";"):
        added = statement.partition("ADD COLUMN")[2].split()  # [name, type] or []
        if added and added[0] in columns:
            continue  # migrated before
        conn.execute(statement)
    conn.execute("UPDATE offload_meta SET value = '4' WHERE key = 'schema_version'")


def _migrate_to_5(conn: sqlite3.Connection) -> None:
    """Schema 4 to 5 (and a new file): the jobs page's indexes of the kind and of the
    creation time go, in the opening transaction (queries.sql, `migration_5`). A new
    version, so an older offload, which would make them again on its open, refuses the
    file instead of undoing this one's every time the two take turns."""
    for statement in Q["migration_5"].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("UPDATE offload_meta SET value = '5' WHERE key = 'schema_version'")


def _unique_holder(conn: sqlite3.Connection, e: Envelope) -> str | None:
    """The id of the job holding `e`'s unique key, unless `e` is not unique or its
    idempotency key names a stored job (then it is an idempotent repeat, answered so)."""
    if e.unique_key is None:
        return None
    if e.idempotency_key is not None:
        if conn.execute(Q["find_idem"], (e.owner, e.idempotency_key)).fetchone() is not None:
            return None
    row = conn.execute(Q["find_unique"], (e.unique_key,)).fetchone()
    return None if row is None else str(row[0])


@functools.cache
def _ready_sql(n_queues: int) -> str:
    """Ready jobs (id, priority, run_at) over `n_queues` queues in claim order, each queue
    read off its index."""
    union = " UNION ALL ".join([Q["claim_ids_one"]] * n_queues)
    return f"SELECT id, priority, run_at FROM ({union}) ORDER BY priority, run_at, id LIMIT ?"


def _ready_args(queues: Sequence[str], now: float, limit: int) -> list[Any]:
    args: list[Any] = []
    for queue in queues:
        args += [queue, now, queue, limit]
    return [*args, limit]


def _ready_ids(
    conn: sqlite3.Connection, queues: Sequence[str], now: float, limit: int
) -> list[str]:
    """The ids of up to `limit` ready jobs of `queues`, in claim order: one query for up to
    `QUEUES_A_QUERY` queues, and the claim order of the queries' answers past that (SQLite
    refuses a query of more than 500 parts: a worker of 500 queues claimed nothing)."""
    rows: list[Any] = []
    for chunk in in_chunks(queues):
        rows += conn.execute(_ready_sql(len(chunk)), _ready_args(chunk, now, limit)).fetchall()
    if len(queues) > QUEUES_A_QUERY:
        rows = sorted(rows, key=lambda r: (r[1], r[2], r[0]))[:limit]
    return [r[0] for r in rows]


#: The options an SQLite URL takes (`?synchronous=FULL&wal_cap_mib=64`).
_URL_OPTIONS = frozenset({"synchronous", "wal_cap_mib"})


#: The lock of each in-memory database's connections (`SQLiteBackend._conn_lock`).
_MEMORY_LOCKS: dict[str, threading.Lock] = {}
_MEMORY_LOCKS_LOCK = threading.Lock()


def _memory_lock(path: str) -> threading.Lock:
    """The one lock of the connections of this process to the in-memory database `path`."""
    with _MEMORY_LOCKS_LOCK:
        return _MEMORY_LOCKS.setdefault(path, threading.Lock())


def _memory_path(name: str) -> str:
    """The URI of the in-memory database `name`, which every connection of this process
    to it shares: in SQLite's memdb VFS, whose locks wait out the busy timeout as a file's
    do (a shared cache's table locks fail at once, "database table is locked", when the
    sync calls' connection and the App's write together); a shared cache before 3.36."""
    if sqlite3.sqlite_version_info >= (3, 36):
        return f"file:/offload-{name}?vfs=memdb"
    return f"file:offload-{name}?mode=memory&cache=shared"


#: The name of a shared in-memory database, `memory://NAME`.
_MEMORY_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: SQLite's `PRAGMA synchronous` levels (a URL may give their numbers, 0 to 3).
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def _wal_cap_bytes(url: str, mib: str | None) -> int:
    """`?wal_cap_mib=` of `url` in bytes (`DEFAULT_WAL_CAP_BYTES` without one).

    Raises:
        ConfigurationError: not a positive number.
    """
    if mib is None:
        return DEFAULT_WAL_CAP_BYTES
    try:
        cap = int(float(mib) * (1 << 20))
    except ValueError:
        cap = 0
    if cap <= 0:
        raise ConfigurationError(f"{url!r}: wal_cap_mib must be a positive number of MiB")
    return cap


def _primary_code(exc: sqlite3.Error) -> int:
    """The error's primary result code (its extended code's low byte)."""
    return int(getattr(exc, "sqlite_errorcode", 0)) & 0xFF


def _is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: the disk (or the file's size limit) left no room for the write."""
    return _primary_code(exc) == sqlite3.SQLITE_FULL


def _is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY: another connection holds the write lock."""
    return _primary_code(exc) == sqlite3.SQLITE_BUSY


class _Busy(Exception):
    """The write lock was not free at once, or writes wait for the WAL's rewind (a
    `_tx(wait=False)`): nothing was written."""


def _begin(conn: sqlite3.Connection, *, wait: bool) -> None:
    """BEGIN IMMEDIATE: take the write lock (`_retrying` while another connection holds it).

    The connection's busy timeout stays 0 until the transaction ends: the caller restores
    it (`_end_busy_wait`) after COMMIT or ROLLBACK, not while it holds the lock, where every
    statement may wait for the GIL among a worker's handler threads. Inside the transaction
    nothing waits for a lock (in WAL mode a commit needs none beyond the write lock).

    Raises:
        _Busy: (without `wait`) the lock was not free at once.
        sqlite3.OperationalError: still busy after `DEFAULT_BUSY_TIMEOUT_S`, or any other
            failure.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        _retrying(conn, "BEGIN IMMEDIATE", wait=wait)
    except BaseException:
        _end_busy_wait(conn)
        raise


def _retrying(
    conn: sqlite3.Connection,
    sql: str,
    args: Sequence[Any] = (),
    *,
    wait: bool = True,
    bound_s: float | None = None,
) -> sqlite3.Cursor:
    """Execute `sql` on a connection whose busy timeout is 0; while another connection
    holds the write lock, try again soon (`DEFAULT_LOCK_RETRY_S`, doubling to
    `DEFAULT_LOCK_RETRY_MAX_S`) for up to `bound_s` (`DEFAULT_BUSY_TIMEOUT_S`), rather
    than in SQLite's busy handler, whose sleeps grow to 100 ms.

    Raises:
        _Busy: (without `wait`) the lock was not free at once.
        sqlite3.OperationalError: still busy after `bound_s`, or any other failure.
    """
    pause = DEFAULT_LOCK_RETRY_S
    deadline = time.monotonic() + (DEFAULT_BUSY_TIMEOUT_S if bound_s is None else bound_s)
    while True:
        try:
            return conn.execute(sql, args)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            if not wait:
                raise _Busy from exc
            if time.monotonic() >= deadline:
                raise
        time.sleep(pause)  # the GIL is free meanwhile, as in SQLite's busy handler
        pause = min(2 * pause, DEFAULT_LOCK_RETRY_MAX_S)


def _end_busy_wait(conn: sqlite3.Connection) -> None:
    """Give the connection back its busy timeout for its statements outside a transaction."""
    conn.execute(f"PRAGMA busy_timeout = {int(DEFAULT_BUSY_TIMEOUT_S * 1000)}")


def _progress_feed_trigger() -> str:
    """A trigger of this connection only (TEMP): each progress update of a running job
    writes its feed entry, as `_event` does, in the update's own statement. Other updates
    that set the progress columns (a claim, a requeue) change the state and write their own
    entry."""
    body = Q["insert_events"]
    assert body.count("json_each(?)") == 1
    return (
        "CREATE TEMP TRIGGER IF NOT EXISTS offload_progress_feed"
        " AFTER UPDATE OF progress_fraction, progress_message ON main.offload_jobs"
        " WHEN OLD.state = 'running' AND NEW.state = 'running' BEGIN "
        + body.replace("json_each(?)", "json_each(json_array(NEW.id))")
        + "; END"
    )


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


class SQLiteBackend:
    """Broker and JobStore on one SQLite database, safe for many processes on one file.

    All calls run on one dedicated thread per instance (SQLite connections are not
    shared between threads), but `enqueue_sync`, which writes on a connection of its
    caller's thread; writers take the database lock with BEGIN IMMEDIATE, so claims by
    competing processes never hand out the same job twice.
    """

    capabilities = frozenset(
        {Capability.DELAY, Capability.PRIORITY, Capability.DEDUP, Capability.TRANSACTIONAL_ENQUEUE}
    )

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "NORMAL",
        clock: Clock | None = None,
        poll_s: float = DEFAULT_POLL_S,
        wal_cap_bytes: int = DEFAULT_WAL_CAP_BYTES,
    ) -> None:
        self.path = path
        self.wal_cap_bytes = wal_cap_bytes
        self.synchronous = synchronous.upper()
        #: Whether a small enqueue may write on the event loop's thread (`_enqueue_now`):
        #: commits that do not sync to disk (WAL: no fsync but at checkpoints, which run
        #: elsewhere), on a file (shared-cache memory databases lock by table, not by file).
        self._inline = self.synchronous in ("NORMAL", "OFF") and not self.in_memory
        if not self.in_memory:  # a thread's own connection to a file (`enqueue_sync`)
            self.capabilities = type(self).capabilities | {Capability.BLOCKING_ENQUEUE}
        #: The idle connections of `enqueue_sync` callers (each call takes one and gives it
        #: back, so there are as many as calls ever ran at once, however many threads came
        #: and went), and whether the backend takes such calls (open); under the lock.
        self._blocking_idle: list[sqlite3.Connection] = []
        self._blocking_open = False
        self._blocking_lock = threading.Lock()
        #: A test's clock (`Clock.stands_in_for_server`) keeps the time; any other is this
        #: host's, which every process sharing the file reads (they cannot disagree).
        self.clock = clock if clock is not None and clock.stands_in_for_server else Clock()
        self.poll_s = poll_s
        self._conn: sqlite3.Connection | None = None
        #: The schema versions the open upgraded the file to (`migrate` reports them).
        self.upgraded: list[int] = []
        self._executor: ThreadPoolExecutor | None = None
        #: Calls handed to the writer thread and not yet back (see `_enqueue_now`).
        self._queued = 0
        #: Held by whichever thread uses `_conn`: the writer thread, or an event loop's
        #: thread writing inline (`_now`; several threads' loops may share one backend).
        #: An in-memory database's is every backend's of this process on it: one at a time
        #: (its memdb locks are a rollback journal's, where one connection's read blocks
        #: another's write at once, "database is locked", as WAL's never do).
        self._conn_lock = _memory_lock(path) if path.startswith("file:") else threading.Lock()
        #: Status reads on a connection and thread of their own (files only: reader.py).
        self._reader: Reader | None = None
        self._local_writes = 0
        #: When this instance last claimed jobs or read changes (monotonic seconds): fast
        #: polling pays while work flows, not after any write (a worker's registry record
        #: every heartbeat would keep every idle waiter polling fast).
        self._last_work = 0.0
        self._checkpointer: Checkpointer | None = None
        #: A write failed for want of space, and none has succeeded since: `ping` probes.
        self._full = False
        self._seen: dict[str, tuple[int, int]] = {}
        self._wakeup = Wakeup()
        #: Wake-ups to and from other processes on the file (wake.py); files only.
        self._cross: CrossWake | None = None
        #: What held jobs back at this instance's last gated claim: whether a limit did,
        #: and when a start is next due by a rate (see `wait`).
        self._held_back: tuple[bool, float | None] = (False, None)
        #: This instance's gated claims so far: whose turn it is among the plain queues
        #: and the fair ones (`limits.in_turn`).
        self._turns = 0
        #: A wait for the write lock this long is a stall that pauses the leases: at most a
        #: quarter of the shortest lease this instance claimed with.
        self._stall_s = _stalls.DEFAULT_STALL_S
        #: How long the last write transaction waited for the lock (seconds; its thread's).
        self._lock_wait_s = 0.0
        #: When this instance's write that gave up waiting for the lock (busy past
        #: `DEFAULT_BUSY_TIMEOUT_S`), or failed for want of room, began waiting, until one
        #: of its writes gets through: the stall counts from then, not from the write that
        #: was tried again (which paid only its own last seconds, and leases lapsed by a
        #: lock held past a minute), while its writes are tried again without a pause
        #: longer than `STALL_CARRY_S` (`_stall_seen_at`: when the last one failed).
        self._stalled_since: float | None = None
        self._stall_seen_at = 0.0
        #: Others' commits as of the last write that could not be made (`data_version`):
        #: one since means others could write, and no stall went on through.
        self._stall_version = 0

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> SQLiteBackend:
        """`sqlite:///relative.db`, `sqlite:////absolute.db`, `memory://`; `?synchronous=FULL`,
        `?wal_cap_mib=64` (the WAL's bound when twice the database is less: checkpoint.py).

        Raises:
            ConfigurationError: `sqlite://name.db` (two slashes), which would otherwise
                silently name a host instead of a file; an unknown option (a misspelt
                `synchronous` would leave the file at `NORMAL`); a `synchronous` that is no
                level; a `wal_cap_mib` that is no number.
        """
        parts = urlsplit(url)
        options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(options) - _URL_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"unknown SQLite URL option {unknown[0]!r}: the options are "
                + ", ".join(sorted(_URL_OPTIONS))
            )
        synchronous = options.get("synchronous", "NORMAL")
        if synchronous in ("0", "1", "2", "3"):
            synchronous = _SYNCHRONOUS[int(synchronous)]
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}: {synchronous!r}"
            )
        cap = _wal_cap_bytes(url, options.get("wal_cap_mib"))
        if parts.scheme == "memory" or (not parts.netloc and parts.path in ("", "/", "/:memory:")):
            # `memory://NAME`: every backend of this process opened on it shares the database
            # while one is open (`brokers.name_memory`); bare, a fresh one
            name = parts.netloc or secrets.token_hex(6)
            if parts.scheme == "memory" and parts.path not in ("", "/"):
                raise ConfigurationError(
                    f"{url!r}: an in-memory database has a name, not a path: memory://NAME"
                )
            if not _MEMORY_NAME.fullmatch(name):
                raise ConfigurationError(
                    f"{url!r}: an in-memory database's name is letters, digits, '-' and '_'"
                )
            path = _memory_path(name)
            return cls(path, synchronous=synchronous, clock=clock)
        if parts.netloc:
            raise ConfigurationError(
                f"{url!r} names a host; an SQLite file is sqlite:///relative/path.db "
                "(three slashes) or sqlite:////absolute/path.db (four)"
            )
        return cls(parts.path[1:], synchronous=synchronous, clock=clock, wal_cap_bytes=cap)

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise BackendError("the SQLite backend is not open")
        loop = asyncio.get_running_loop()
        self._queued += 1
        try:
            return await loop.run_in_executor(self._executor, self._serially, fn, *args)
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc
        finally:
            self._queued -= 1

    def _serially(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the writer thread, the connection its own meanwhile."""
        with self._conn_lock:
            return fn(*args)

    def _failure(self, exc: sqlite3.Error) -> BackendError:
        if _is_full(exc):
            self._full = True
            return StorageFull(f"SQLite: the disk is full ({exc})")
        return BackendError(f"SQLite: {exc}")

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)`, a read: on the reader (reader.py) where there is one."""
        if self._reader is None:
            return await self._run(lambda: fn(self.conn, *args))
        try:
            return await self._reader.run(fn, *args)
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite: {exc}") from exc

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    @property
    def in_memory(self) -> bool:
        return self.path.startswith("file:")

    def where(self) -> str:
        """The database as a URL, for messages (a relative path with where it resolves)."""
        if self.in_memory:
            return "memory://"
        shown = f"sqlite:///{self.path}"
        return shown if os.path.isabs(self.path) else f"{shown} ({os.path.abspath(self.path)})"

    def _sqlite_connect(self, target: str, *, uri: bool) -> sqlite3.Connection:
        return sqlite3.connect(
            target,
            uri=uri,
            isolation_level=None,
            check_same_thread=False,
            timeout=DEFAULT_BUSY_TIMEOUT_S,
        )

    def _open_file(self, create: bool) -> sqlite3.Connection:
        """A connection to the database; with `create`, a missing file (and folder) is made.

        Raises:
            BackendError: (`create=False`) no such file, or a file without offload's tables.
            ConfigurationError: (`create`) a folder of the path that cannot be made.
        """
        if self.in_memory:
            return self._sqlite_connect(self.path, uri=True)
        if create:
            if not os.path.exists(self.path):  # (a volume that did not mount: said)
                log.info(
                    "creating an offload database at %s",
                    self.where(),
                    extra={"action": "sqlite_created"},
                )
            if os.path.dirname(self.path):
                folder = Path(self.path).parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ConfigurationError(
                        f"cannot create {folder}, the folder of the offload database at "
                        f"{self.where()}: {exc.strerror or exc}"
                    ) from exc
            return self._sqlite_connect(self.path, uri=False)
        if not os.path.isfile(self.path):
            raise BackendError(
                f"no offload database at {self.where()}: start a worker (`offload worker`) "
                "or run `offload migrate` to create it"
            )
        # mode=rw never creates the file, even one deleted since the check above.
        target = f"file:{quote(os.path.abspath(self.path))}?mode=rw"
        conn = self._sqlite_connect(target, uri=True)
        if not conn.execute(Q["has_schema"]).fetchone():  # read before any PRAGMA writes
            conn.close()
            raise BackendError(f"{self.where()} is not an offload database (no offload tables)")
        return conn

    def _connect(self, create: bool = True) -> None:
        conn = self._open_file(create)
        conn.execute("PRAGMA journal_mode=WAL")
        self._writing(conn)
        # A page cache big enough for the hot index pages of a deep backlog (the default
        # 2 MiB re-reads them from the OS on every claim once a million jobs wait).
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._conn = conn
        with self._tx(stalls=False):  # the tables may not exist yet
            version = self._stored_version(conn, create)
            for statement in (Q["schema"] + ";" + Q["search_indexes"]).split(";"):
                if statement.strip():
                    conn.execute(statement)
            if version is None:
                conn.execute(
                    "INSERT INTO offload_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            if version == 1:
                _migrate_feed_to_fields(conn)
            if version is None or version <= 2:
                _migrate_to_registry(conn)
            if version is None or version <= 3:
                _migrate_to_unique(conn)
            if version is None or version <= 4:
                _migrate_to_5(conn)
            # (its versions 2 to 4 added tables and columns older code ignores: the file
            # said 4 until the upgrade to 5 wrote it)
            self.upgraded = [] if version is None else list(range(version + 1, SCHEMA_VERSION + 1))
            if create:
                self._writable(conn)
        conn.execute(_progress_feed_trigger())

    def _writable(self, conn: sqlite3.Connection) -> None:
        """A write that changes nothing, in the opening transaction: a file this process may
        only read is refused as it opens, naming it, rather than every write failing later
        (a worker that claimed nothing for ever, a web tier ready that answered 503s).

        Raises:
            ConfigurationError: the file (or its `-wal` or `-shm`) is read-only to it.
        """
        try:
            conn.execute("UPDATE offload_meta SET value = value WHERE key = 'schema_version'")
        except sqlite3.OperationalError as exc:
            if _primary_code(exc) != sqlite3.SQLITE_READONLY:
                raise
            raise ConfigurationError(
                f"{self.where()} is read-only to this process ({exc}): offload writes it, and "
                "its -wal and -shm files beside it; check their owner and mode, and the "
                "folder's"
            ) from exc

    def _stored_version(self, conn: sqlite3.Connection, create: bool) -> int | None:
        """The file's schema version (None: a new file, its tables not made yet).

        Raises:
            SchemaError: a version this offload does not know (a newer offload's file), or,
                without `create` (the command line's inspecting commands, which change
                nothing), an older one: upgrading it is for `offload migrate` or a worker,
                as an older offload can no longer open it after.
        """
        if not conn.execute(Q["has_schema"]).fetchone():
            return None
        row = conn.execute("SELECT value FROM offload_meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            return None
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.where()} has schema version {version}, newer than this offload "
                f"({SCHEMA_VERSION}): upgrade offload"
            )
        if version < 1:
            raise SchemaError(f"{self.where()} has schema version {version}: no offload's")
        if version < SCHEMA_VERSION and not create:
            raise SchemaError(
                f"{self.where()} has schema version {version}, older than this offload "
                f"({SCHEMA_VERSION}): run `offload migrate` to upgrade it (a worker of this "
                "release upgrades it as it starts); an older offload cannot open it after"
            )
        return version

    def _writing(self, conn: sqlite3.Connection) -> None:
        """Set what every connection that writes sets (the journal mode is the file's)."""
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA temp_store=MEMORY")
        if not self.in_memory:  # the checkpointer thread copies the WAL back, off this thread
            conn.execute("PRAGMA wal_autocheckpoint=0")
            # A WAL rewound by a writer shrinks to the cap (else it keeps its largest size).
            conn.execute(f"PRAGMA journal_size_limit={self.wal_cap_bytes}")

    @contextlib.contextmanager
    def _tx(
        self,
        *,
        stalls: bool = True,
        wait: bool = True,
        on: sqlite3.Connection | None = None,
        waited_since: float | None = None,
    ) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front, so two
        processes never both read the same ready rows and then race to update them.
        Without `wait`, a lock another connection holds raises `_Busy` at once, as does a
        WAL past half its bound, whose writes wait for a rewind (checkpoint.py).

        Every time a write decides with (a lease's expiry, a rescue's fence) is read from
        the clock inside the transaction, after the lock: a wait for it must not age them.
        With `stalls`, a long wait for the lock pauses the leases first (stalls.py).

        Args:
            on: another thread's connection (`enqueue_sync`) instead of the instance's:
                its lock wait and writes are not this thread's to note (other connections'
                commits move `data_version`, which waiters poll).
            waited_since: when the caller began waiting for the lock, if before this
                transaction (`_progress`): the wait counts from then.
        """
        own = on is None
        conn = self.conn if on is None else on
        before = conn.total_changes
        began = self.clock.now() if waited_since is None else waited_since
        if own and stalls:
            began = self._stall_start(conn, began)
        self._take_lock(conn, began, wait=wait, noted=own and stalls)
        lock_wait_s = self.clock.now() - began
        if own:
            self._lock_wait_s = lock_wait_s
        try:
            try:
                if stalls and lock_wait_s >= self._stall_s:
                    _stalls.pause_leases(conn, began, self.clock.now(), self._stall_s)
                yield conn
            except BaseException:
                # SQLite ends the transaction itself on some errors (SQLITE_FULL in a
                # statement): a ROLLBACK then would fail and hide the error that matters.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                # A COMMIT that failed (SQLITE_FULL) may leave the transaction open: end
                # it, or every later BEGIN on this connection fails.
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            # A full disk stops every writer as a held lock does: no heartbeat is written
            # meanwhile, so the write that succeeds once there is room pays from here.
            if own and stalls and _is_full(exc):
                self._stalled(conn, began)
            raise
        finally:
            _end_busy_wait(conn)
        if own and stalls:
            self._stalled_since = None  # (paid in this transaction, or by an earlier writer)
        self._full = False
        if own and conn.total_changes != before:  # only real writes wake this process's waiters
            self._local_writes += 1

    def _take_lock(
        self, conn: sqlite3.Connection, began: float, *, wait: bool, noted: bool
    ) -> None:
        """BEGIN IMMEDIATE once the WAL has room (checkpoint.py). With `noted`, a wait that
        gave up (busy past `DEFAULT_BUSY_TIMEOUT_S`) leaves `began` as the stall's start,
        for the write that gets the lock to pay it from (`_tx`)."""
        checkpointer = self._checkpointer
        if checkpointer is not None and checkpointer.before_write():  # the WAL near its bound
            if not wait:
                raise _Busy
            checkpointer.wait_for_room()
        try:
            _begin(conn, wait=wait)
        except sqlite3.OperationalError as exc:
            if noted and _is_busy(exc):
                self._stalled(conn, began)
            raise

    def _stall_start(self, conn: sqlite3.Connection, began: float) -> float:
        """When the wait of a write that begins waiting at `began` began: at the first
        write that could not be made, while they were tried again within `STALL_CARRY_S`
        and nobody else could write meanwhile (else from `began`)."""
        if self._stalled_since is None:
            return began
        if (
            self.clock.now() - self._stall_seen_at > STALL_CARRY_S
            or conn.execute("PRAGMA data_version").fetchone()[0] != self._stall_version
        ):
            self._stalled_since = None  # it stopped trying, or others wrote: no stall on
            return began
        return min(began, self._stalled_since)

    def _stalled(self, conn: sqlite3.Connection, began: float) -> None:
        """A write that began at `began` could not be made (the lock held past the busy
        timeout, or no room): the stall counts from the first such write (`_tx`)."""
        if self._stalled_since is None:
            self._stalled_since = began
        self._stall_seen_at = self.clock.now()
        with contextlib.suppress(sqlite3.Error):  # (never in place of the error that matters)
            self._stall_version = conn.execute("PRAGMA data_version").fetchone()[0]

    def _event(self, conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Append the current status record of each job in `rows` (whole rows, as a statement
        returned them) to the change feed, made from them, not read back."""
        if rows:
            conn.executemany(Q["insert_entries"], map(_entry, rows))

    def _event_ids(self, conn: sqlite3.Connection, ids: Sequence[str]) -> None:
        if ids:
            conn.execute(Q["insert_events"], (orjson.dumps(ids).decode(),))

    def _returning(
        self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]
    ) -> list[dict[str, Any]]:
        cur = conn.execute(sql, args)
        return [_row(cur, values) for values in cur.fetchall()]

    # -- lifecycle --------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """The schema is made (and upgraded) when the file is opened: the versions that open
        upgraded it to."""
        return list(self.upgraded)

    async def open(self, *, check_schema: bool = True, create: bool = True) -> None:
        """Open the file, making it (and its folder and schema) unless `create` is False;
        the schema is upgraded in place, so `check_schema` changes nothing here."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="offload-sqlite")
        self._wakeup.open()
        try:
            await self._run(self._connect, create)
        except (Exception, asyncio.CancelledError):
            await self.close()
            raise
        except GeneratorExit:  # dropped by a loop that ended: no loop to close on
            if self._executor is not None:
                self._executor.shutdown(wait=False)
            raise
        if not self.in_memory:
            self._cross = CrossWake(self.path)
            self._checkpointer = Checkpointer(self.path, self.wal_cap_bytes)
            self._checkpointer.start()
            with self._blocking_lock:
                self._blocking_open = True
            reader = Reader(lambda: self._open_file(create=False))
            try:
                await reader.open()
            except BaseException:
                await self.close()
                raise
            self._reader = reader

    def wal_reading(self) -> WalReading | None:
        """The WAL as the checkpointer last looked at it, and its write pauses (WalWatch)."""
        checkpointer = self._checkpointer
        return None if checkpointer is None else checkpointer.reading()

    async def close(self) -> None:
        if self._executor is None:
            return
        cross, self._cross = self._cross, None
        if cross is not None:
            cross.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
        with self._blocking_lock:  # a connection in use is closed as its call gives it back
            self._blocking_open = False
            blocking, self._blocking_idle = self._blocking_idle, []
        for conn in blocking:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if self._conn is not None:
            await self._run(self.conn.close)
        self._executor.shutdown(wait=True)
        self._executor = None
        self._conn = None

    async def ping(self) -> None:
        """Check that the database answers; while the disk is full (a write failed for want
        of space, none succeeded since), that a small write fits again.

        Raises:
            StorageFull: the disk is still full.
            BackendError: the database does not answer.
        """
        if self._full:
            await self._run(self._probe)
        else:
            await self._run(lambda: self.conn.execute("SELECT 1").fetchone())

    def _probe(self) -> None:
        with self._tx() as conn:  # committed: the room must be on disk, not in the cache
            conn.execute(Q["storage_probe"], (PROBE_BYTES,))
        with self._tx() as conn:
            conn.execute(Q["storage_unprobe"])

    # -- broker -----------------------------------------------------------------------------

    def _insert(
        self, conn: sqlite3.Connection, envelopes: Sequence[Envelope]
    ) -> list[EnqueueResult]:
        results: list[EnqueueResult] = []
        created: list[Envelope] = []
        for e in envelopes:
            # One writer at a time (BEGIN IMMEDIATE): the holder read here is still the
            # holder when the insert below runs, and a batch's earlier jobs are visible.
            holder = _unique_holder(conn, e)
            if holder is not None:
                results.append(EnqueueResult(id=holder, created=False, unique_repeat=True))
                continue
            cur = conn.execute(
                Q["insert_job"],
                (
                    e.id,
                    e.kind,
                    e.version,
                    e.queue,
                    e.priority,
                    orjson.dumps(e.payload).decode(),
                    e.attempt,
                    e.max_attempts,
                    e.run_at,
                    e.enqueued_at,
                    e.idempotency_key,
                    e.owner,
                    _dumps(e.trace),
                    e.timeout,
                    _dumps(e.options or None),
                    e.unique_key,
                    e.unique,
                ),
            )
            if cur.rowcount == 1:
                results.append(EnqueueResult(id=e.id, created=True))
                created.append(e)
            else:
                first = conn.execute(Q["find_idem"], (e.owner, e.idempotency_key)).fetchone()
                results.append(EnqueueResult(id=first[0], created=False))
        if created:
            conn.executemany(Q["insert_entries"], map(_new_entry, created))
        return results

    def _enqueue(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        with self._tx() as conn:
            return self._insert(conn, envelopes)

    async def enqueue(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        if not envelopes:
            return []
        results = None
        if self._inline and len(envelopes) <= DEFAULT_INLINE_MAX_JOBS:
            # (The App's group commit let the loop turn once first, so callers that arrived
            # meanwhile are in `envelopes` rather than each committing alone: offload._group.)
            results = self._now(self._enqueue_now, envelopes)
        if results is None:
            results = await self._run(self._enqueue, envelopes)
        self._wake_waiters()
        return results

    def _connection_idle(self) -> bool:
        """Whether the event loop's thread may use the connection now: open, and the writer
        thread has no call of this backend (the loop, held by the caller, hands it none
        meanwhile, so the connection has one user)."""
        return not self._queued and self._executor is not None and self._conn is not None

    def _now(self, fn: Callable[..., T | None], *args: Any) -> T | None:
        """`fn(*args)` on the calling thread, the event loop's, when that waits for nothing:
        the connection is idle (`_connection_idle`) and a write lock `fn` takes without
        waiting (`_tx(wait=False)`) is free at once. Else None, nothing written, and the
        caller hands the call to the writer thread, which waits for the lock. It saves the
        hop to the writer thread and back (bench/RESULTS.md)."""
        if not self._connection_idle() or not self._conn_lock.acquire(blocking=False):
            return None  # (another thread's loop, or the writer thread, uses it now)
        try:
            return fn(*args)
        except _Busy:
            return None
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc
        finally:
            self._conn_lock.release()

    def _enqueue_now(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        """The enqueue (a small one, where `_inline` allows) on the loop's thread (`_now`):
        the hop is most of one call's cost."""
        with self._tx(wait=False) as conn:
            return self._insert(conn, envelopes)

    def enqueue_sync(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        """`enqueue` for a thread that is not the event loop's (`App.enqueue_sync`): one
        transaction in the calling thread, on a connection no other call uses meanwhile,
        waiting for the write lock as the writer thread would, with no hop to the loop.
        A file only (Capability.BLOCKING_ENQUEUE).

        Raises:
            BackendError: the backend is not open, or the write failed (nothing stored).
        """
        if not envelopes:
            return []
        try:
            conn = self._blocking_connection()
            try:
                with self._tx(on=conn):
                    results = self._insert(conn, envelopes)
            finally:
                with self._blocking_lock:
                    closed = not self._blocking_open  # the backend closed meanwhile
                    if not closed:
                        self._blocking_idle.append(conn)
                if closed:
                    conn.close()
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc
        # No ring of this instance's waiters: none waits for a job to be stored (the web
        # tier's and the workers' are other instances, in their own processes or on their
        # own loops), and those of other instances wake by their sockets.
        self._wake_others()
        return results

    def _blocking_connection(self) -> sqlite3.Connection:
        """An idle connection for one `enqueue_sync` call, opened if none is (the caller
        gives it back).

        Raises:
            BackendError: the backend is not open.
        """
        with self._blocking_lock:
            if not self._blocking_open:
                raise BackendError("the SQLite backend is not open")
            if self._blocking_idle:
                return self._blocking_idle.pop()
        conn = self._open_file(create=False)
        try:
            self._writing(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def enqueue_in(
        self, conn: sqlite3.Connection, envelopes: Sequence[Envelope]
    ) -> list[EnqueueResult]:
        """Enqueue inside the caller's own open transaction on `conn` (same database file).

        The jobs exist if and only if the caller's transaction commits.
        """
        return self._insert(conn, envelopes)

    def _ready_now(self, queues: Sequence[str], at_most: int) -> int:
        """How many jobs are ready (counted up to `at_most`), read before taking the write
        lock, so that idle workers never contend with writers; what a claim's wait for a
        change compares against from here on."""
        self._seen["claim"] = self._version()
        return len(_ready_ids(self.conn, queues, self.clock.now(), at_most))

    def _claim(
        self, queues: Sequence[str], worker_id: str, lease_for: float, limit: int
    ) -> list[Lease]:
        if not self._ready_now(queues, 1):
            return []
        return self._take(queues, worker_id, lease_for, limit)

    def _claim_now(
        self, queues: Sequence[str], worker_id: str, lease_for: float, limit: int
    ) -> list[Lease] | None:
        """The claim on the loop's thread (`_now`) where it holds the loop briefly: at most
        DEFAULT_INLINE_CLAIM_MAX_JOBS jobs are ready. Else None: the writer thread claims, as it
        does a batch while work piles up. The hop it saves lies between a job's wake-up
        and its handler (bench/RESULTS.md, pickup)."""
        found = self._ready_now(queues, DEFAULT_INLINE_CLAIM_MAX_JOBS + 1)
        if found == 0:
            return []
        if found > DEFAULT_INLINE_CLAIM_MAX_JOBS:
            return None
        inline_limit = min(limit, DEFAULT_INLINE_CLAIM_MAX_JOBS)  # more may be ready by now
        return self._take(queues, worker_id, lease_for, inline_limit, wait=False)

    def _take(
        self,
        queues: Sequence[str],
        worker_id: str,
        lease_for: float,
        limit: int,
        *,
        wait: bool = True,
    ) -> list[Lease]:
        """Lease up to `limit` ready jobs in one write transaction (`wait`: see `_tx`)."""
        token = secrets.token_hex(12)
        with self._tx(wait=wait) as conn:
            now = self.clock.now()  # after the lock: a wait for it must not shorten the lease
            expires = now + lease_for
            ids = _ready_ids(conn, queues, now, limit)
            if not ids:
                return []
            rows = self._returning(
                conn,
                Q["claim"].format(ids=_placeholders(len(ids))),
                (token, expires, worker_id, now, *ids),
            )
            self._event(conn, rows)
        self._last_work = time.monotonic()
        rows.sort(key=lambda r: (r["priority"], r["run_at"], r["id"]))
        return [
            Lease(envelope=_envelope(r), token=token, expires_at=expires, worker=worker_id)
            for r in rows
        ]

    async def claim(
        self, queues: Sequence[str], *, worker_id: str, lease_for: float, limit: int
    ) -> list[Lease]:
        if limit <= 0 or not queues:
            return []
        self._stall_s = min(self._stall_s, lease_for / 4)
        names = list(queues)
        if self._inline:
            leases = self._now(self._claim_now, names, worker_id, lease_for, limit)
            if leases is not None:
                return leases
        return await self._run(self._claim, names, worker_id, lease_for, limit)

    def _claim_gated(
        self,
        queues: Sequence[str],
        worker_id: str,
        lease_for: float,
        limit: int,
        fair: Collection[str],
    ) -> list[Lease]:
        self._seen["claim"] = self._version()
        token = secrets.token_hex(12)
        # Look before taking the write lock: idle workers then never contend with writers.
        if not _ready_ids(self.conn, queues, self.clock.now(), 1):
            self._held_back = (False, None)
            return []
        with self._tx() as conn:  # the write lock: no other claim counts meanwhile
            # After the lock: a wait for it must not shorten the lease nor age the window.
            now = self.clock.now()
            expires = now + lease_for
            limits, g = _gates.read(conn, queues, now)
            ids, served = _gates.pick(conn, queues, now, limit, g, fair, self._turns)
            self._turns += 1
            rows = []
            if ids:
                _gates.take_turns(conn, served)
                rows = self._returning(
                    conn,
                    Q["claim"].format(ids=_placeholders(len(ids))),
                    (token, expires, worker_id, now, *ids),
                )
                self._event(conn, rows)
                _gates.record_starts(conn, limits, [r["kind"] for r in rows], now)
            self._held_back = _gates.held_back(conn, queues, now) if limits else (False, None)
        if rows:
            self._last_work = time.monotonic()
        order = {job_id: n for n, job_id in enumerate(ids)}
        rows.sort(key=lambda r: order[r["id"]])
        return [
            Lease(envelope=_envelope(r), token=token, expires_at=expires, worker=worker_id)
            for r in rows
        ]

    async def claim_gated(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        lease_for: float,
        limit: int,
        fair: Collection[str] = (),
    ) -> list[Lease]:
        if limit <= 0 or not queues:
            return []
        self._stall_s = min(self._stall_s, lease_for / 4)
        return await self._run(
            self._claim_gated, list(queues), worker_id, lease_for, limit, frozenset(fair)
        )

    def _declare_limits(self, limits: Sequence[KindLimits]) -> None:
        with self._tx() as conn:
            _gates.declare(conn, limits)

    async def declare_limits(self, limits: Sequence[KindLimits]) -> None:
        await self._run(self._declare_limits, list(limits))

    async def limits(self) -> list[KindLimits]:
        return await self._run(lambda: _gates.read(self.conn, None, self.clock.now())[0])

    def _extend(self, leases: Sequence[Lease], lease_for: float) -> list[Extension]:
        pairs = ", ".join(["(?, ?)"] * len(leases))
        args: list[Any] = []
        for lease in leases:
            args += [lease.job_id, lease.token]
        with self._tx() as conn:
            expires = self.clock.now() + lease_for  # after the lock (see _claim)
            held = dict(conn.execute(Q["extend"].format(pairs=pairs), [expires, *args]).fetchall())
        return [
            Extension(
                job_id=le.job_id, held=le.job_id in held, cancel_requested=bool(held.get(le.job_id))
            )
            for le in leases
        ]

    async def extend(self, leases: Sequence[Lease], *, lease_for: float) -> list[Extension]:
        if not leases:
            return []
        return await self._run(self._extend, list(leases), lease_for)

    def _settle(self, outcomes: Sequence[Outcome], lapsed: bool = False) -> Settled:
        applied: list[bool] = []
        changed: list[str] = []
        cancelled: list[str] = []
        with self._tx() as conn:
            if lapsed and self._lock_wait_s >= self._stall_s:
                # The lapses were read before a stall: their holders could not heartbeat
                # either. The next sweep decides again, once they had their turn.
                return Settled([False] * len(outcomes))
            now = self.clock.now()
            fence = (1 if lapsed else 0, now)
            for o in outcomes:
                if o.state.final:
                    args: tuple[Any, ...] = (
                        o.state.value,
                        _dumps(o.result),
                        _dumps(o.error),
                        now,
                        o.max_attempts,
                        o.lease.job_id,
                        o.lease.token,
                        *fence,
                    )
                    sql = Q["settle_final"]
                else:
                    run_at = o.run_at if o.run_at is not None else now
                    args = (
                        o.state.value,
                        _dumps(o.error),
                        run_at,
                        now,  # its end, if a cancel was asked for meanwhile
                        1 if o.refund else 0,
                        o.max_attempts,
                        o.lease.job_id,
                        o.lease.token,
                        *fence,
                    )
                    sql = Q["settle_again"]
                row = conn.execute(sql, args).fetchone()
                applied.append(row is not None)
                if row is None:
                    continue
                changed.append(o.lease.job_id)
                notes = o.follow_ups
                if not o.state.final and row[1] == JobState.CANCELLED:
                    cancelled.append(o.lease.job_id)
                    notes = o.on_cancel
                if notes:
                    self._insert(conn, notes)
            self._event_ids(conn, changed)
        return Settled(applied, cancelled)

    async def settle(self, outcomes: Sequence[Outcome]) -> Settled:
        if not outcomes:
            return Settled()
        applied = await self._run(self._settle, list(outcomes))
        if any(o.state.waiting or o.follow_ups or o.on_cancel for o in outcomes):
            self._wake_waiters()
        return applied

    def _expired(self, limit: int) -> list[Lapsed]:
        rows = self._returning(self.conn, Q["expired"], (self.clock.now(), limit))
        return [
            Lapsed(
                lease=Lease(
                    envelope=_envelope(r),
                    token=r["lease_token"],
                    expires_at=r["lease_expires"],
                    worker=r["worker"],
                ),
                cancel_requested=bool(r["cancel_requested"]),
            )
            for r in rows
        ]

    async def expired(self, *, limit: int) -> list[Lapsed]:
        return await self._run(self._expired, limit)

    async def rescue(self, decisions: Sequence[Outcome]) -> Settled:
        if not decisions:
            return Settled()
        applied = await self._run(self._settle, list(decisions), True)
        self._wake_waiters()
        return applied

    def _version(self) -> tuple[int, int]:
        """Moves whenever anyone (another process, or this instance) commits a write."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0], self._local_writes

    async def _version_now(self) -> tuple[int, int]:
        """`_version`, read on the event loop's thread where a small enqueue may write there
        and the connection is idle (`_connection_idle`): a pragma that takes no lock,
        polled every millisecond while work comes, without the hop."""
        if self._inline and self._connection_idle():
            try:
                return self._version()
            except sqlite3.Error as exc:
                raise self._failure(exc) from exc
        return await self._run(self._version)

    def _wake_waiters(self) -> None:
        """Wake this instance's waiters at once after a local write, and other instances'
        (in this process or another) by their sockets."""
        self._wakeup.ring()
        self._wake_others()

    def _wake_others(self) -> None:
        """Wake other instances' waiters (in this process or another) by their sockets;
        any thread."""
        cross = self._cross
        if cross is not None:
            cross.send()

    async def _wait_change(self, timeout: float, seen: str) -> None:
        """Return once the database moved since the version kept under `seen`, or on timeout.

        `seen` names a cursor ("claim" for the claim loop, "feed" for the change feed):
        each reader compares against what it last read, so no wake-up is lost between
        its read and its wait, and two readers never consume each other's wake-ups.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        cross = self._cross
        if cross is not None and not cross.listen(self._wakeup.ring):
            cross = None
        while True:
            woken = 0
            if cross is not None:
                cross.arm()  # before the read: a commit after it wakes the sleep below
                woken = cross.wakes
            if await self._version_now() != self._seen.get(seen):
                return
            left = deadline - loop.time()
            if left <= 0:
                return
            if cross is not None and cross.wakes != woken:
                continue  # the byte came during the read, which may not show its commit
            busy = time.monotonic() - self._last_work < DEFAULT_BUSY_WINDOW_S
            poll = min(self.poll_s, DEFAULT_BUSY_POLL_S) if busy else self.poll_s
            await self._wakeup.sleep(min(poll, left))

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        held, next_start_at = self._held_back
        if held:  # ready jobs wait for a limit: not for the next due job, which may be one
            if next_start_at is not None:
                timeout = max(0.0, min(timeout, next_start_at - self.clock.now()))
            await self._wait_change(timeout, "claim")
            return
        # Don't sleep past the next scheduled job in these queues.
        nxt = await self._run(
            lambda: self.conn.execute(
                Q["next_run_at"].format(queues=_placeholders(len(queues))), list(queues)
            ).fetchone()[0]
        )
        if nxt is not None:
            timeout = max(0.0, min(timeout, nxt - self.clock.now()))
        await self._wait_change(timeout, "claim")

    def _stats(self) -> dict[str, dict[str, Any]]:
        now = self.clock.now()
        out: dict[str, dict[str, Any]] = {}

        def q(name: str) -> dict[str, Any]:
            return out.setdefault(name, dict(EMPTY_QUEUE_STATS))

        for queue, state, n, ready, _oldest in self.conn.execute(Q["stats"], (now,)):
            s = q(queue)
            if state in ("queued", "retrying"):
                s["queued"] += ready or 0
                s["scheduled"] += n - (ready or 0)
            else:
                s[state] += n
        for queue, oldest in self.conn.execute(Q["oldest_ready"], (now,)):
            q(queue)["oldest_age_s"] = max(0.0, now - oldest)
        for queue, n in self.conn.execute(Q["newer_waiting"]):
            q(queue)["awaiting_newer_worker"] = n
        return mark_paused(out, [name for (name,) in self.conn.execute(Q["paused"])])

    async def stats(self) -> dict[str, dict[str, Any]]:
        return await self._run(self._stats)

    def _purge(self, queue: str, newest: float) -> int:
        with self._tx() as conn:
            ids = [r[0] for r in conn.execute(Q["purge_chunk"], (queue, newest, CHUNK_ROWS))]
            _search.forget(conn, ids)
        return len(ids)

    async def purge(self, queue: str) -> int:
        """Delete the waiting jobs of `queue`, `CHUNK_ROWS` per transaction; those enqueued
        after the newest that waited when it began are kept, as if it had been one."""
        newest = await self._run(
            lambda: self.conn.execute(Q["newest_waiting"], (queue,)).fetchone()[0]
        )
        if newest is None:
            return 0
        return await self._until_short(lambda: self._purge(queue, newest))

    async def _gap(self, began: float) -> None:
        """Leave the write lock free after one chunk for as long as the chunk held it: other
        processes' writers, asleep in SQLite's busy handler, must find it free when they
        wake, or they wait out the whole operation."""
        await asyncio.sleep(max(CHUNK_GAP_S, time.monotonic() - began))

    async def _until_short(self, chunk: Callable[[], int]) -> int:
        """Run the write `chunk` (at most `CHUNK_ROWS` rows) until it changes fewer."""
        total = 0
        while True:
            began = time.monotonic()
            n = await self._run(chunk)
            total += n
            if n < CHUNK_ROWS:
                return total
            await self._gap(began)

    async def _by_ids(self, chunk: Callable[[list[str]], int], ids: Sequence[str]) -> int:
        """Run the write `chunk` over `ids`, `CHUNK_ROWS` of them per transaction."""
        total = 0
        for start in range(0, len(ids), CHUNK_ROWS):
            began = time.monotonic()
            total += await self._run(chunk, list(ids[start : start + CHUNK_ROWS]))
            if start + CHUNK_ROWS < len(ids):
                await self._gap(began)
        return total

    # -- workers ----------------------------------------------------------------------------

    def _record_worker(self, worker: WorkerInfo) -> None:
        entry = worker.entry()
        kinds = orjson.dumps(entry["kinds"]).decode()
        with self._tx() as conn:
            now = self.clock.now()
            conn.execute(Q["forget_workers"], (now - FORGET_WORKER_AFTER_S,))
            conn.execute(Q["record_worker"], (worker.id, kinds, now, orjson.dumps(entry).decode()))

    async def record_worker(self, worker: WorkerInfo) -> None:
        await self._run(self._record_worker, worker)

    def _forget_worker(self, worker_id: str) -> None:
        with self._tx() as conn:
            conn.execute(Q["forget_worker"], (worker_id,))

    async def forget_worker(self, worker_id: str) -> None:
        await self._run(self._forget_worker, worker_id)

    def _workers(self, lost_after_s: float) -> list[WorkerInfo]:
        lost_before = self.clock.now() - lost_after_s
        return [
            WorkerInfo.of(orjson.loads(info), heartbeat_at=seen, lost=seen < lost_before)
            for info, seen in self.conn.execute(Q["registry"])
        ]

    async def workers(self, *, lost_after_s: float) -> list[WorkerInfo]:
        return await self._run(self._workers, lost_after_s)

    def _live_versions(self, within_s: float) -> dict[str, set[int]]:
        live: dict[str, set[int]] = {}
        for (entry,) in self.conn.execute(Q["live_workers"], (self.clock.now() - within_s,)):
            for kind, versions in orjson.loads(entry).items():
                live.setdefault(kind, set()).update(versions)
        return live

    async def live_versions(self, *, within_s: float) -> dict[str, set[int]]:
        return await self._run(self._live_versions, within_s)

    # -- paused queues ----------------------------------------------------------------------

    def _pause(self, queue: str) -> bool:
        with self._tx() as conn:
            return conn.execute(Q["pause"], (queue, self.clock.now())).rowcount == 1

    async def pause(self, queue: str) -> bool:
        return await self._run(self._pause, queue)

    def _resume(self, queue: str) -> bool:
        with self._tx() as conn:
            return conn.execute(Q["resume"], (queue,)).rowcount == 1

    async def resume(self, queue: str) -> bool:
        """Resume `queue`; this process's waiters wake at once, other processes' see the
        commit at their next poll (as for any write)."""
        resumed = await self._run(self._resume, queue)
        if resumed:
            self._wake_waiters()
        return resumed

    # -- job store --------------------------------------------------------------------------

    def _get(self, job_id: str) -> dict[str, Any] | None:
        rows = self._returning(self.conn, Q["get"], (job_id,))
        return rows[0] if rows else None

    async def get(self, job_id: str) -> JobRow | None:
        rows = await self._read(self._returning, Q["get"], (job_id,))
        return JobRow.of(rows[0]) if rows else None

    def _list_jobs(
        self,
        conn: sqlite3.Connection,
        owner: str | None,
        state: str | None,
        kind: str | None,
        before: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        try:
            f = JobFilter(owner=owner, state=state, kind=kind)
        except ValueError:  # an unknown state: no job is in it
            return []
        # The jobs page's query: a kind without a state is read one state at a time (search.py)
        sql, args = _search.search_sql(f, None, before or None, limit)
        return self._returning(conn, sql, args)

    async def list_jobs(
        self,
        *,
        owner: str | None,
        state: str | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[JobRow]:
        rows = await self._read(self._list_jobs, owner, state, kind, before, limit)
        return [JobRow.of(row) for row in rows]

    # -- operators: finding jobs and acting on many (see search.py) -------------------------

    async def search_jobs(
        self,
        f: JobFilter,
        *,
        states: Collection[str] | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[JobRow]:
        sql, args = _search.search_sql(f, states, before, limit)
        rows = await self._run(self._returning, self.conn, sql, args)
        return [JobRow.of(row) for row in rows]

    async def count_jobs(self, f: JobFilter, *, cap: int | None = None) -> int:
        return await self._run(_search.count, self.conn, f, cap)

    def _requeue_many(self, ids: Sequence[str]) -> int:
        with self._tx() as conn:
            changed = _search.requeue(conn, ids, self.clock.now())
            self._event_ids(conn, changed)
        return len(changed)

    async def requeue_many(self, ids: Sequence[str]) -> int:
        n = await self._by_ids(self._requeue_many, ids)
        if n:
            self._wake_waiters()
        return n

    def _cancel_many(self, ids: Sequence[str], follow_ups: Mapping[str, Sequence[Envelope]]) -> int:
        with self._tx() as conn:
            ended = _search.cancel_waiting(conn, ids, self.clock.now())
            self._event_ids(conn, ended)
            self._insert(conn, [e for job_id in ended for e in follow_ups.get(job_id, ())])
            return len(ended) + _search.flag_running(conn, ids)

    async def cancel_many(
        self, ids: Sequence[str], follow_ups: Mapping[str, Sequence[Envelope]]
    ) -> int:
        n = await self._by_ids(lambda chunk: self._cancel_many(chunk, follow_ups), ids)
        if follow_ups:
            self._wake_waiters()
        return n

    def _delete_many(self, ids: Sequence[str]) -> int:
        with self._tx() as conn:
            return _search.delete(conn, ids)

    async def delete_many(self, ids: Sequence[str]) -> int:
        return await self._by_ids(self._delete_many, ids)

    def _silence_many(self, ids: Sequence[str]) -> int:
        with self._tx() as conn:
            return conn.execute(Q["silence_many"], (orjson.dumps(list(ids)).decode(),)).rowcount

    async def silence_many(self, ids: Sequence[str]) -> int:
        return await self._by_ids(self._silence_many, ids)

    def _forget_owner(self, owner: str) -> int:
        with self._tx() as conn:
            return conn.execute(Q["forget_owner"], (owner,)).rowcount

    async def forget_owner(self, owner: str) -> int:
        return await self._run(self._forget_owner, owner)

    async def history(self, *, since: float) -> list[tuple[float, str, str, int]]:
        return await self._run(_search.history, self.conn, since)

    def _progress(self, lease: Lease, fraction: float | None, message: str | None) -> bool:
        """One statement, its own transaction: the trigger `_progress_feed_trigger` writes
        the feed entry, so the write lock is held within one call into SQLite. A worker's
        handler threads keep the GIL busy, and a transaction of several statements held the
        lock while each waited for it (24 to 57 ms p99 in the demo's burst, RESULTS.md)."""
        conn = self.conn
        args = (fraction, message, lease.job_id, lease.token)
        began = self.clock.now()
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            changed = _retrying(conn, Q["progress"], args, bound_s=self._stall_s).rowcount
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            changed = -1
        finally:
            _end_busy_wait(conn)
        if changed < 0:  # a stall: wait on as every write does, pausing leases (stalls.py)
            with self._tx(waited_since=began) as conn:
                changed = conn.execute(Q["progress"], args).rowcount
        else:
            self._full = False
            if changed:
                self._local_writes += 1
        return changed > 0

    async def progress(self, lease: Lease, fraction: float | None, message: str | None) -> bool:
        return await self._run(self._progress, lease, fraction, message)

    def _cancel(self, job_id: str, follow_ups: Sequence[Envelope]) -> dict[str, Any]:
        with self._tx() as conn:
            rows = self._returning(conn, Q["cancel_waiting"], (self.clock.now(), job_id))
            if rows:
                self._event(conn, rows)
                self._insert(conn, follow_ups)
                return rows[0]
            rows = self._returning(conn, Q["cancel_running"], (job_id,))
            if rows:
                return rows[0]
            current = self._get(job_id)
        if current is None:
            raise JobNotFound(job_id)
        raise InvalidTransition(f"job {job_id} is already {current['state']}")

    async def cancel(self, job_id: str, follow_ups: Sequence[Envelope] = ()) -> JobRow:
        row = JobRow.of(await self._run(self._cancel, job_id, follow_ups))
        if follow_ups and row.state is JobState.CANCELLED:
            self._wake_waiters()
        return row

    def _requeue(self, job_id: str) -> dict[str, Any]:
        with self._tx() as conn:
            rows = self._returning(conn, Q["requeue"], (self.clock.now(), job_id))
            self._event(conn, rows)
            if rows:
                return rows[0]
            current = self._get(job_id)
        if current is None:
            raise JobNotFound(job_id)
        raise InvalidTransition(
            f"job {job_id} is {current['state']}; only dead, failed or "
            "cancelled jobs can be re-queued"
        )

    async def requeue(self, job_id: str) -> JobRow:
        row = JobRow.of(await self._run(self._requeue, job_id))
        self._wake_waiters()
        return row

    def _changes(self, seq: int, job_id: str | None, owner: str | None, limit: int) -> list[Change]:
        if job_id is None and owner is None:  # the one feed reader of this instance
            self._seen["feed"] = self._version()
        sql = "SELECT seq, job_id, owner, record FROM offload_events WHERE seq > ?"
        args: list[Any] = [seq]
        if job_id is not None:
            sql += " AND job_id = ?"
            args.append(job_id)
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        rows = self.conn.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        if rows:
            self._last_work = time.monotonic()
        return [
            Change(seq=s, job_id=j, owner=o, row=JobRow.of({**orjson.loads(r), "owner": o}))
            for s, j, o, r in rows
        ]

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]:
        return await self._run(self._changes, seq, job_id, owner, limit)

    async def last_seq(self) -> int:
        """The newest change-feed position (0 when empty)."""
        return await self._run(
            lambda: self.conn.execute(
                "SELECT coalesce(max(seq), 0) FROM offload_events"
            ).fetchone()[0]
        )

    async def feed_head(self, seq: int) -> int:
        # Positions are taken under the write lock and commit in order: no gap ever fills.
        return max(seq, await self.last_seq())

    async def wait_changes(self, timeout: float) -> None:
        await self._wait_change(timeout, "feed")

    def _remember(self, job_id: str, key: str, value: Any, first: bool) -> None:
        with self._tx() as conn:
            params = {"id": job_id, "key": key, "value": _dumps(value)}
            conn.execute(Q["remember_first" if first else "remember"], params)

    async def remember(self, job_id: str, key: str, value: Any, *, first: bool = False) -> None:
        await self._run(self._remember, job_id, key, value, first)

    def _recall(self, job_id: str, key: str) -> tuple[bool, Any]:
        row = self.conn.execute(Q["recall"], (job_id, key)).fetchone()
        if row is None:
            return False, None
        return True, None if row[0] is None else orjson.loads(row[0])

    async def recall(self, job_id: str, key: str) -> tuple[bool, Any]:
        return await self._run(self._recall, job_id, key)

    def _prune(self, older_than_s: float, since: list[float]) -> int:
        """One chunk of the prune: `since` holds where the chunk before stopped in the
        finished jobs' index (moved on here)."""
        with self._tx() as conn:
            before = self.clock.now() - older_than_s
            rows = conn.execute(Q["prune_ended"], (since[0], before, CHUNK_ROWS)).fetchall()
            ids = [r[0] for r in rows]
            since[0] = max((r[1] for r in rows), default=since[0])
            if len(ids) < CHUNK_ROWS:
                ids += [
                    r[0]
                    for r in conn.execute(Q["prune_cancelled"], (before, CHUNK_ROWS - len(ids)))
                ]
            _search.forget(conn, ids)
        return len(ids)

    async def prune(self, older_than_s: float) -> int:
        """Delete finished jobs (not dead ones) that ended more than `older_than_s` ago,
        `CHUNK_ROWS` per transaction."""
        since = [float("-inf")]
        return await self._until_short(lambda: self._prune(older_than_s, since))

    # -- periodic schedules -----------------------------------------------------------------

    def _fire_schedule(
        self, name: str, spec: Mapping[str, Any], fires: Sequence[tuple[float, Envelope]]
    ) -> list[EnqueueResult | None]:
        with self._tx() as conn:  # the write lock: no other process reads `last` meanwhile
            row = conn.execute(Q["schedule_last"], (name,)).fetchone()
            fresh = [(t, e) for t, e in fires if row is None or t > row[0]]
            results = self._insert(conn, [e for _, e in fresh])
            stored = dict(zip((e.id for _, e in fresh), results, strict=True))
            if fresh:
                tick, newest = fresh[-1]
                conn.execute(
                    Q["record_fire"],
                    (name, tick, stored[newest.id].id, self.clock.now(), _dumps(dict(spec))),
                )
        return [stored.get(e.id) for _, e in fires]

    async def fire_schedule(
        self, name: str, *, spec: Mapping[str, Any], fires: Sequence[tuple[float, Envelope]]
    ) -> list[EnqueueResult | None]:
        results = await self._run(self._fire_schedule, name, spec, list(fires))
        if any(r is not None and r.created for r in results):
            self._wake_waiters()
        return results

    def _schedule_states(self) -> list[ScheduleState]:
        rows = self.conn.execute(Q["schedule_states"]).fetchall()
        return [
            ScheduleState(name=n, last_tick=t, last_job_id=j, fired_at=f, spec=orjson.loads(spec))
            for n, t, j, f, spec in rows
        ]

    async def schedule_states(self) -> list[ScheduleState]:
        return await self._run(self._schedule_states)


__all__ = ["SQLiteBackend"]
