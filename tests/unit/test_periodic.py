"""Periodic schedules: declaration checks, tick arithmetic (cron in a time zone across DST
changes, intervals from the epoch), which ticks are due after downtime, the scheduler's pass
on a fake clock, and the listing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from offload import App, Message
from offload.clock import FakeClock, iso
from offload.errors import ConfigurationError
from offload.periodic import DEFAULT_LATE_S, Schedule, declare, due
from offload.worker.scheduler import DEFAULT_SCHEDULER_POLL_S, Scheduler


class Digest(Message):
    user: str = "u1"


def _utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[arg-type,misc]


def _cron(expr: str, tz: str = "Europe/Paris", catch_up: int = 0) -> Schedule:
    return declare(Digest(), "d", cron=expr, tz=tz, every=None, catch_up=catch_up, name=None)


def _every(seconds: float, catch_up: int = 0) -> Schedule:
    return declare(
        Digest(),
        "d",
        cron=None,
        tz=None,
        every=timedelta(seconds=seconds),
        catch_up=catch_up,
        name=None,
    )


def _next(schedule: Schedule, t: float, n: int) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(n):
        following = schedule.next_after(t)
        assert following is not None
        out.append(iso(following))
        t = following
    return out


# -- ticks ----------------------------------------------------------------------------------


def test_a_cron_tick_keeps_its_local_time_across_the_spring_dst_change() -> None:
    # 07:00 in Paris is 06:00 UTC in winter and 05:00 UTC from 29 March 2026 on.
    ticks = _next(_cron("0 7 * * *"), _utc(2026, 3, 27, 12), 3)
    assert ticks == [
        "2026-03-28T06:00:00.000Z",
        "2026-03-29T05:00:00.000Z",
        "2026-03-30T05:00:00.000Z",
    ]


def test_a_cron_tick_in_the_skipped_hour_runs_when_it_ends() -> None:
    # 02:30 does not exist in Paris on 29 March 2026: it runs at 03:00 CEST (01:00 UTC).
    assert _next(_cron("30 2 * * *"), _utc(2026, 3, 28, 12), 2) == [
        "2026-03-29T01:00:00.000Z",
        "2026-03-30T00:30:00.000Z",
    ]


def test_a_cron_tick_in_the_repeated_hour_runs_once() -> None:
    # 02:30 happens twice in Paris on 25 October 2026 (00:30 and 01:30 UTC): it runs once.
    assert _next(_cron("30 2 * * *"), _utc(2026, 10, 24, 12), 2) == [
        "2026-10-25T00:30:00.000Z",
        "2026-10-26T01:30:00.000Z",
    ]
    # An interval-like cron runs through the repeated hour in real time, every 30 minutes.
    every_half_hour = _next(_cron("*/30 * * * *"), _utc(2026, 10, 24, 23, 45), 4)
    assert every_half_hour == [
        "2026-10-25T00:00:00.000Z",
        "2026-10-25T00:30:00.000Z",
        "2026-10-25T01:00:00.000Z",
        "2026-10-25T01:30:00.000Z",
    ]


def test_ticks_back_start_at_or_before_the_time_and_agree_with_next_after() -> None:
    schedule = _cron("*/30 * * * *")
    at = _utc(2026, 10, 25, 1, 30)
    back = [iso(t) for t in itertools.islice(schedule.ticks_back(at), 3)]
    assert back == [
        "2026-10-25T01:30:00.000Z",
        "2026-10-25T01:00:00.000Z",
        "2026-10-25T00:30:00.000Z",
    ]
    assert iso(schedule.next_after(at - 0.5)) == back[0]


def test_an_interval_ticks_at_multiples_of_itself_since_the_epoch() -> None:
    schedule = _every(30)
    assert schedule.next_after(1_800_000_005.0) == 1_800_000_030.0
    assert schedule.next_after(1_800_000_030.0) == 1_800_000_060.0
    assert list(itertools.islice(schedule.ticks_back(1_800_000_030.0), 2)) == [
        1_800_000_030.0,
        1_800_000_000.0,
    ]


# -- which ticks are due --------------------------------------------------------------------


def test_due_is_the_current_tick_once_for_a_running_scheduler() -> None:
    s = _every(10)
    assert due(s, last=None, now=1005.0, since=995.0) == [1000.0]
    assert due(s, last=None, now=1005.0, since=990.0) == [990.0, 1000.0]
    assert due(s, last=1000.0, now=1009.0, since=990.0) == []
    assert due(s, last=1000.0, now=1010.0, since=990.0) == [1010.0]


def test_a_tick_before_the_scheduler_started_is_missed_not_due() -> None:
    assert due(_every(10), last=None, now=1005.0, since=1003.0) == []


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        (0, []),
        (1, [1090.0]),
        (3, [1070.0, 1080.0, 1090.0]),
        (50, [float(t) for t in range(1010, 1100, 10)]),
    ],
)
def test_missed_ticks_after_downtime_follow_catch_up(catch_up: int, expected: list[float]) -> None:
    # Last stored tick 1000; no scheduler from then until one started at 1095.
    assert due(_every(10, catch_up), last=1000.0, now=1095.0, since=1095.0) == expected
    # The next tick is on time, whatever the policy.
    assert due(_every(10, catch_up), last=1090.0, now=1100.0, since=1095.0) == [1100.0]


def test_a_scheduler_late_within_the_grace_enqueues_every_tick_it_was_running_for() -> None:
    s = _every(1)
    assert due(s, last=1000.0, now=1004.5, since=900.0) == [1001.0, 1002.0, 1003.0, 1004.0]


def test_ticks_older_than_the_grace_count_as_missed_even_for_a_running_scheduler() -> None:
    # A suspended machine: the scheduler "ran" but slept through two hours of ticks.
    s = _every(60, catch_up=1)
    now = 9960.0 + 7200
    expected = [now - 60, now]  # the newest missed one, then the current (on time) tick
    assert due(s, last=9960.0, now=now, since=0.0) == expected
    assert now - expected[0] > DEFAULT_LATE_S


# -- declaration ----------------------------------------------------------------------------


def _app() -> App:
    app = App("t", url="memory://")
    app.message("d.digest")(Digest)
    return app


def test_a_schedule_is_named_from_kind_and_timing_unless_named() -> None:
    app = _app()
    cron = app.periodic(Digest(), cron="0 7 * * mon-fri", tz="Europe/Paris")
    every = app.periodic(Digest(), every=timedelta(seconds=30))
    named = app.periodic(Digest(user="u2"), every=timedelta(seconds=30), name="u2-digest")
    assert cron.name == "d.digest@0 7 * * mon-fri Europe/Paris"
    assert every.name == "d.digest@every 30s"
    assert named.name == "u2-digest"
    assert sorted(app.schedules) == sorted([cron.name, every.name, "u2-digest"])
    assert cron.key(0.0) == "d.digest@0 7 * * mon-fri Europe/Paris@1970-01-01T00:00:00.000Z"


def test_a_zoneinfo_names_its_zone_and_intervals_keep_their_names() -> None:
    from zoneinfo import ZoneInfo

    app = _app()
    zoned = app.periodic(Digest(), cron="0 7 * * *", tz=ZoneInfo("Europe/Paris"))
    assert zoned.tz == "Europe/Paris" and zoned.name == "d.digest@0 7 * * * Europe/Paris"
    # An interval's name is `%g` of it, as in every release before (a name keys a schedule's
    # state: another name would double its ticks beside older workers), so two intervals it
    # rounds alike need a name= each.
    assert app.periodic(Digest(), every=timedelta(seconds=1234567)).name == (
        "d.digest@every 1.23457e+06s"
    )
    with pytest.raises(ConfigurationError, match=r"declared twice; give each a name=$"):
        app.periodic(Digest(user="u2"), every=timedelta(seconds=1234568))


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "must not be empty"),
        ("  ", "must not be empty"),
        (" x ", "white space around it"),
        ("x\n", "white space around it"),
        ("x" * 201, "longer than 200"),
    ],
)
def test_a_poor_schedule_name_is_warned_of_and_kept(
    name: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    # (refused, it would stop the workers of a deploy whose schedule ran under that name)
    schedule = _app().periodic(Digest(), every=timedelta(seconds=5), name=name)
    assert schedule.name == name
    (warned,) = [r for r in caplog.records if getattr(r, "action", "") == "schedule_name"]
    assert warned.levelname == "WARNING" and says in warned.getMessage()


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"cron": "0 7 * * *", "every": timedelta(seconds=5)}, "exactly one of"),
        ({}, "exactly one of"),
        ({"cron": "0 7 * *"}, "bad cron"),
        ({"cron": "61 * * * *"}, "bad cron"),
        ({"cron": "0 7 * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"every": timedelta(seconds=5), "tz": "Europe/Paris"}, "tz= applies to cron"),
        ({"every": timedelta(milliseconds=500)}, "at least 1 second"),
        ({"every": 5}, "must be a timedelta"),
        ({"every": timedelta(seconds=5), "catch_up": -1}, "catch_up must be 0 to 1000"),
        ({"every": timedelta(seconds=5), "catch_up": 1001}, "catch_up must be 0 to 1000"),
        ({"every": timedelta(seconds=5), "catch_up": True}, "catch_up must be an int"),
        ({"every": timedelta(seconds=5), "name": 7}, "must be a str"),
    ],
)
def test_a_bad_declaration_is_refused_with_the_reason(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        _app().periodic(Digest(), **kwargs)  # type: ignore[arg-type]


def test_a_duplicate_schedule_is_refused_and_asks_for_a_name() -> None:
    app = _app()
    app.periodic(Digest(), every=timedelta(seconds=30))
    with pytest.raises(ConfigurationError, match=r"declared twice; give each a name=$"):
        app.periodic(Digest(user="u2"), every=timedelta(seconds=30))
    app.periodic(Digest(user="u3"), every=timedelta(seconds=60), name="n")
    with pytest.raises(ConfigurationError, match="declared twice; give each a name= of its own"):
        app.periodic(Digest(user="u4"), cron="0 7 * * *", name="n")


def test_a_message_of_an_unknown_kind_is_refused() -> None:
    class Stranger(Message):
        pass

    with pytest.raises(ConfigurationError, match=r"Stranger is not a message kind.*@app\.message"):
        _app().periodic(Stranger(), every=timedelta(seconds=30))
    with pytest.raises(ConfigurationError, match="Message instance"):
        _app().periodic(Digest, every=timedelta(seconds=30))  # type: ignore[arg-type]


class Odd(Message):
    text: str = ""
    n: int = 0
    data: dict[str, Any] = {}


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (Odd(n=2**64), "a notes.odd message cannot be stored as JSON: Integer exceeds"),
        (Odd(text="a\x00b"), r"a notes.odd message holds a NUL character"),
        (Odd(data={"b": b"\x00"}), r"a notes.odd message holds a NUL character"),
    ],
)
def test_a_message_enqueue_would_refuse_is_refused_as_it_is_declared(
    message: Odd, says: str
) -> None:
    # (each worker would refuse it at each tick: the one refusal is now, with its name)
    app = _app()
    app.message("notes.odd")(Odd)
    said = f"periodic schedule 'notes.odd@every 30s': its message cannot be stored: {says}"
    with pytest.raises(ConfigurationError, match=said):
        app.periodic(message, every=timedelta(seconds=30))
    assert app.schedules == {}
    app.periodic(Odd(text="a\\u0000b"), every=timedelta(seconds=30))  # the six characters


# -- the scheduler on a fake clock ----------------------------------------------------------


@pytest.mark.anyio
async def test_the_scheduler_enqueues_each_due_tick_and_sleeps_until_the_next() -> None:
    clock = FakeClock(1_800_000_000.25)
    app = App("t", url="memory://", clock=clock)
    app.message("d.digest")(Digest)
    app.periodic(Digest(), every=timedelta(seconds=4), name="digest")
    async with app:
        scheduler = Scheduler(app, since=clock.now())
        assert await scheduler.fire_due() == 0  # its tick was before it started
        assert scheduler.sleep_s() == pytest.approx(3.75)
        clock.advance(3.75)
        assert await scheduler.fire_due() == 1
        assert await scheduler.fire_due() == 0
        (entry,) = await app.list_schedules()
        job = await app.get(entry["last_job_id"])
        assert job is not None and job.idempotency_key == f"digest@{iso(1_800_000_004.0)}"
        assert entry["last_run"] == iso(1_800_000_004.0)
        assert entry["next_run"] == iso(1_800_000_008.0)
        assert entry["last_job_state"] == "queued"
        assert (entry["every_s"], entry["cron"], entry["declared"]) == (4.0, None, True)


@pytest.mark.anyio
async def test_a_look_just_before_a_tick_does_not_leave_it_for_the_next() -> None:
    # A sleep wakes a little before the tick (timers and the wall clock disagree by a
    # fraction of a millisecond): the look finds nothing due, and by the time the next
    # sleep is worked out the clock has passed the tick.
    clock = FakeClock(1_800_000_000.5)
    app = App("t", url="memory://", clock=clock)
    app.message("d.digest")(Digest)
    app.periodic(Digest(), every=timedelta(seconds=5), name="digest")
    async with app:
        scheduler = Scheduler(app, since=clock.now())
        clock.advance(4.4996)
        assert await scheduler.fire_due() == 0  # the tick at +5 s is not due yet
        clock.advance(0.0008)  # past it now
        assert scheduler.sleep_s() == 0.0  # look again at once, not 5 s on
        assert await scheduler.fire_due() == 1
        assert scheduler.sleep_s() == pytest.approx(4.9996)


@pytest.mark.anyio
async def test_the_scheduler_looks_again_within_the_poll_for_a_far_tick() -> None:
    app = _app()
    app.periodic(Digest(), cron="0 0 1 1 *")
    scheduler = Scheduler(app, since=app.clock.now())
    assert 0 < scheduler.sleep_s() <= DEFAULT_SCHEDULER_POLL_S


def test_a_listing_says_since_when_no_scheduler_enqueued_a_schedules_ticks() -> None:
    from offload.contract import ScheduleState
    from offload.periodic import MISSED_AFTER_S, listing

    schedule = _every(30)
    last = _utc(2026, 12, 6, 9, 0, 0)
    state = ScheduleState(
        name=schedule.name, last_tick=last, last_job_id="j", fired_at=last, spec=schedule.spec()
    )

    def missed(now: float, declared: bool = True) -> str | None:
        found = {schedule.name: schedule} if declared else {}
        (entry,) = listing(found, [state], now)
        value: str | None = entry["missed_since"]
        return value

    # Kept: the next tick (09:00:30) is not yet a minute old, stored or declared alike,
    assert missed(last + 30 + MISSED_AFTER_S - 1) is None
    # then missed since that tick once it is (a retired schedule, or no worker running),
    assert missed(last + 30 + MISSED_AFTER_S + 1) == iso(last + 30)
    assert missed(last + 3600, declared=False) == iso(last + 30)
    # and a schedule never stored (declared here, no scheduler ran yet) says nothing.
    (fresh,) = listing({schedule.name: schedule}, [], last + 3600)
    assert fresh["missed_since"] is None


def test_a_listing_gives_no_next_run_to_a_missed_schedule_and_shows_a_live_workers_new_one() -> (
    None
):
    from offload.contract import ScheduleState
    from offload.periodic import MISSED_AFTER_S, listing

    schedule = _every(30)
    last = _utc(2026, 12, 6, 9, 0, 0)
    state = ScheduleState(
        name=schedule.name, last_tick=last, last_job_id="j", fired_at=last, spec=schedule.spec()
    )
    # A schedule missed (retired, or every worker down) has no next run: no scheduler runs it,
    (retired,) = listing({}, [state], last + 30 + MISSED_AFTER_S + 1)
    assert retired["missed_since"] == iso(last + 30) and retired["next_run"] is None
    # while one kept has its next tick.
    (kept,) = listing({}, [state], last + 31)
    assert kept["next_run"] == iso(last + 60) and kept["missed_since"] is None
    # A schedule a live worker declares and no scheduler stored yet (before its first tick)
    # is listed, never run, with its next run, whichever module this process imported.
    (new,) = listing({}, [], last + 1, live={"weekly": {**schedule.spec(), "every_s": 60.0}})
    assert (new["name"], new["declared"], new["every_s"]) == ("weekly", False, 60.0)
    assert new["next_run"] == iso(last + 60) and new["last_run"] is None
    assert new["missed_since"] is None
