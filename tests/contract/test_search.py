"""Operators' view of many jobs: filters, keyset pages, counts, bulk actions and history."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from offload import App, Message
from offload._ids import uuid7
from offload.brokers import Backend
from offload.brokers.base import JobSearch
from offload.contract import Envelope, JobFilter, JobRow, JobState, Outcome

from ._support import LONG, ShiftClock, claim, envelope

pytestmark = pytest.mark.anyio

#: The start of the population's creation times: a day ago, whole minutes.
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Spec:
    """One job of the population: where it is, whose, when made, what it ended as."""

    kind: str
    queue: str
    owner: str
    age_h: float
    state: JobState
    name: str


def _specs() -> list[Spec]:
    states = list(JobState)
    out = []
    for n in range(28):
        out.append(
            Spec(
                kind=("report", "image", "mail")[n % 3],
                queue=("qa", "qb")[n % 2],
                owner=("alice", "bob", "carol", "dave")[n % 4],
                age_h=24.0 - n * 0.75,
                state=states[n % len(states)],
                name=("Ada Lovelace", "Grace Hopper", "50% off_sale", "Édith Piaf")[n % 4],
            )
        )
    return out


@dataclass
class World:
    """The app, its backend and the population as stored (id order = creation order)."""

    app: App
    backend: Backend
    clock: ShiftClock
    jobs: list[tuple[Spec, Envelope]]

    def expect(self, keep: Callable[[Spec, Envelope], bool]) -> list[str]:
        """The ids a filter must find, newest first."""
        return [e.id for s, e in reversed(self.jobs) if keep(s, e)]


@pytest.fixture
async def app(backend_url: str, clock: ShiftClock) -> AsyncIterator[App]:
    """An App on the test's backend; setup goes straight to the backend it opened."""
    a = App("search", url=backend_url, clock=clock)
    await a.open()
    try:
        yield a
    finally:
        await a.close()


async def _settle_as(backend: Backend, jobs: list[tuple[Spec, Envelope]], now: float) -> None:
    """Claim every ready job and settle each as its spec says (running ones stay leased)."""
    by_id = {e.id: s for s, e in jobs}
    leases = []
    for queue in ("qa", "qb"):
        leases += await backend.claim([queue], worker_id="w", lease_for=LONG, limit=100)
    outcomes = []
    for lease in leases:
        state = by_id[lease.job_id].state
        if state is JobState.RUNNING:
            continue
        run_at = now + 3600 if state is JobState.RETRYING else None
        outcomes.append(Outcome(lease=lease, state=state, run_at=run_at))
    assert all(await backend.settle(outcomes))


@pytest.fixture
async def world(app: App, clock: ShiftClock) -> World:
    backend = app._require_backend()
    now = clock.now()
    jobs = []
    for s in _specs():
        waits = s.state is JobState.QUEUED  # scheduled for later, so no claim takes it
        created = now - s.age_h * 3600
        e = envelope(
            s.queue,
            owner=s.owner,
            kind=s.kind,
            payload={"customer": s.name, "n": len(jobs)},
            run_at=now + 3600 if waits else now - 1,
            id=uuid7(created),  # as App.envelope mints it: the id carries its creation time
        )
        jobs.append((s, dataclasses.replace(e, enqueued_at=created)))
    await backend.enqueue([e for _, e in jobs])
    await _settle_as(backend, jobs, now)
    for s, e in jobs:
        row = await backend.get(e.id)
        assert row is not None and row.state is s.state
    return World(app, backend, clock, jobs)


def _at(world: World, hours_ago: float) -> datetime:
    return datetime.fromtimestamp(world.clock.now() - hours_ago * 3600, UTC)


async def _ids(world: World, f: JobFilter, limit: int = 100) -> list[str]:
    return [r.id for r in await world.app.search_jobs(f, limit=limit)]


