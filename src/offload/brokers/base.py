"""The Broker and JobStore seams (internal and unstable before 1.0).

A backend moves deliveries (Broker) and keeps status records with their change feed
(JobStore). SQL backends implement both in one class so that a transition and its status
row commit together. Every method is async, batched where it matters, and fenced: a
transition carrying a stale lease token changes nothing and reports so.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..contract import (
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

#: The error type of a job a worker gave back because it is stored at a newer version than
#: the worker runs (`Outcome(state=QUEUED, refund=True, run_at=later, error={"type": …})`):
#: `stats` counts the waiting jobs that carry it as `awaiting_newer_worker`. The SQL queries
#: and Lua scripts spell it out.
NEWER_VERSION = "NewerVersion"
#: Seconds after its last record a worker's entry is deleted (by the next `record_worker` of
#: any worker): the entries of workers that died without a clean stop.
FORGET_WORKER_AFTER_S = 3600.0
#: Seconds after its last record a worker is shown `lost`: a worker records itself on every
#: heartbeat (at most `worker.runner.DEFAULT_HEARTBEAT_S`, 2 s, apart), so three missed.
WORKER_LOST_AFTER_S = 6.0


class Capability(enum.StrEnum):
    """What a backend can do; backends never fall back silently."""

    DELAY = "delay"
    PRIORITY = "priority"
    PUSH = "push"
    DEDUP = "dedup"
    TRANSACTIONAL_ENQUEUE = "transactional_enqueue"
    #: `enqueue_sync(envelopes)`: the enqueue in the calling thread, any but the event
    #: loop's, once the backend is open (`App.enqueue_sync` then skips the hop to its loop).
    BLOCKING_ENQUEUE = "blocking_enqueue"
    #: `enqueue_stream(chunks)`: one atomic batch sent chunk by chunk as the caller makes
    #: them, so the server stores a chunk while the caller stamps the next.
    STREAMED_ENQUEUE = "streamed_enqueue"
    #: Its change feed numbers changes anew, from 1, after the server lost its data (a
    #: Redis restarted without persistence): its positions are a counter kept with the
    #: data, where SQL engines' sequences never go back (`web.events.Hub` watches for it).
    FEED_RESTARTS = "feed_restarts"


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One entry of the change feed: the job as a transition left it."""

    seq: int
    job_id: str
    owner: str
    #: The job after the transition (without its message: see `JobRow`).
    row: JobRow

    @property
    def final(self) -> bool:
        return self.row.state.final


@dataclass(frozen=True, slots=True, kw_only=True)
class WalReading:
    """A SQLite file's write-ahead log as its checkpointer last looked at it, and the times
    this process's writes waited for the WAL's rewind (sqlite/checkpoint.py): the metrics
    `offload_sqlite_*` read it at scrape time."""

    #: The database file's path (not exported: two backends of one file count once).
    path: str
    #: The WAL file's size, and the most it may take (twice the database, or the cap).
    wal_bytes: int
    bound_bytes: int
    #: Times writes waited for a rewind (the WAL past half its bound), and of those the ones
    #: that ran out with the WAL not rewound (a reader held an old snapshot).
    pauses: int
    spent_pauses: int
    #: Seconds writes waited, the pause under way included.
    paused_s: float


@runtime_checkable
class WalWatch(Protocol):
    """A backend whose WAL a checkpointer keeps bounded (SQLite on a file)."""

    def wal_reading(self) -> WalReading | None:
        """The WAL now (None: no checkpointer runs, the backend closed or in memory)."""
        ...


