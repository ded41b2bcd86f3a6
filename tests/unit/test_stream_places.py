"""A web process's places for event streams (`Hub.admit`): each is given back by the
request that took it, and never taken from another."""

from __future__ import annotations

import pytest

from offload.web import events
from tests.clocks import HandClock, hand_clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> HandClock:
    return hand_clock(monkeypatch, events.time, 1000.0)


def test_a_place_given_back_after_its_time_takes_none_of_anothers(clock: HandClock) -> None:
    hub = events.Hub(None, lambda: 0)  # type: ignore[arg-type]  # (nothing read here)
    # Given a request admitted whose route took longer than its place is kept,
    slow = hub.admit(2)
    assert slow is not None
    clock.now += events.OPENING_S + 0.1
    # and two requests admitted since, as many as the limit,
    assert hub.admit(2) is not None and hub.admit(2) is not None
    # when the slow one gives its place back (its route failed, or answered 204),
    hub.release(slow)
    # then the others' places stand: no stream more than the limit is let in
    assert hub.admit(2) is None


def test_a_place_given_back_lets_the_next_request_in(clock: HandClock) -> None:
    hub = events.Hub(None, lambda: 0)  # type: ignore[arg-type]
    first, second = hub.admit(2), hub.admit(2)
    assert first is not None and second is not None and hub.admit(2) is None
    hub.release(first)
    hub.release(first)  # (twice: no more than once)
    assert hub.admit(2) is not None and hub.admit(2) is None


def test_a_stream_that_subscribes_takes_its_own_place_not_an_earlier_requests(
    clock: HandClock,
) -> None:
    # A subscription took the oldest place: the earlier request, answered 204 after, gave
    # back none (its place was gone), and the stream's own place stayed taken for
    # OPENING_S beside the stream, refusing a request the limit had room for.
    hub = events.Hub(None, lambda: 0)  # type: ignore[arg-type]
    earlier, later = hub.admit(3), hub.admit(3)
    assert earlier is not None and later is not None
    with hub.subscribe(job_id="j", place=later):
        hub.release(earlier)  # (answered 204: no stream)
        assert hub.streams == 1
        assert hub.admit(3) is not None and hub.admit(3) is not None  # room for two more
        assert hub.admit(3) is None
