"""The contract suite's `backend` fixture: one param per backend, built by a named factory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from offload.brokers import Backend, open_backend

from ..services import (
    PgSchema,
    drop_redis_url,
    probe_pg,
    probe_redis,
    redis_prefix,
    redis_url,
)
from ._support import ShiftClock


@dataclass(frozen=True, slots=True)
class BackendParam:
    """How the contract suite reaches one backend.

    Args:
        url: a fresh, isolated backend URL for one test (a new file, database or key prefix).
        cross_process: other OS processes can open the same URL and see the same jobs.
        probe: for server-backed params, returns why the server is unusable (None = usable);
            probed once per session. Unusable means skip, or fail when
            OFFLOAD_REQUIRE_SERVICES=1 (CI).
        marks: pytest marks for the param, e.g. `pytest.mark.postgres`, so runs can filter.
    """

    url: Callable[[Path], str]
    cross_process: bool
    probe: Callable[[], str | None] | None = None
    marks: tuple[pytest.MarkDecorator, ...] = ()
    #: Removes what `url` made (a database schema), after the test.
    cleanup: Callable[[str], None] | None = None


_pg_schemas: dict[str, PgSchema] = {}


def _pg_url(tmp: Path) -> str:
    schema = PgSchema()
    url = schema.create_sync()
    _pg_schemas[url] = schema
    return url


def _pg_cleanup(url: str) -> None:
    _pg_schemas.pop(url).drop_sync()


#: Every backend the contract suite runs against. Adding PostgreSQL or Redis is one entry,
#: e.g. "postgres": BackendParam(url=fresh_pg_database, cross_process=True,
#: probe=probe_pg, marks=(pytest.mark.postgres,)).
BACKENDS: dict[str, BackendParam] = {
    # "sqlite:///" + an absolute path gives the four-slash absolute form.
    "sqlite": BackendParam(
        url=lambda tmp: "sqlite:///" + str(tmp / "offload.db"), cross_process=True
    ),
    # A private in-memory SQLite database: lives and dies with one backend object.
    "memory": BackendParam(url=lambda tmp: "memory://", cross_process=False),
    # A fresh schema per test (search_path), migrated, dropped afterwards.
    "postgres": BackendParam(
        url=_pg_url,
        cross_process=True,
        probe=probe_pg,
        marks=(pytest.mark.postgres,),
        cleanup=_pg_cleanup,
    ),
    # A fresh key prefix per test on the shared Redis; its keys are deleted afterwards.
    "redis": BackendParam(
        url=lambda tmp: redis_url(redis_prefix()),
        cross_process=True,
        probe=probe_redis,
        marks=(pytest.mark.redis,),
        cleanup=drop_redis_url,
    ),
}

_probed: dict[str, str | None] = {}


def _unusable(name: str, param: BackendParam) -> str | None:
    if param.probe is None:
        return None
    if name not in _probed:
        _probed[name] = param.probe()
    return _probed[name]


@pytest.fixture(params=[pytest.param(name, marks=p.marks, id=name) for name, p in BACKENDS.items()])
def backend_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    reason = _unusable(name, BACKENDS[name])
    if reason is not None:
        if os.environ.get("OFFLOAD_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{name} is required (OFFLOAD_REQUIRE_SERVICES=1): {reason}")
        pytest.skip(f"{name} unavailable: {reason}")
    return name


@pytest.fixture
def backend_param(backend_name: str) -> BackendParam:
    return BACKENDS[backend_name]


@pytest.fixture
def backend_url(backend_param: BackendParam, tmp_path: Path) -> Iterator[str]:
    url = backend_param.url(tmp_path)
    try:
        yield url
    finally:
        if backend_param.cleanup is not None:
            backend_param.cleanup(url)


@pytest.fixture
def clock() -> ShiftClock:
    """The backend's clock: real time that a test can move forward (`clock.advance`)."""
    return ShiftClock()


@pytest.fixture
async def backend(backend_url: str, clock: ShiftClock) -> AsyncIterator[Backend]:
    """An open backend (both Broker and JobStore), isolated to this test, on `clock`."""
    b = open_backend(backend_url, clock=clock)
    await b.open()
    try:
        yield b
    finally:
        await b.close()
