"""Erasing one owner's data (`App.erase_owner`, `offload jobs erase`): her jobs with their
history, the deliveries of their notifications, their checked-in payloads and her turns at
the fair queues, with no notification of the erasure leaving meanwhile."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _claim_check as claim_check
from ._bulk import walk
from .contract import CANCELLABLE_STATES, FINAL_STATES, JobFilter, JobRow, JobState
from .notify import base as _notify

if TYPE_CHECKING:
    from .app import App
    from .brokers import Backend

log = logging.getLogger("offload.erase")

#: How long an erasure waits, by default, for the owner's running jobs (and running
#: deliveries of hers) to end once cancelled (seconds): past a worker's grace (30 s).
ERASE_WAIT_S = 60.0
#: How often it looks again while it waits (seconds).
ERASE_POLL_S = 0.25
_EVERY_STATE = frozenset(JobState)


@dataclass(frozen=True, slots=True, kw_only=True)
class Erasure:
    """What `App.erase_owner` took.

    Args:
        owner: whose data.
        jobs: the ids of her jobs deleted (for her files named after them).
        cancelled: her waiting or running jobs it cancelled first (no notification left).
        deliveries: delivery jobs deleted: of her jobs, and those naming an address given.
        files: checked-in payloads (`payloads/<job id>.json`) deleted.
        turns: fair queues that forgot her turn.
        left: the ids of jobs still there when the wait was over, not erased: hers or
            deliveries of hers still running, or a job enqueued for her as it ended. Erase
            again once they end.
        files_left: payload files that could not be deleted (logged); the worker's sweep
            deletes them within the hour.
    """

    owner: str
    jobs: tuple[str, ...] = ()
    cancelled: int = 0
    deliveries: int = 0
    files: int = 0
    turns: int = 0
    left: tuple[str, ...] = ()
    files_left: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        """Whether it left nothing of hers (a job enqueued for her after it ended is hers,
        of course)."""
        return not self.left


class _Pass:
    """One erasure's running totals."""

    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.cancelled = 0
        self.deliveries = 0
        self.claims: list[tuple[str, str]] = []  # (job id, payload key)


async def erase_owner(
    app: App,
    owner: str,
    *,
    addresses: Collection[str] = (),
    wait_s: float = ERASE_WAIT_S,
    poll_s: float = ERASE_POLL_S,
) -> Erasure:
    """See `App.erase_owner`."""
    backend = await app._opened_backend()
    done = _Pass()
    deadline = time.monotonic() + wait_s
    # Paused, no delivery leaves: neither those of her jobs that a worker settles cancelled
    # while this runs, nor those waiting already. Left paused if it was paused before.
    paused = await app.pause(_notify.NOTIFY_QUEUE)
    try:
        mine = JobFilter(owner=owner)
        left = await _until_final(backend, mine, done, deadline, poll_s)
        # With jobs of hers left, the deliveries of those that end later are for the next
        # erasure: one look, no wait.
        wait = poll_s if not left else 0.0
        left += await _deliveries(
            backend, set(done.jobs), frozenset(addresses), done, deadline, wait
        )
        files, files_left = await _files(app, backend, done.claims)
        turns = await backend.forget_owner(owner)
    finally:
        if paused:
            await app.resume(_notify.NOTIFY_QUEUE)
    return Erasure(
        owner=owner,
        jobs=tuple(done.jobs),
        cancelled=done.cancelled,
        deliveries=done.deliveries,
        files=files,
        turns=turns,
        left=tuple(left),
        files_left=files_left,
    )


