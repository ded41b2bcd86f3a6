"""The scale-out benchmark's pure parts: the hosts' address plan, the ratios per doubling,
where an engine saturates, the table and the chart."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from bench.netns import MAX_IFNAME, plan
from bench.scaleout_report import (
    Point,
    machine_note,
    ratios,
    saturation,
    saturation_lines,
    table,
)
from PIL import Image

from offload.bench.chart import line_chart, nice_max


def test_plan_gives_each_host_its_own_private_pair_network() -> None:
    hosts = plan(8)
    assert [h.name for h in hosts] == [f"offso-{i}" for i in range(1, 9)]
    networks = {h.network for h in hosts}
    assert len(networks) == 8
    for h in hosts:
        net = ipaddress.IPv4Network(h.network)
        assert net.prefixlen == 30 and net.is_private
        assert net.subnet_of(ipaddress.IPv4Network("10.213.0.0/16"))
        assert {h.gateway, h.address} == {str(a) for a in net.hosts()}
        assert len(h.veth) <= MAX_IFNAME and len(h.peer) <= MAX_IFNAME
    assert hosts[0].argv(["true"]) == ["ip", "netns", "exec", "offso-1", "true"]


@pytest.mark.parametrize(
    ("count", "prefix", "base"),
    [
        (0, "offso", "10.213"),
        (255, "offso", "10.213"),
        (2, "a-much-too-long", "10.213"),
        (2, "bad name", "10.213"),
        (2, "", "10.213"),
        (2, "offso", "8.8"),
    ],
)
def test_plan_refuses_what_cannot_be_made_or_would_leave_the_machine(
    count: int, prefix: str, base: str
) -> None:
    with pytest.raises(ValueError):
        plan(count, prefix=prefix, base=base)


def test_ratio_per_doubling_compares_with_half_the_hosts() -> None:
    got = ratios({1: 100.0, 2: 190.0, 4: 200.0, 8: 210.0, 3: 50.0})
    assert got[1] is None and got[3] is None  # no half of them measured
    assert got[2] == pytest.approx(1.9)
    assert got[4] == pytest.approx(200 / 190)
    assert got[8] == pytest.approx(1.05)


def test_saturation_is_the_first_doubling_that_stopped_helping() -> None:
    sat = saturation({1: 100.0, 2: 190.0, 4: 200.0, 8: 180.0})
    assert (sat.hosts, sat.peak_rate, sat.peak_hosts) == (4, 200.0, 4)
    every = saturation({1: 100.0, 2: 200.0, 4: 390.0})
    assert every.hosts is None and every.peak_hosts == 4
    with pytest.raises(ValueError):
        saturation({})


def points() -> list[Point]:
    return [
        Point("postgres", "wait", 1, 4000, 10.0, worker_cpu_s=1.2, engine_cpu_s=2.0, load=3.5),
        Point("postgres", "wait", 2, 4000, 5.0, worker_cpu_s=1.2, engine_cpu_s=2.0),
        Point("postgres", "noop", 2, 4000, 2.0, worker_cpu_s=0.8, engine_cpu_s=1.6),
        Point("redis", "wait", 1, 4000, 10.0),
    ]


def test_table_has_one_row_per_drain_with_its_ratios_and_cpu() -> None:
    rows = table(points(), concurrency=8, wait_s=0.02)
    assert len(rows) == 2 + 3  # header, rule, the three drains (not the claim-only run)
    assert rows[2] == (
        "| postgres | 1 | 4,000 | 10.00 | 400 | – | 400 | 100% | 0.30 | 0.500 | 3.5 |"
    )
    assert rows[3].startswith("| postgres | 2 | 4,000 | 5.00 | 800 | 2.00x | 400 | 100% |")
    assert rows[4].startswith("| redis | 1 |")


def test_saturation_lines_give_the_claim_only_rate_and_the_one_core_limit() -> None:
    lines = saturation_lines(points())
    assert len(lines) == 2
    assert "every doubling up to 2 hosts helped" in lines[0]
    assert "2,000 claims/s" in lines[0]  # the claim-only run
    assert "0.400 ms of CPU per job" in lines[0] and "about 2,500 claims/s" in lines[0]
    assert Point("redis", "noop", 1, 10, 1.0).core_limit is None  # no CPU measured


def test_machine_note_says_busy_when_the_load_passed_the_cores() -> None:
    busy = machine_note(points(), cores=2)
    assert busy.startswith("**Run on a busy machine**") and "0.0 to 3.5 on 2 cores" in busy
    assert machine_note(points(), cores=4).startswith("Run on a quiet machine")


@pytest.mark.parametrize(
    ("value", "nice"), [(0.0, 1.0), (3.0, 5.0), (6400.0, 10000.0), (180.0, 200.0), (25, 25)]
)
def test_chart_axis_ends_on_a_round_figure(value: float, nice: float) -> None:
    assert nice_max(value) == pytest.approx(nice)


def test_line_chart_draws_every_series(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    line_chart(
        path,
        {"a": [(1, 10.0), (2, 20.0)], "ideal": [(1, 10.0), (2, float("nan"))]},
        title="t",
        x_label="hosts",
        y_label="jobs/s",
        x_ticks=[1.0, 2.0],
        dashed=["ideal"],
        size=(400, 300),
    )
    image = Image.open(path).convert("RGB")
    assert image.size == (400, 300)
    colours = {colour for _, colour in image.getcolors(maxcolors=100_000) or []}
    assert (214, 69, 65) in colours and (150, 150, 150) in colours
