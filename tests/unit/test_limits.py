"""Limits per kind, pure parts: the rate syntax, the allowance of a claim over a sliding
window of starts, the positions a claim takes, and the declaration in `App.handles`."""

from __future__ import annotations

import re

import pytest

from offload import App, Context, Message
from offload.contract import KindLimits
from offload.errors import ConfigurationError
from offload.limits import format_rate, gate, parse_rate, take


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [("100/m", (100, 60.0)), ("5/s", (5, 1.0)), ("2/h", (2, 3600.0)), (" 10 / 5s ", (10, 5.0))],
)
def test_a_rate_is_a_count_per_window(rate: str, parsed: tuple[int, float]) -> None:
    assert parse_rate(rate) == parsed


@pytest.mark.parametrize("rate", ["100", "100/min", "0/s", "1/0s", "-1/s", "x/m"])
def test_a_bad_rate_is_refused(rate: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_rate(rate)


def test_a_rate_shows_as_declared() -> None:
    lim = KindLimits(kind="k", queue="q", rate=100, per_s=60.0)
    assert format_rate(lim) == "100/m"
    assert format_rate(KindLimits(kind="k", queue="q", rate=3, per_s=5.0)) == "3/5s"
    assert format_rate(KindLimits(kind="k", queue="q", max_running=1)) is None


def test_the_allowance_is_the_tighter_of_both_limits() -> None:
    both = KindLimits(kind="k", queue="q", max_running=5, rate=10, per_s=60.0)
    g = gate([both], running={"k": 3}, starts={"k": (9, None)}, now=120.0)
    assert (g.allow, g.blocked, g.next_start_at) == ({"k": 1}, [], None)
    g = gate([both], running={"k": 5}, starts={}, now=120.0)
    assert (g.allow, g.blocked, g.next_start_at) == ({"k": 0}, ["k"], None)


def test_a_full_window_makes_the_next_start_due_when_its_oldest_counted_start_leaves() -> None:
    rated = KindLimits(kind="k", queue="q", rate=2, per_s=10.0)
    g = gate([rated], running={}, starts={"k": (2, 5.0)}, now=10.0)
    assert (g.allow, g.next_start_at) == ({"k": 0}, 15.0)
    g = gate([rated], running={}, starts={"k": (1, None)}, now=15.0)
    assert (g.allow, g.next_start_at) == ({"k": 1}, None)


def test_a_claim_takes_each_limited_kind_within_its_allowance() -> None:
    kinds = ["a", "b", "a", "c", "a", "b"]
    assert take({"a": 1, "b": 0}, kinds, 10) == [0, 3]
    assert take({"a": 2}, kinds, 3) == [0, 1, 2]


def test_handles_declares_the_limits_of_its_kind() -> None:
    app = App("t", url="memory://")

    @app.message("t.job", queue="work")
    class Job(Message):
        pass

    @app.handles(Job, max_running=3, rate="100/m")
    def run(msg: Job, ctx: Context) -> None:
        return None

    assert app.handlers["t.job"].limits() == KindLimits(
        kind="t.job", queue="work", max_running=3, rate=100, per_s=60.0
    )


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"max_running": 0}, "whole number of at least 1, not 0"),
        ({"max_running": "2"}, "whole number of at least 1, not '2'"),
        ({"max_running": True}, "whole number of at least 1, not True"),
        ({"max_running": 2.5}, "whole number of at least 1, not 2.5"),
        ({"rate": "often"}, "not of the form"),
        ({"rate": 5}, "must be a string such as '100/m', not 5"),
        ({"rate": "0/m"}, "the count starts at 1"),
        ({"rate": "5/0s"}, "a window of 0 seconds"),
    ],
)
def test_handles_refuses_a_bad_limit_saying_why(bad: dict[str, object], says: str) -> None:
    app = App("t", url="memory://")

    @app.message("t.job")
    class Job(Message):
        pass

    with pytest.raises(ConfigurationError, match=re.escape(says)):
        app.handles(Job, **bad)  # type: ignore[arg-type]
