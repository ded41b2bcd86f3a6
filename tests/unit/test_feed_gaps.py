"""PostgreSQL's feed waits out each missing position on its own timer (`_before_gap`)."""

from __future__ import annotations

import pytest

from tests.clocks import HandClock, hand_clock

pytest.importorskip("psycopg")

from offload.brokers.postgres import backend as pg


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> HandClock:
    return hand_clock(monkeypatch, pg.time, 100.0)


def test_a_gap_that_opens_while_another_is_waited_out_gets_its_own_wait(clock: HandClock) -> None:
    feed = pg.PostgresBackend("postgresql://127.0.0.1/unused", gap_wait_s=2.0)
    # Given position 2 missing (3 committed first): the feed stops before it
    assert feed._before_gap(0, [1, 3]) == 1
    clock.now += 1.5
    # when 2 fills but 4 is now missing, 1.5 s after the first gap was met
    assert feed._before_gap(1, [2, 3, 5]) == 2
    clock.now += 1.0
    # then 4 is still waited for (2.5 s after the first gap, 1 s after its own)
    assert feed._before_gap(3, [5]) == 0
    clock.now += 1.1
    # and only once its own wait is over is it taken as rolled back
    assert feed._before_gap(3, [5]) == 1
    assert not feed._gaps


def test_a_rolled_back_position_is_passed_after_its_wait(clock: HandClock) -> None:
    feed = pg.PostgresBackend("postgresql://127.0.0.1/unused", gap_wait_s=2.0)
    assert feed._before_gap(0, [2, 3]) == 0
    clock.now += 1.9
    assert feed._before_gap(0, [2, 3]) == 0
    clock.now += 0.2
    assert feed._before_gap(0, [2, 3]) == 2
    assert not feed._gaps


def test_the_gaps_of_one_read_are_waited_out_together(clock: HandClock) -> None:
    feed = pg.PostgresBackend("postgresql://127.0.0.1/unused", gap_wait_s=2.0)
    # Given a read that meets three holes (deleted jobs' changes: 2, 4 and 6 never come)
    assert feed._before_gap(0, [1, 3, 5, 7]) == 1
    clock.now += 2.1
    # when the first hole's wait is over, the others' are too: the reader passes them all
    # (one wait a read, where each hole cost a wait of its own, one after another)
    assert feed._before_gap(1, [3, 5, 7]) == 3
    assert not feed._gaps


def test_a_gap_met_behind_another_waits_from_when_it_was_met(clock: HandClock) -> None:
    feed = pg.PostgresBackend("postgresql://127.0.0.1/unused", gap_wait_s=2.0)
    assert feed._before_gap(0, [1, 3]) == 1
    clock.now += 1.5
    # A hole first met 1.5 s after the first one (its position taken since) keeps its wait
    assert feed._before_gap(1, [3, 5]) == 0
    clock.now += 0.6
    assert feed._before_gap(1, [3, 5]) == 1
    clock.now += 1.5
    assert feed._before_gap(3, [5]) == 1


def test_a_gap_that_deleted_jobs_widened_since_it_was_met_waits_anew(clock: HandClock) -> None:
    feed = pg.PostgresBackend("postgresql://127.0.0.1/unused", gap_wait_s=2.0)
    # Given a read that met holes at 2 and at 4 (5 committed then),
    assert feed._before_gap(0, [1, 3, 5]) == 1
    clock.now += 2.1
    # when 5's job is deleted since, and 6 is taken by a change still to commit (7 is in),
    # then the hole 4 to 6 is waited for anew: 6 was never seen missing, and a change
    # committing there would be skipped (taken for the hole at 4, timed from before)
    assert feed._before_gap(1, [3, 7]) == 1
    clock.now += 2.1
    assert feed._before_gap(3, [7]) == 1
    assert not feed._gaps


def test_a_gap_that_jobs_deleted_since_widened_within_what_was_seen_waits_on(
    clock: HandClock,
) -> None:
    feed = pg.PostgresBackend("postgresql://127.0.0.1/unused", gap_wait_s=2.0)
    # Given a hole at 1 (rolled back), 2 to 4 read after it,
    assert feed._before_gap(0, [2, 3, 4]) == 0
    clock.now += 1.5
    # when the job whose change was at 2 is deleted (2 was seen committed: nothing comes
    # there), the hole 1 to 2 waits on from when 1 was met, not anew: deletes faster than
    # the wait would otherwise stop the feed's reader for as long as they go on
    assert feed._before_gap(0, [3, 4]) == 0
    clock.now += 0.6
    assert feed._before_gap(0, [3, 4]) == 2