async def test_each_filter_alone_finds_exactly_its_jobs_newest_first(world: World) -> None:
    _, e0 = world.jobs[5]
    cases: list[tuple[JobFilter, Callable[[Spec, Envelope], bool]]] = [
        (JobFilter(), lambda s, e: True),
        (JobFilter(state="dead"), lambda s, e: s.state is JobState.DEAD),
        (JobFilter(state="queued"), lambda s, e: s.state is JobState.QUEUED),
        (JobFilter(kind="image"), lambda s, e: s.kind == "image"),
        (JobFilter(queue="qb"), lambda s, e: s.queue == "qb"),
        (JobFilter(owner="carol"), lambda s, e: s.owner == "carol"),
        (JobFilter(created_after=_at(world, 6.3)), lambda s, e: s.age_h < 6.3),
        (JobFilter(created_before=_at(world, 20.2)), lambda s, e: s.age_h > 20.2),
        (JobFilter(id_prefix=e0.id), lambda s, e: e.id == e0.id),
        (JobFilter(text="lovelace"), lambda s, e: s.name == "Ada Lovelace"),
        (JobFilter(text="GRACE"), lambda s, e: s.name == "Grace Hopper"),
        # LIKE's wildcards are taken literally
        (JobFilter(text="50% off_"), lambda s, e: s.name == "50% off_sale"),
        (JobFilter(text="0%_off"), lambda s, e: False),
        (JobFilter(kind="nothing"), lambda s, e: False),
    ]
    for f, keep in cases:
        expected = world.expect(keep)
        assert await _ids(world, f) == expected, f
        assert await world.app.count_jobs(f) == len(expected), f


async def test_filters_combine_as_and(world: World) -> None:
    cases: list[tuple[JobFilter, Callable[[Spec, Envelope], bool]]] = [
        (JobFilter(kind="report", queue="qa"), lambda s, e: s.kind == "report" and s.queue == "qa"),
        (
            JobFilter(state="succeeded", owner="alice"),
            lambda s, e: s.state is JobState.SUCCEEDED and s.owner == "alice",
        ),
        (
            JobFilter(created_after=_at(world, 18.1), created_before=_at(world, 6.1), queue="qb"),
            lambda s, e: 6.1 < s.age_h < 18.1 and s.queue == "qb",
        ),
        (
            JobFilter(text="hopper", kind="image", owner="bob"),
            lambda s, e: s.name == "Grace Hopper" and s.kind == "image" and s.owner == "bob",
        ),
        (
            JobFilter(state="failed", kind="mail", queue="qa", owner="dave", text="a"),
            lambda s, e: (
                (s.state, s.kind, s.queue, s.owner) == (JobState.FAILED, "mail", "qa", "dave")
            ),
        ),
    ]
    for f, keep in cases:
        expected = world.expect(keep)
        assert await _ids(world, f) == expected, f
        assert await world.app.count_jobs(f) == len(expected), f


async def test_an_id_prefix_may_leave_out_dashes_and_case(world: World) -> None:
    _, e = world.jobs[3]
    digits = e.id.replace("-", "").upper()
    for prefix in (digits, e.id.upper(), e.id[:13], digits[:9]):
        span = JobFilter(id_prefix=prefix).id_range()
        assert span is not None and e.id.startswith(span[0])
        found = await _ids(world, JobFilter(id_prefix=prefix))
        assert found == world.expect(lambda s, x, low=span[0]: x.id.startswith(low)), prefix
        assert e.id in found
    assert await _ids(world, JobFilter(id_prefix="not-an-id")) == []


@pytest.mark.parametrize(
    ("f", "keep"),
    [
        (JobFilter(queue="qa"), lambda s, e: s.queue == "qa"),
        # a kind in several states (SQLite reads each state's newest, then merges them)
        (JobFilter(kind="image"), lambda s, e: s.kind == "image"),
    ],
    ids=["queue", "kind"],
)
async def test_pages_by_cursor_have_no_gap_and_no_repeat(
    world: World, f: JobFilter, keep: Callable[[Spec, Envelope], bool]
) -> None:
    # Given a filter matching many jobs, read three at a time
    expected = world.expect(keep)
    assert len({s.state for s, e in world.jobs if keep(s, e)}) > 1
    seen: list[str] = []
    before = None
    while True:
        page = await world.app.search_jobs(f, before=before, limit=3)
        if not page:
            break
        seen += [r.id for r in page]
        before = page[-1].id
        # while jobs come (newer: never on a later page) and change state meanwhile
        await world.backend.enqueue([envelope("qa", delay=3600)])
        if page[0].state.waiting:
            await world.backend.cancel(page[0].id)
    # Then every matching job appeared once, in order
    assert seen == expected
    assert len(set(seen)) == len(seen)