async def _until_final(
    backend: Backend, mine: JobFilter, done: _Pass, deadline: float, poll_s: float
) -> list[str]:
    """Cancel her waiting and running jobs, without notifications, and delete those that
    are final, over and over until none is left or the deadline passed (a job enqueued for
    her meanwhile is taken too). The ids of hers left at the end."""

    async def cancel(rows: list[JobRow]) -> int:
        return await backend.cancel_many([r.id for r in rows], {})

    async def delete(rows: list[JobRow]) -> int:
        n = await backend.delete_many([r.id for r in rows])
        gone = await _gone(backend, rows, n)
        done.jobs.extend(r.id for r in gone)
        done.claims.extend(
            (r.id, claim["key"]) for r in gone if (claim := claim_check.claim_of(r.payload))
        )
        return n

    while True:
        done.cancelled += await walk(backend, mine, CANCELLABLE_STATES, cancel)
        await walk(backend, mine, FINAL_STATES, delete)
        left = await backend.search_jobs(mine, limit=1000)
        if not left or time.monotonic() >= deadline:
            return [r.id for r in left]
        await asyncio.sleep(_left(deadline, poll_s))


async def _deliveries(
    backend: Backend,
    jobs: set[str],
    addresses: frozenset[str],
    done: _Pass,
    deadline: float,
    poll_s: float,
) -> list[str]:
    """Delete the delivery jobs of `jobs` and those naming one of `addresses` (a webhook's
    URL, an email's recipient, exactly): a waiting one is cancelled first, a running one
    waited for until the deadline. The ids still running at the end."""
    every = JobFilter(queue=_notify.NOTIFY_QUEUE)

    def matching(rows: list[JobRow]) -> list[JobRow]:
        return [r for r in rows if r.kind in _DELIVERY_KINDS and _names(r, jobs, addresses)]

    async def cancel(rows: list[JobRow]) -> int:
        return await backend.cancel_many([r.id for r in matching(rows)], {})

    async def delete(rows: list[JobRow]) -> int:
        n = await backend.delete_many([r.id for r in matching(rows)])
        done.deliveries += n
        return n

    running: list[str] = []

    async def note(rows: list[JobRow]) -> int:
        running.extend(r.id for r in matching(rows))
        return 0

    if not jobs and not addresses:
        return []
    while True:
        await walk(backend, every, CANCELLABLE_STATES, cancel)
        await walk(backend, every, FINAL_STATES, delete)
        running.clear()
        await walk(backend, every, _EVERY_STATE - FINAL_STATES, note)
        if not running or time.monotonic() >= deadline or poll_s <= 0:
            return list(running)
        await asyncio.sleep(_left(deadline, poll_s))


_DELIVERY_KINDS = frozenset({_notify.WEBHOOK_KIND, _notify.EMAIL_KIND})


def _names(row: JobRow, jobs: set[str], addresses: frozenset[str]) -> bool:
    """Whether a delivery job is of one of `jobs`, or names one of `addresses`."""
    payload = row.payload
    if payload.get("job_id") in jobs:
        return True
    target = payload.get("to") if row.kind == _notify.EMAIL_KIND else payload.get("url")
    return isinstance(target, str) and target in addresses


async def _gone(backend: Backend, rows: list[JobRow], deleted: int) -> list[JobRow]:
    """Which of `rows` a delete took: all of them when it deleted as many (the usual
    case), else those no longer stored (one re-queued between the read and the delete
    stays)."""
    if deleted == len(rows):
        return rows
    return [r for r in rows if await backend.get(r.id) is None]


async def _files(
    app: App, backend: Backend, claims: list[tuple[str, str]]
) -> tuple[int, tuple[str, ...]]:
    """Delete the checked-in payloads of the deleted jobs: (deleted, keys left)."""
    n, left = 0, []
    for job_id, key in claims:
        if key != claim_check.payload_key(job_id) or await backend.get(job_id) is not None:
            continue  # (not this job's own payload file, or the id is stored again)
        try:
            await app.blobs.delete(key)
            n += 1
        except Exception as exc:
            log.warning("could not delete %s: %s", key, exc, extra={"action": "erase_file"})
            left.append(key)
    return n, tuple(left)


def _left(deadline: float, poll_s: float) -> float:
    return max(0.0, min(poll_s, deadline - time.monotonic()))
