"""The dashboard's pure parts: CSRF tokens, the filter form, the chart and time formats."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from offload.web.dashboard.chart import Minute, _scale, throughput_svg
from offload.web.dashboard.csrf import csrf_token, csrf_valid
from offload.web.dashboard.filters import JobQuery
from offload.web.dashboard.site import age, clock
from offload.web.problems import Problem

KEY = b"k" * 32
NOW = 1_800_000_000.0


def test_a_csrf_token_is_the_operators_own_and_expires() -> None:
    token = csrf_token(KEY, "ops", NOW, ttl_s=60)
    assert csrf_valid(KEY, "ops", token, NOW + 59)
    assert not csrf_valid(KEY, "ops", token, NOW + 61)  # expired
    assert not csrf_valid(KEY, "bob", token, NOW)  # another operator's
    assert not csrf_valid(b"x" * 32, "ops", token, NOW)  # another key's
    expires, _, signature = token.partition(".")
    later = str(int(expires) + 3600)
    assert not csrf_valid(KEY, "ops", f"{later}.{signature}", NOW)  # a longer life forged
    for bad in ("", ".", "abc", f"{expires}.", f"x{expires}.{signature}", "9" * 13 + ".s"):
        assert not csrf_valid(KEY, "ops", bad, NOW), bad


@pytest.mark.parametrize(
    ("peak", "top"), [(0, 1), (1, 1), (2, 2), (3, 5), (5, 5), (6, 10), (11, 20), (501, 1000)]
)
def test_the_chart_scale_is_a_round_number_at_least_the_peak(peak: int, top: int) -> None:
    assert _scale(peak) == top


def test_the_chart_stacks_failures_on_successes_and_says_the_totals() -> None:
    minutes = [Minute(NOW + 60 * i, i, 1 if i == 3 else 0) for i in range(5)]
    minutes.append(Minute(NOW + 300, 0, 0, 2))
    svg = str(throughput_svg(minutes))
    assert 'aria-label="Jobs finished per minute: 10 succeeded, 1 failed, 2 dead"' in svg
    assert "0 succeeded, 0 failed, 2 dead</title>" in svg  # the dead drawn as failures are
    heights = [float(h) for h in re.findall(r'class="ok" [^>]*height="([\d.]+)"', svg)]
    assert heights == sorted(heights) and len(heights) == 4  # the idle minute draws nothing
    bad, _dead = re.findall(r'<rect class="bad" x="[\d.]+" y="([\d.]+)"', svg)
    ok_y = re.findall(r'<rect class="ok" x="[\d.]+" y="([\d.]+)"', svg)
    assert float(bad) < float(ok_y[2])  # the failure sits on top of that minute's successes
    assert "<title>" in svg and str(throughput_svg([])).startswith("<svg")


def test_the_filter_form_becomes_a_job_filter() -> None:
    query = JobQuery.of(
        {
            "state": "dead",
            "kind": " billing.invoice ",
            "created_after": "2027-01-15T08:00",
            "created_before": "2027-01-16",
            "text": "zebra",
            "cursor": "ignored",
        }
    )
    f = query.to_filter()
    assert f.state == "dead" and f.kind == "billing.invoice" and f.text == "zebra"
    assert f.created_after == datetime(2027, 1, 15, 8, 0, tzinfo=UTC)  # the form's times are UTC
    assert f.created_before == datetime(2027, 1, 16, tzinfo=UTC)
    assert f.queue is None and f.owner is None and f.id_prefix is None
    assert "cursor" not in query.query_string()
    assert query.query_string(action="retry").endswith("&action=retry")
    assert query.describe().startswith("state dead, kind billing.invoice")
    assert JobQuery.of({}).describe() == "every job" and JobQuery.of({}).empty


@pytest.mark.parametrize(
    "form",
    [
        {"state": "asleep"},
        {"created_after": "last week"},
        {"text": "x" * 201},
        {"owner": "o" * 256},
    ],
)
def test_a_filter_that_cannot_be_one_is_refused(form: dict[str, str]) -> None:
    with pytest.raises(Problem) as refused:
        JobQuery.of(form)
    assert refused.value.status == 422


def test_an_owner_as_long_as_one_may_be_is_a_filter() -> None:
    # (the filter took 200 characters, owners may have 255: the longest were unfindable)
    assert JobQuery.of({"owner": "o" * 255}).to_filter().owner == "o" * 255


def test_times_and_ages_read_at_a_glance() -> None:
    assert clock(NOW) == "2027-01-15 08:00:00"
    assert clock(datetime(2027, 1, 15, 8, 0, tzinfo=UTC)) == "2027-01-15 08:00:00"
    assert clock(None) == "–"
    assert [age(s) for s in (None, -1, 5, 600, 7200, 3 * 86400)] == [
        "–",
        "0 s",
        "5 s",
        "10 min",
        "2.0 h",
        "3.0 d",
    ]