async def test_a_kind_within_states_reads_each_state_once(world: World) -> None:
    # (SQLite and PostgreSQL read a kind one state at a time: a state named twice, or one
    # that no job is in, changes nothing)
    ended = {JobState.DEAD, JobState.SUCCEEDED}
    found = world.expect(lambda s, e: s.kind == "image" and s.state in ended)
    assert len(found) >= 2
    f = JobFilter(kind="image")
    for states in (
        ["dead", "succeeded"],
        ["dead", "succeeded", "dead", "succeeded"],
        ["succeeded", "no-such-state", "dead"],
    ):
        rows = await world.backend.search_jobs(f, states=states, limit=len(found))
        assert [r.id for r in rows] == found, states
    assert await world.backend.search_jobs(f, states=["no-such-state"]) == []


async def test_count_with_a_cap_stops_there(world: World) -> None:
    total = len(world.jobs)
    assert await world.app.count_jobs(JobFilter()) == total
    assert await world.app.count_jobs(JobFilter(), cap=5) == 5
    assert await world.app.count_jobs(JobFilter(), cap=total + 10) == total
    assert await world.app.count_jobs(JobFilter(kind="mail"), cap=3) == 3
    assert await world.app.count_jobs(JobFilter(kind="nothing"), cap=3) == 0


def _feed_by_job(changes: list[Any]) -> dict[str, list[JobRow]]:
    out: dict[str, list[JobRow]] = {}
    for c in changes:
        out.setdefault(c.job_id, []).append(c.row)
    return out


async def test_retry_all_matching_requeues_exactly_those_with_feed_entries(
    world: World,
) -> None:
    # Given the population, and the feed position before the action
    seq = await world.backend.last_seq()
    f = JobFilter(kind="report")
    retryable = {JobState.DEAD, JobState.FAILED, JobState.CANCELLED}
    chosen = world.expect(lambda s, e: s.kind == "report" and s.state in retryable)
    assert chosen
    # When every report job is retried, two per batch
    n = await world.app.retry_jobs(f, batch=2)
    # Then exactly the dead, failed and cancelled reports are queued again, fresh
    assert n == len(chosen)
    for s, e in world.jobs:
        row = await world.backend.get(e.id)
        assert row is not None
        if e.id in chosen:
            assert row.state is JobState.QUEUED and row.attempt == 0, s
            assert row.finished_at is None
        else:
            assert row.state is s.state, s
    # and each wrote its feed entry, as a single requeue does
    feed = _feed_by_job(await world.backend.changes_since(seq, limit=1000))
    assert set(feed) == set(chosen)
    assert all(rows[-1].state is JobState.QUEUED for rows in feed.values())
    # and a second pass finds nothing left to retry
    assert await world.app.retry_jobs(f) == 0
    assert await world.app.retry_jobs(JobFilter(state="running")) == 0


async def test_cancel_all_matching_ends_waiting_jobs_and_flags_running_ones(
    world: World,
) -> None:
    seq = await world.backend.last_seq()
    f = JobFilter(queue="qa")
    waiting = world.expect(
        lambda s, e: s.queue == "qa" and s.state in (JobState.QUEUED, JobState.RETRYING)
    )
    running = world.expect(lambda s, e: s.queue == "qa" and s.state is JobState.RUNNING)
    assert waiting and running
    n = await world.app.cancel_jobs(f, batch=3)
    assert n == len(waiting) + len(running)
    for s, e in world.jobs:
        row = await world.backend.get(e.id)
        assert row is not None
        if e.id in waiting:
            assert row.state is JobState.CANCELLED and row.finished_at is not None
        elif e.id in running:
            assert row.state is JobState.RUNNING and row.cancel_requested
        else:
            assert row.state is s.state and not row.cancel_requested
    # the ended ones have their feed entries (flagging shows nothing new, as for one job)
    feed = _feed_by_job(await world.backend.changes_since(seq, limit=1000))
    assert set(feed) == set(waiting)
    # and flagged jobs are not counted twice
    assert await world.app.cancel_jobs(f) == 0


