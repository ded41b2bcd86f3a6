"""Periodic schedules contract: schedulers racing for the same ticks store each tick's job
once, missed ticks follow the catch-up policy, and the state is listed, on every backend.

Every scheduler here reads one `FakeClock` (its App's and its backend's), so ticks fall
exactly where the test moves time: no sleep, and no real second boundary crossed mid-test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import pytest

from offload import App, Message
from offload.clock import FakeClock, iso
from offload.contract import JobFilter
from offload.periodic import PERIODIC_OWNER
from offload.worker.scheduler import Scheduler

from ._support import envelope

pytestmark = pytest.mark.anyio

#: The start of every test's clock: half a second past a whole second.
START = 1_800_000_000.5
#: Schedulers racing in each test (separate processes' worth of backends where the URL
#: can be shared, else one backend shared by all).
RACERS = 4


class Tick(Message):
    n: int = 1


def _app(url: str, clock: FakeClock, catch_up: int = 0) -> App:
    app = App("periodic-contract", url=url, clock=clock)
    app.message("test.tick")(Tick)
    app.periodic(Tick(), every=timedelta(seconds=1), catch_up=catch_up, name="tick")
    return app


@pytest.fixture
async def apps(backend_url: str, backend_param: Any) -> AsyncIterator[Callable[[int], Any]]:
    """`make(catch_up)`: RACERS open apps on the test's backend and one shared FakeClock."""
    clock = FakeClock(START)
    async with AsyncExitStack() as stack:

        async def make(catch_up: int = 0) -> tuple[list[App], FakeClock]:
            if backend_param.cross_process:
                made = [_app(backend_url, clock, catch_up) for _ in range(RACERS)]
            else:  # a private in-memory database: the racers share one app
                made = [_app(backend_url, clock, catch_up)] * RACERS
            for app in made:
                await stack.enter_async_context(app)
            return made, clock

        yield make


async def _ticks_stored(app: App) -> list[str]:
    """The idempotency keys of the schedule's jobs, oldest first (one per tick stored)."""
    rows = await app.search_jobs(JobFilter(kind="test.tick"), limit=1000)
    assert all(r.owner == PERIODIC_OWNER for r in rows)
    return sorted(str(r.idempotency_key) for r in rows)


def _keys(*ticks: float) -> list[str]:
    return sorted(f"tick@{iso(t)}" for t in ticks)


async def _race(schedulers: list[Scheduler]) -> int:
    return sum(await asyncio.gather(*(s.fire_due() for s in schedulers)))


async def test_racing_schedulers_store_each_tick_once(apps: Any) -> None:
    # Given four schedulers started at START on one backend
    made, clock = await apps()
    schedulers = [Scheduler(app, since=clock.now()) for app in made]
    # When they race at START (a tick before they started: not theirs) and at 5 later ticks
    created = await _race(schedulers)
    for _ in range(5):
        clock.advance(1)
        created += await _race(schedulers)
        created += await _race(schedulers)  # and once more at the same time
    # Then each of the 5 ticks has exactly one job, stored by one of them
    assert created == 5
    assert await _ticks_stored(made[0]) == _keys(*(START - 0.5 + k for k in range(1, 6)))
    (state,) = await made[0].list_schedules()
    assert state["last_run"] == iso(START + 4.5)
    assert state["last_job_state"] == "queued"


@pytest.mark.parametrize(("catch_up", "caught"), [(0, 0), (2, 2), (10, 7)])
async def test_ticks_missed_while_no_scheduler_ran_follow_the_catch_up_policy(
    apps: Any, catch_up: int, caught: int
) -> None:
    # Given a schedule that stored its tick at START + 0.5, then no scheduler for 7 ticks
    made, clock = await apps(catch_up)
    clock.advance(1)
    assert await Scheduler(made[0], since=START).fire_due() == 1
    clock.advance(7)
    # When schedulers start (all racing) at START + 8: the ticks at +1.5 … +7.5 were missed
    restarted = [Scheduler(app, since=clock.now()) for app in made]
    first = await _race(restarted)
    # Then only the newest `catch_up` of them are enqueued, once, and the next tick on time
    assert first == caught
    clock.advance(1)
    assert await _race(restarted) == 1
    missed = [START + 0.5 + k for k in range(1, 8)]
    expected = [START + 0.5, *missed[len(missed) - caught :], START + 8.5]
    assert await _ticks_stored(made[0]) == _keys(*expected)


async def test_a_new_schedule_misses_nothing_and_a_late_tick_still_runs(apps: Any) -> None:
    # Given a schedule with catch-up that never ran, and a scheduler started at START
    made, clock = await apps(3)
    scheduler = Scheduler(made[0], since=START)
    # When its loop is late: it looks again 3.2 s after it started (within DEFAULT_LATE_S)
    clock.advance(3.2)
    # Then the 3 ticks since it started are enqueued (late, not missed), none before it
    assert await scheduler.fire_due() == 3
    assert await _ticks_stored(made[0]) == _keys(START + 0.5, START + 1.5, START + 2.5)


async def test_a_tick_at_or_before_the_stored_one_is_not_stored_again(apps: Any) -> None:
    made, _ = await apps()
    backend = made[0]._require_backend()
    schedule = made[0].schedules["tick"]
    spec = schedule.spec()
    # Given the schedule's tick 10 stored
    first = await backend.fire_schedule("tick", spec=spec, fires=[(10.0, envelope(key="k10"))])
    assert first[0] is not None and first[0].created
    # When a late process offers ticks 9, 10 and 11
    offered = [(9.0, envelope(key="k9")), (10.0, envelope(key="k10b")), (11.0, envelope())]
    results = await backend.fire_schedule("tick", spec=spec, fires=offered)
    # Then only 11 is stored, and the state names its job
    assert [r is None for r in results] == [True, True, False]
    (state,) = await backend.schedule_states()
    assert state.last_tick == 11.0 and state.last_job_id == results[2].id
    assert state.spec == spec


class Notes(Message):
    data: dict[str, Any]


async def test_a_schedule_that_fails_leaves_the_schedules_after_it_firing(
    backend_url: str,
) -> None:
    # Given three schedules, the first of which can no longer be stored (a value inside its
    # frozen message changed after it was declared: a NUL, which no engine stores alike),
    clock = FakeClock(START)
    app = App("periodic-failing", url=backend_url, clock=clock)
    app.message("test.tick")(Tick)
    app.message("test.notes")(Notes)
    poisoned = Notes(data={"text": "fine"})
    app.periodic(poisoned, every=timedelta(seconds=1), name="a-poisoned")
    app.periodic(Tick(n=1), every=timedelta(seconds=1), name="b-one")
    app.periodic(Tick(n=2), every=timedelta(seconds=1), name="c-two")
    poisoned.data["text"] = "a\x00b"
    async with app:
        scheduler = Scheduler(app, since=clock.now())
        # when the scheduler looks at the next tick, the failing schedule is warned of and
        # the others fire,
        clock.advance(1)
        assert await scheduler.fire_due() == 2
        clock.advance(1)
        assert await scheduler.fire_due() == 2
        jobs = await app.list_jobs(owner=PERIODIC_OWNER)
        assert sorted(j.payload["n"] for j in jobs) == [1, 1, 2, 2]
        assert not [j for j in jobs if j.kind == "test.notes"]
        # and once it can be stored again, it fires too, with the two ticks it failed at
        # (late within the grace, as for a scheduler that was slow to look).
        poisoned.data["text"] = "mended"
        clock.advance(1)
        assert await scheduler.fire_due() == 2 + 3
