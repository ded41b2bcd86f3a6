"""Erasing one owner's data (`App.erase_owner`, `offload jobs erase`): her jobs with their
history, the deliveries of their notifications, their checked-in payloads and her turns at
the fair queues, with no notification of hers sent from its start on."""

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
_LIVE_STATES = _EVERY_STATE - FINAL_STATES
_LIVE_NAMES = frozenset(s.value for s in _LIVE_STATES)
_DELIVERY_KINDS = frozenset({_notify.WEBHOOK_KIND, _notify.EMAIL_KIND})
#: Her jobs one delete takes.
DELETE_BATCH = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class Erasure:
    """What `App.erase_owner` took.

    Args:
        owner: whose data.
        jobs: the ids of her jobs deleted (for her files named after them).
        cancelled: those of them it cancelled first (waiting or running as it began).
        deliveries: delivery jobs deleted: of her jobs, and those naming an address given.
        files: checked-in payloads (`payloads/<job id>.json`) deleted.
        turns: fair queues that forgot her turn.
        left: the ids of jobs still there when the wait was over, not erased: hers or
            deliveries of hers still running, or a job enqueued for her as it ended. Erase
            again once they end (none of them notifies anyone meanwhile).
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


class _Run:
    """One erasure's state and running totals."""

    def __init__(self, backend: Backend, owner: str, addresses: Collection[str]) -> None:
        self.backend = backend
        self.mine = JobFilter(owner=owner)
        self.addresses = frozenset(addresses)
        self.emails = frozenset(a.lower() for a in addresses)
        self.jobs: list[str] = []
        self.waited: set[str] = set()  # hers that were waiting or running when cancelled
        self.deliveries = 0
        self.claims: list[tuple[str, str]] = []  # (job id, payload key)

    def names(self, row: JobRow, jobs: set[str]) -> bool:
        """Whether a delivery job is of one of `jobs`, or names an address given (a
        webhook's URL exactly; an email's recipient in any letter case)."""
        if row.kind not in _DELIVERY_KINDS:
            return False
        payload = row.payload
        if payload.get("job_id") in jobs:
            return True
        if row.kind == _notify.EMAIL_KIND:
            to = payload.get("to")
            return isinstance(to, str) and to.lower() in self.emails
        return payload.get("url") in self.addresses


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
    run = _Run(backend, owner, addresses)
    deadline = time.monotonic() + wait_s
    left: list[str] = []
    while True:
        # Silenced first (a delivery reads its job's options as it sends: one of hers
        # sends nothing from now on, whenever her job ends), then cancelled, without a
        # notification; her running jobs end as their workers stop them.
        await _silence_and_cancel(run)
        live = await _until_none_live(run, deadline, poll_s)
        final = await _final_jobs(run)
        # Her deliveries before her jobs: stopped between the two, a run again finds
        # them by her jobs' ids still.
        left = live + await _deliveries(run, set(final), deadline, poll_s)
        await _delete(run, final)
        if left or time.monotonic() >= deadline:
            break
        again = await backend.search_jobs(run.mine, limit=1)
        if not again:  # (else a job enqueued for her meanwhile: once more)
            break
        await asyncio.sleep(_left(deadline, poll_s))
    if not left:
        left = [r.id for r in await backend.search_jobs(run.mine, limit=1000)]
    files, files_left = await _files(app, backend, run.claims)
    turns = await backend.forget_owner(owner)
    return Erasure(
        owner=owner,
        jobs=tuple(run.jobs),
        cancelled=len(run.waited.intersection(run.jobs)),
        deliveries=run.deliveries,
        files=files,
        turns=turns,
        left=tuple(left),
        files_left=files_left,
    )


async def _silence_and_cancel(run: _Run) -> None:
    """Silence every job of hers, and cancel those waiting or running (no notification)."""
    backend = run.backend

    async def silence(rows: list[JobRow]) -> int:  # (every state: a delivery of a job of
        # hers that ended may wait, or run, still)
        n = await backend.silence_many([r.id for r in rows])
        live = [r.id for r in rows if r.state in CANCELLABLE_STATES]
        run.waited.update(live)
        return n + await backend.cancel_many(live, {})

    await walk(backend, run.mine, _EVERY_STATE, silence)


async def _until_none_live(run: _Run, deadline: float, poll_s: float) -> list[str]:
    """Wait until no job of hers waits or runs (her cancelled running ones end as their
    workers stop them), or the deadline; the ids of those still there then."""
    while True:
        live = await run.backend.search_jobs(run.mine, states=_LIVE_NAMES, limit=1000)
        if not live or time.monotonic() >= deadline:
            return [r.id for r in live]
        # (enqueued meanwhile, taken or not; or waiting again: an operator's retry)
        if any(r.id not in run.waited or r.state is not JobState.RUNNING for r in live):
            await _silence_and_cancel(run)
        await asyncio.sleep(_left(deadline, poll_s))


async def _final_jobs(run: _Run) -> dict[str, str | None]:
    """Her jobs that ended (those to delete), newest first: each id with its checked-in
    payload's key, if any."""
    found: dict[str, str | None] = {}

    async def keep(batch: list[JobRow]) -> int:
        for r in batch:
            claim = claim_check.claim_of(r.payload)
            found[r.id] = claim["key"] if claim else None
        return 0

    await walk(run.backend, run.mine, FINAL_STATES, keep)
    return found


async def _deliveries(run: _Run, jobs: set[str], deadline: float, poll_s: float) -> list[str]:
    """Delete the delivery jobs of `jobs` and those naming an address given: a waiting one
    is cancelled first, a running one waited for until the deadline. The ids still
    running at the end."""
    backend = run.backend
    every = JobFilter(queue=_notify.NOTIFY_QUEUE)
    running: list[str] = []

    def matching(rows: list[JobRow]) -> list[str]:
        return [r.id for r in rows if run.names(r, jobs)]

    async def cancel(rows: list[JobRow]) -> int:
        return await backend.cancel_many(matching(rows), {})

    async def delete(rows: list[JobRow]) -> int:
        n = await backend.delete_many(matching(rows))
        run.deliveries += n
        return n

    async def note(rows: list[JobRow]) -> int:
        running.extend(matching(rows))
        return 0

    if not jobs and not run.addresses:
        return []
    while True:
        # the live ones noted first: one that ends during the delete walk is taken by the
        # next pass (noted after it, it was missed, and outlived her jobs)
        running.clear()
        await walk(backend, every, _LIVE_STATES, note)
        await walk(backend, every, CANCELLABLE_STATES, cancel)
        await walk(backend, every, FINAL_STATES, delete)
        if not running:
            return []
        if time.monotonic() >= deadline:
            running.clear()
            await walk(backend, every, _LIVE_STATES, note)
            return list(running)
        await asyncio.sleep(_left(deadline, poll_s))


async def _delete(run: _Run, final: dict[str, str | None]) -> None:
    """Delete her jobs that ended, noting those the delete took (one made to run again
    meanwhile, by an operator's retry, stays)."""
    backend = run.backend
    ids = list(final)
    for start in range(0, len(ids), DELETE_BATCH):
        chunk = ids[start : start + DELETE_BATCH]
        n = await backend.delete_many(chunk)
        gone = chunk if n == len(chunk) else [i for i in chunk if await backend.get(i) is None]
        run.jobs.extend(gone)
        run.claims.extend((i, key) for i in gone if (key := final[i]) is not None)


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