async def test_bulk_cancel_enqueues_the_notifications_of_each_ended_job(
    app: App, clock: ShiftClock
) -> None:
    backend = app._require_backend()
    hooked = dataclasses.replace(
        envelope("qa", delay=60), options={"callback_url": "https://example.com/hook"}
    )
    plain = envelope("qa", delay=60)
    await backend.enqueue([hooked, plain])
    assert await app.cancel_jobs(JobFilter(queue="qa")) == 2
    deliveries = await app.search_jobs(JobFilter(kind="offload.webhook"))
    assert [(r.payload["job_id"], r.payload["state"]) for r in deliveries] == [
        (hooked.id, "cancelled")
    ]


async def test_bulk_cancel_notifies_a_job_listed_running_that_waits_by_the_cancel(
    app: App, clock: ShiftClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a running job with a webhook, whose attempt fails (retrying) just after the
    # bulk cancel listed it running,
    backend = app._require_backend()
    hooked = dataclasses.replace(
        envelope("qa"), options={"callback_url": "https://example.com/hook"}
    )
    await backend.enqueue([hooked])
    (lease,) = await claim(backend, "qa")
    cancel_many = backend.cancel_many

    async def failing_first(ids: Any, follow_ups: Any) -> int:
        error = {"type": "RuntimeError", "message": "boom"}
        again = Outcome(lease=lease, state=JobState.RETRYING, error=error, run_at=clock.now())
        assert await backend.settle([again]) == [True]
        return await cancel_many(ids, follow_ups)

    monkeypatch.setattr(backend, "cancel_many", failing_first)
    # then the cancel ends it where it waits, and its webhook is told (it was not: only
    # the rows listed waiting had their notifications).
    assert await app.cancel_jobs(JobFilter(queue="qa")) == 1
    row = await backend.get(hooked.id)
    assert row is not None and row.state is JobState.CANCELLED
    deliveries = await app.search_jobs(JobFilter(kind="offload.webhook"))
    assert [(r.payload["job_id"], r.payload["state"]) for r in deliveries] == [
        (hooked.id, "cancelled")
    ]


async def test_delete_all_matching_purges_final_jobs_only(world: World) -> None:
    # Given feed entries and a recorded side step for every job
    for _, e in world.jobs:
        await world.backend.remember(e.id, "step", 1)
    final = world.expect(lambda s, e: s.state.final)
    live = world.expect(lambda s, e: not s.state.final)
    # When everything is deleted (an empty filter), two per batch
    n = await world.app.delete_jobs(JobFilter(), batch=2)
    # Then the final jobs are gone with their feed entries and steps; live ones stay whole
    assert n == len(final)
    for job_id in final:
        assert await world.backend.get(job_id) is None
        assert await world.backend.changes_since(0, job_id=job_id) == []
        assert await world.backend.recall(job_id, "step") == (False, None)
    for job_id in live:
        assert await world.backend.get(job_id) is not None
        assert await world.backend.changes_since(0, job_id=job_id) != []
        assert await world.backend.recall(job_id, "step") == (True, 1)
    assert sorted(await _ids(world, JobFilter())) == sorted(live)
    # and a filter on a live state deletes nothing
    assert await world.app.delete_jobs(JobFilter(state="running")) == 0
    assert await world.app.delete_jobs(JobFilter(state="queued")) == 0


async def test_delete_by_filter_leaves_other_final_jobs(world: World) -> None:
    f = JobFilter(state="dead", owner="bob")
    chosen = world.expect(lambda s, e: s.state is JobState.DEAD and s.owner == "bob")
    others = world.expect(lambda s, e: e.id not in chosen)
    assert await world.app.delete_jobs(f) == len(chosen)
    assert await _ids(world, JobFilter()) == others


async def test_history_counts_endings_per_minute_and_queue(app: App, clock: ShiftClock) -> None:
    backend = app._require_backend()

    async def end(queue: str, state: JobState) -> None:
        await backend.enqueue([envelope(queue, run_at=clock.now() - 1)])
        (lease,) = await backend.claim([queue], worker_id="w", lease_for=LONG, limit=1)
        assert await backend.settle([Outcome(lease=lease, state=state)])

    # Given endings spread over three minutes (and one long before the window)
    clock.advance(60 - clock.now() % 60 + 1)  # one second into a minute
    await end("qa", JobState.SUCCEEDED)
    clock.advance(-7200)
    await end("qa", JobState.SUCCEEDED)  # two hours ago: outside the window
    clock.advance(7200 + 60)
    for state in (JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.FAILED):
        await end("qa", state)
    await end("qb", JobState.DEAD)
    await end("qb", JobState.CANCELLED)  # not counted
    clock.advance(60)
    await end("qb", JobState.SUCCEEDED)
    # When the last hour's history is read
    hist = await app.history(minutes=60)
    # Then it has every minute for each queue, oldest first, with the endings in place
    assert len(hist) == 60 * 2
    minutes = sorted({h.minute for h in hist})
    assert len(minutes) == 60 and minutes[-1].timestamp() == clock.now() // 60 * 60
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(minutes))
    cells = {(h.minute.timestamp(), h.queue): (h.succeeded, h.failed, h.dead) for h in hist}
    last = minutes[-1].timestamp()
    assert cells[(last - 120, "qa")] == (1, 0, 0)
    assert cells[(last - 60, "qa")] == (2, 1, 0)
    assert cells[(last - 60, "qb")] == (0, 0, 1)
    assert cells[(last, "qb")] == (1, 0, 0)
    assert sum(sum(v) for v in cells.values()) == 6
    # and a shorter window holds only its minutes
    short = await app.history(minutes=2)
    assert {(h.minute.timestamp(), h.queue) for h in short if h.succeeded + h.failed + h.dead} == {
        (last - 60, "qa"),
        (last - 60, "qb"),
        (last, "qb"),
    }
    with pytest.raises(ValueError):
        await app.history(minutes=0)


