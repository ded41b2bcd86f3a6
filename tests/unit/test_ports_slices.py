"""The test suite's own port picking (tests/ports.py): pytest-xdist workers pick from
disjoint slices, so a server one test starts never answers another test's requests."""

from __future__ import annotations

import pytest

from ..ports import _LOWEST, _ephemeral_start, free_ports, port_slice


def test_the_workers_slices_are_disjoint_and_inside_the_range() -> None:
    slices = [port_slice(f"gw{i}", 4, 20000, 32768) for i in range(4)]
    assert all(20000 <= start < end <= 32768 for start, end in slices)
    taken = [set(range(start, end)) for start, end in slices]
    assert all(not (a & b) for i, a in enumerate(taken) for b in taken[i + 1 :])
    assert min(len(t) for t in taken) == (32768 - 20000) // 4


def test_outside_xdist_the_whole_range_is_used() -> None:
    assert port_slice("", 1, 20000, 32768) == (20000, 32768)
    assert port_slice("master", 4, 20000, 32768) == (20000, 32768)


def test_a_worker_picks_blocks_inside_its_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    low, high = port_slice("gw2", 4, _LOWEST, max(_ephemeral_start(), _LOWEST + 1000))
    for _ in range(50):
        first = free_ports(3)
        assert low <= first and first + 3 <= high