class BlockingEnqueue(Protocol):
    """A backend with Capability.BLOCKING_ENQUEUE."""

    def enqueue_sync(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        """`Broker.enqueue` in the calling thread, any but the event loop's (the backend
        open): blocks until stored, with the same answers and errors."""
        ...


class StreamedEnqueue(Protocol):
    """A backend with Capability.STREAMED_ENQUEUE."""

    async def enqueue_stream(
        self, chunks: AsyncIterator[Sequence[Envelope]]
    ) -> list[EnqueueResult]:
        """`Broker.enqueue` of every chunk `chunks` yields, all or none, each chunk sent as
        it comes: jobs without idempotency keys or unique keys only. If `chunks` raises,
        nothing is stored and the error propagates."""
        ...


@runtime_checkable
class Broker(Protocol):
    """Moves jobs: enqueue, claim with a lease, settle the outcome."""

    capabilities: frozenset[Capability]

    async def open(self, *, check_schema: bool = True, create: bool = True) -> None:
        """Connect, within the backend's connect timeout.

        With `check_schema`, raise SchemaError when the stored schema is not the one this
        code needs (run `migrate`); a backend whose schema is implicit or made on open
        ignores it. With `create=False` (read-only callers: the CLI's inspecting commands),
        create nothing: a store that does not exist yet (an SQLite file, or its folder) is a
        BackendError naming the URL and how to create it; a backend that never creates its
        store on open (PostgreSQL, whose schema `migrate` makes; Redis, whose keys are
        implicit) ignores it.

        Raises:
            BackendError: the server is unreachable or does not answer in time (one line,
                with the cause kept), or (`create=False`) the store does not exist.
            SchemaError: see `check_schema`.
        """
        ...

    async def close(self) -> None: ...

    async def migrate(self) -> list[int]:
        """Bring the schema up to this code's version; returns the versions applied (empty
        when up to date, and always where the schema is made on open or is implicit)."""
        ...

    async def enqueue(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        """Store the envelopes atomically (all or none).

        An envelope whose (owner, idempotency_key) is already stored is not stored again;
        its result names the first job with `created=False`. Else an envelope whose
        `unique_key` a job holds is not stored either; its result names that job with
        `created=False, unique_repeat=True`. A job holds its key while it is queued or
        retrying and never started, or (`unique="active"`) while it is queued, retrying or
        running: decided by the backend in the enqueue's own transaction (script), so two
        processes never both store one key, and freed by whatever transition takes the job
        out of those states. Within one call, the first envelope with a key wins.
        """
        ...

    async def claim(
        self, queues: Sequence[str], *, worker_id: str, lease_for: float, limit: int
    ) -> list[Lease]:
        """Lease up to `limit` ready jobs, lowest priority value first, FIFO within one.

        Each claim spends one attempt and gets a fresh lease token. A paused queue (see
        `pause`) gives none: the claim itself reads the pauses, so every process obeys one
        from its commit on.
        """
        ...

    async def extend(self, leases: Sequence[Lease], *, lease_for: float) -> list[Extension]:
        """Heartbeat: push the leases' expiry out. A lease no longer held reports held=False."""
        ...

    async def settle(self, outcomes: Sequence[Outcome]) -> Settled:
        """Apply the outcomes of attempts in one transaction; False where the lease was stale.

        The `follow_ups` of each applied outcome are enqueued in the same transaction. An
        outcome that runs the job again (retrying, or given back) ends it cancelled instead
        when a cancel was asked for while it ran; the answer names it (`Settled.cancelled`)
        and its `on_cancel` notifications are enqueued in that transaction.
        """
        ...

    async def expired(self, *, limit: int) -> list[Lapsed]:
        """Running jobs whose lease lapsed, oldest lapse first, at most `limit`.

        Reports facts only and changes no job (a backend may repair its own indexes).
        """
        ...

    async def rescue(self, decisions: Sequence[Outcome]) -> Settled:
        """Apply the worker's decisions for lapsed leases, as `settle` does, in one round
        trip; fenced twice: an outcome applies only while its token is the job's AND the
        lease is still lapsed (a late heartbeat that renewed it wins). False otherwise.

        The `follow_ups` of each applied decision are enqueued in the same transaction, and
        a cancel asked for meanwhile ends a job cancelled as in `settle`.
        """
        ...

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when new work may be ready, or after `timeout` seconds (the due jobs of a
        paused queue do not end the wait; its `resume` does)."""
        ...

    async def stats(self) -> dict[str, dict[str, Any]]:
        """Per queue: queued, scheduled, running, dead, oldest_age_s,
        awaiting_newer_worker: the waiting jobs whose stored error is of type
        `NEWER_VERSION` (given back for a worker that knows their version; also counted in
        queued or scheduled), and paused. A paused queue is listed even with no jobs."""
        ...

    async def purge(self, queue: str) -> int:
        """Delete the jobs waiting in `queue`; running jobs are left alone."""
        ...

    async def ping(self) -> None:
        """Raise BackendError when the backend is unreachable."""
        ...

    async def record_worker(self, worker: WorkerInfo) -> None:
        """Record the worker's registry entry (`WorkerInfo.entry`) as of now, the backend's
        clock (`worker.heartbeat_at` and `worker.lost` are not read); it replaces the
        worker's previous entry. Entries last recorded more than `FORGET_WORKER_AFTER_S`
        ago (workers that died) are deleted on the way. Idempotent."""
        ...

    async def forget_worker(self, worker_id: str) -> None:
        """Delete the worker's entry (a clean stop). Idempotent."""
        ...

    async def workers(self, *, lost_after_s: float) -> list[WorkerInfo]:
        """Every recorded worker, in no particular order, each stamped with its last record
        (`heartbeat_at`) and `lost` where that is more than `lost_after_s` seconds before
        now (the backend's clock)."""
        ...

    async def live_versions(self, *, within_s: float) -> dict[str, set[int]]:
        """Per kind, every version that a worker recorded within the last `within_s` seconds
        runs (a kind no such worker runs is absent)."""
        ...

    async def pause(self, queue: str) -> bool:
        """Pause `queue`: from the commit on, no `claim` (of any process) takes its jobs;
        running jobs go on, and enqueue still stores. Durable. Returns False where it was
        paused already."""
        ...

    async def resume(self, queue: str) -> bool:
        """Resume a paused `queue` and wake the workers waiting for it. Returns False where
        it was not paused."""
        ...


@runtime_checkable
class JobStore(Protocol):
    """Status records: read, list, progress, cancel, requeue, and the change feed."""

    async def get(self, job_id: str) -> JobRow | None:
        """The stored row of one job (owner included), or None."""
        ...

    async def list_jobs(
        self,
        *,
        owner: str | None,
        state: str | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[JobRow]:
        """Rows newest first; `before` is the id cursor of the previous page."""
        ...

    async def progress(self, lease: Lease, fraction: float | None, message: str | None) -> bool:
        """Record progress of a running job; False where the lease is stale."""
        ...

    async def cancel(self, job_id: str, follow_ups: Sequence[Envelope] = ()) -> JobRow:
        """Cancel: a waiting job ends `cancelled`; a running one is flagged for its worker.

        `follow_ups` are enqueued in the same transaction when the job ends `cancelled`
        here (not when a running job is only flagged: its worker settles it).

        Raises:
            JobNotFound, InvalidTransition (already final).
        """
        ...

    async def requeue(self, job_id: str) -> JobRow:
        """Put a dead, failed or cancelled job back in its queue with a fresh budget, without
        its unique key (it neither holds nor answers one again)."""
        ...

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]:
        """Changes after `seq`, oldest first, optionally for one job or one owner."""
        ...

    async def last_seq(self) -> int:
        """The newest change-feed position (0 when the feed is empty)."""
        ...

    async def feed_head(self, seq: int) -> int:
        """How far a reader of the whole feed at position `seq` may move on when it wants
        none of the changes: the position an unfiltered `changes_since(seq)` would have
        reached after handing them all over (up to a gap that may still fill, where positions
        can commit out of order). It reads positions, not the changes."""
        ...

    async def wait_changes(self, timeout: float) -> None:
        """Return soon after another process may have committed a change (or on timeout)."""
        ...

    async def remember(self, job_id: str, key: str, value: Any, *, first: bool = False) -> None:
        """Record the effect of a side step (`Context.once`) of a job, replacing the one
        recorded; with `first`, only where none is (a step's first result stands: a worker
        that lost its lease while the step ran must not write over the one another stored)."""
        ...

    async def recall(self, job_id: str, key: str) -> tuple[bool, Any]:
        """(found, value) of a side step recorded by `remember`."""
        ...

    async def prune(self, older_than_s: float) -> int:
        """Delete succeeded, failed and cancelled jobs (and their feed entries and steps)
        that finished more than `older_than_s` ago; dead jobs are kept. Returns the count."""
        ...


@runtime_checkable
class JobSearch(Protocol):
    """The operators' view of many jobs: find them by filter, count them, act on a batch of
    them, and count what ended per minute. Bulk actions take the ids of one batch (read by
    `search_jobs`) and apply in one transaction (one script call on Redis), each job fenced
    by its state as it is then: `App` walks a filter in batches, so no action holds one
    transaction (or blocks Redis) over a million rows."""

    async def search_jobs(
        self,
        f: JobFilter,
        *,
        states: Collection[str] | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[JobRow]:
        """The rows matching `f` (and, when given, in one of `states`), newest (greatest id)
        first, below the id cursor `before`, at most `limit`."""
        ...

    async def count_jobs(self, f: JobFilter, *, cap: int | None = None) -> int:
        """How many jobs match `f`; with `cap`, counting stops there (`cap` means "cap or
        more")."""
        ...

    async def requeue_many(self, ids: Sequence[str]) -> int:
        """`requeue` each of these jobs that is dead, failed or cancelled (others are left
        alone; each without its unique key), with its change-feed entry and a wake-up for its
        queue; the count."""
        ...

    async def cancel_many(
        self, ids: Sequence[str], follow_ups: Mapping[str, Sequence[Envelope]]
    ) -> int:
        """`cancel` each of these jobs that is waiting (it ends cancelled, with its feed
        entry and its `follow_ups[id]` stored in the same transaction) or running and not yet
        flagged (it is flagged for its worker); final jobs are left alone. The count changed.

        Raises:
            BackendError: a follow-up's id is already stored (nothing changed).
        """
        ...

    async def delete_many(self, ids: Sequence[str]) -> int:
        """Delete each of these jobs that is in a final state (succeeded, failed, cancelled,
        dead) with its feed entries and side-step effects (its deliveries' records); a
        waiting or running job is never deleted. The count deleted."""
        ...

    async def silence_many(self, ids: Sequence[str]) -> int:
        """Mark each of these jobs silenced (an erasure): its delivery options (callback
        URL, email address) go, replaced by `{"silenced": true}`, so that no delivery of it
        sends anything from now on (a delivery reads its job's options as it sends). The
        count marked."""
        ...

    async def forget_owner(self, owner: str) -> int:
        """Forget `owner`'s turns at the fair queues' claims (an owner id the fair queues
        keep past her jobs); her next job takes its turn as a new owner's would. A turn of
        an owner who still has waiting jobs in a fair queue is kept where dropping it would
        strand them (Redis). The count forgotten."""
        ...

    async def history(self, *, since: float) -> list[tuple[float, str, str, int]]:
        """(minute start, queue, state, count) of the jobs that ended succeeded, failed or
        dead at or after `since`, per minute (epoch seconds, a multiple of 60)."""
        ...


@runtime_checkable
class ScheduleStore(Protocol):
    """The state of periodic schedules, enqueued at most once per tick by any number of
    worker processes racing for it: the backend decides, atomically, which of them stores it.
    """

    async def fire_schedule(
        self, name: str, *, spec: Mapping[str, Any], fires: Sequence[tuple[float, Envelope]]
    ) -> list[EnqueueResult | None]:
        """Enqueue the jobs of some ticks of schedule `name`, and record the newest tick.

        In one transaction (one script on Redis): read the schedule's stored last tick; store
        the envelope of each of `fires` (tick, envelope; oldest tick first) whose tick is
        after it, honouring idempotency keys as `enqueue` does; then record the newest of
        those ticks, the id of its job and `spec` as the schedule's state. Two callers with
        the same ticks store them once between them, whatever the interleaving.

        Returns:
            Per fire: the enqueue's result, or None where the stored last tick was already
            at or after its tick (another process had it).
        """
        ...

    async def schedule_states(self) -> list[ScheduleState]:
        """The stored state of every schedule that ever fired, in no particular order."""
        ...


@runtime_checkable
class Limiter(Protocol):
    """Fleet-wide limits per kind, applied by the backend inside the claim (never by one
    process's memory): workers declare them, `claim_gated` obeys them atomically."""

    async def declare_limits(self, limits: Sequence[KindLimits]) -> None:
        """Store the limits of each of these kinds (kind, queue, max_running, rate, per_s),
        replacing what any worker declared before (the latest declaration wins); a kind
        declared with no limit loses its entry. Usage fields are not read. Idempotent."""
        ...

    async def limits(self) -> list[KindLimits]:
        """Every stored kind's limits with its usage now: jobs running (state running, a
        lapsed lease included until it is rescued) and starts within the rate's window."""
        ...

    async def claim_gated(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        lease_for: float,
        limit: int,
        fair: Collection[str] = (),
    ) -> list[Lease]:
        """`claim`, obeying the stored limits of the kinds in `queues`: in one transaction
        (one script on Redis), count each limited kind's running jobs and recent starts and
        lease at most what its `max_running` and `rate` allow; the rest stay queued, their
        attempts unspent. Records each start of a rate-limited kind.

        The queues named in `fair` are claimed round-robin across owners: one job of each
        owner with ready jobs in turn, the owner least recently served (by any claim) first,
        each owner's jobs in claim order (priority, run_at, id); the backend keeps each
        owner's last turn. Leases come back in the order taken (fair queues and the plain
        ones taking turns), not sorted by priority. A fair claim may take fewer than
        `limit` while jobs remain (it asks each owner for a fair share of the claim): claim
        again.

        The next `wait` of this instance knows what held jobs back: it ends when a start
        is due again by the rate, or when a job of a limited kind settles (its settle wakes
        the waiting workers), not at once for the ready jobs it may not take.

        A network backend sends it again on a lost connection as it does `claim`: the
        resend answers the jobs the lost attempt leased (their starts counted once), and
        leases no second batch.
        """
        ...


class Backend(Broker, JobStore, JobSearch, ScheduleStore, Limiter, Protocol):
    """A backend that is both broker and store (the SQL engines)."""


WAITING = (JobState.QUEUED.value, JobState.RETRYING.value)
#: The stats of a queue with no jobs in it (`stats` per queue; copy before changing).
EMPTY_QUEUE_STATS: dict[str, Any] = {
    "queued": 0,
    "scheduled": 0,
    "running": 0,
    "dead": 0,
    "oldest_age_s": 0.0,
    "awaiting_newer_worker": 0,
    "paused": False,
}


def mark_paused(
    stats: dict[str, dict[str, Any]], paused: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """`stats` with each queue's `paused` flag set, a paused queue with no jobs included."""
    for queue in stats.values():
        queue["paused"] = False
    for name in paused:
        stats.setdefault(name, dict(EMPTY_QUEUE_STATS))["paused"] = True
    return stats