def test_a_filter_refuses_what_it_cannot_mean() -> None:
    with pytest.raises(ValueError):
        JobFilter(state="sleeping")
    with pytest.raises(ValueError):
        JobFilter(created_after=datetime(2026, 1, 1))  # naive
    with pytest.raises(ValueError):
        JobFilter(text="")
    with pytest.raises(ValueError):
        JobFilter(id_prefix=" ")
    assert JobFilter(id_prefix="0193A1C20").id_range() == ("0193a1c2-0", "0193a1c2-1")


class Ping(Message):
    n: int


async def test_created_filters_follow_the_app_clock_that_stamped_the_jobs(
    app: App, clock: ShiftClock
) -> None:
    # Given jobs enqueued through the app while its clock reads two days ahead, then now
    app.message("search.ping")(Ping)
    clock.advance(2 * DAY)
    (later,) = await app.enqueue_many([Ping(n=1)])
    clock.advance(-2 * DAY)
    (sooner,) = await app.enqueue_many([Ping(n=2)])
    ahead = datetime.fromtimestamp(clock.now() + DAY, UTC)
    # Then the created filters find each by its own creation time (its id's time too)
    assert await _ids_of(app, JobFilter(created_after=ahead)) == [later.id]
    assert await _ids_of(app, JobFilter(created_before=ahead)) == [sooner.id]
    assert await app.count_jobs(JobFilter(created_before=ahead)) == 1


async def _ids_of(app: App, f: JobFilter) -> list[str]:
    return [r.id for r in await app.search_jobs(f)]


async def test_every_backend_offers_the_operators_view(app: App) -> None:
    assert isinstance(app._require_backend(), JobSearch)
