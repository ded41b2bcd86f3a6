"""Message versions as pure logic: the upgrader chain, its gaps, and the live-versions cache."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pytest
from pydantic import Field

from offload import App, ConfigurationError, Context, Message, Settings
from offload.clock import FakeClock
from offload.errors import MissingUpgrader, UpgradeError
from offload.versions import LiveVersions, chain_problem, runnable_versions, upgrade
from offload.worker.runner import Worker


class V3(Message):
    first: str
    last: str


def split(payload: dict[str, Any]) -> dict[str, Any]:
    first, _, last = payload.pop("name").partition(" ")
    return {"first": first, "last": last}


def to_message(payload: dict[str, Any]) -> Message:
    return V3(**payload)


def nothing(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@pytest.mark.parametrize(
    ("current", "steps", "runnable"),
    [
        (1, {}, [1]),
        (3, {}, [3]),
        (3, {1: nothing, 2: nothing}, [1, 2, 3]),
        (3, {2: nothing}, [2, 3]),  # version 1 retired
        (4, {1: nothing, 3: nothing}, [3, 4]),  # a gap: 1 cannot reach 4
    ],
)
def test_a_worker_runs_its_version_and_those_its_upgraders_reach_it_from(
    current: int, steps: dict[int, Any], runnable: list[int]
) -> None:
    assert runnable_versions(current, steps) == runnable


def test_a_chain_with_a_gap_or_a_step_from_the_current_version_is_a_problem() -> None:
    assert chain_problem("k", 1, {}) is None
    assert chain_problem("k", 3, {1: nothing, 2: nothing}) is None
    assert chain_problem("k", 3, {2: nothing}) is None  # 1 retired, no gap
    gap = chain_problem("k", 4, {1: nothing, 3: nothing})
    assert gap is not None and "no upgrader from version 2" in gap
    assert "@app.upgrade('k', 2)" in gap
    late = chain_problem("k", 2, {1: nothing, 2: nothing})
    assert late is not None and "upgrader from version 2" in late and "version 3" in late


def test_upgrade_runs_each_step_on_a_copy_and_takes_dicts_or_messages() -> None:
    stored = {"name": "Ada Lovelace"}
    steps = {1: split, 2: to_message}
    assert upgrade("k", 1, stored, current=3, steps=steps) == {"first": "Ada", "last": "Lovelace"}
    assert stored == {"name": "Ada Lovelace"}  # the stored payload is left as it was
    assert upgrade("k", 2, {"first": "A", "last": "B"}, current=3, steps=steps) == {
        "first": "A",
        "last": "B",
    }
    assert upgrade("k", 3, {"x": 1}, current=3, steps={}) == {"x": 1}


class Aliased(Message):
    customer_name: Annotated[str, Field(alias="customer")]


def test_a_message_an_upgrader_returns_is_stored_by_its_aliases() -> None:
    # (as App.envelope stores a message, so that the worker reads it back)
    def to_aliased(payload: dict[str, Any]) -> Message:
        return Aliased(customer=payload["name"])

    assert upgrade("k", 1, {"name": "acme"}, current=2, steps={1: to_aliased}) == {
        "customer": "acme"
    }


def test_a_missing_step_names_it() -> None:
    with pytest.raises(MissingUpgrader) as info:
        upgrade("k", 1, {"name": "A B"}, current=3, steps={2: to_message})
    message = str(info.value)
    assert "stored at version 1" in message and "version 1 into 2" in message
    assert "@app.upgrade('k', 1)" in message
    assert isinstance(info.value, UpgradeError)


def test_an_upgrader_that_raises_or_returns_nonsense_is_an_upgrade_error() -> None:
    with pytest.raises(UpgradeError, match=r"from version 1 to 2 failed: KeyError") as info:
        upgrade("k", 1, {}, current=2, steps={1: split})
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(UpgradeError, match="returned a list"):
        upgrade("k", 1, {}, current=2, steps={1: lambda p: [p]})


def _app_with_steps(version: int, steps: list[int]) -> App:
    app = App("gaps", url="memory://", settings=Settings(url="memory://"))

    @app.message("k", version=version)
    class K(Message):
        pass

    @app.handles(K)
    async def handle(msg: K, ctx: Context) -> None:
        return None

    for step in steps:
        app.upgrade("k", step)(nothing)
    return app


def test_a_worker_refuses_to_start_when_a_handled_kinds_chain_has_a_gap() -> None:
    with pytest.raises(ConfigurationError, match="no upgrader from version 2"):
        Worker(_app_with_steps(4, [1, 3]))
    with pytest.raises(ConfigurationError, match="declare the message at version 4"):
        Worker(_app_with_steps(3, [2, 3]))
    assert Worker(_app_with_steps(3, [2])).kinds == {"k": [2, 3]}


def test_the_worker_version_setting_is_off_unless_set() -> None:
    assert Settings.from_env({}).require_worker_version is False
    on = Settings.from_env({"OFFLOAD_REQUIRE_WORKER_VERSION": "1"})
    assert on.require_worker_version is True


@pytest.mark.anyio
async def test_live_versions_are_read_once_per_ttl_and_shared() -> None:
    clock = FakeClock()
    cache = LiveVersions(ttl_s=2.0)
    reads: list[float] = []
    gate = asyncio.Event()

    async def read() -> dict[str, set[int]]:
        reads.append(clock.now())
        await gate.wait()
        return {"k": {len(reads)}}

    # Concurrent callers share one read
    callers = [asyncio.create_task(cache.get(clock.now, read)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert [await c for c in callers] == [{"k": {1}}] * 5
    # Within the TTL nothing is read again; past it, once more
    clock.advance(1.9)
    assert await cache.get(clock.now, read) == {"k": {1}}
    clock.advance(0.2)
    assert await cache.get(clock.now, read) == {"k": {2}}
    assert len(reads) == 2
