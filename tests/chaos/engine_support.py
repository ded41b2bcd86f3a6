"""Private engines for the restart tests: which ones, how to make one ready for offload."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.chaos.engines import PrivatePostgres, PrivateRedis

from offload.brokers import open_backend

from ..services import unavailable

#: The restartable engines and settings the product must ride through a restart of.
RESTARTABLE = ["postgres", "redis-always"]
#: How each restart is done: a clean fast stop, or a crash.
HOW = [pytest.param(False, id="fast"), pytest.param(True, id="crash")]


def require_engine(kind: str) -> None:
    """Skip (fail in CI) when the server programs of `kind` are not installed."""
    if kind == "postgres" and not (shutil.which("pg_ctl") or shutil.which("pg_config")):
        unavailable("initdb/pg_ctl", "not installed")
    if kind.startswith("redis") and shutil.which("redis-server") is None:
        unavailable("redis-server", "not installed")


async def migrate(url: str) -> None:
    backend = open_backend(url)
    await backend.open(check_schema=False)
    try:
        await backend.migrate()
    finally:
        await backend.close()


@contextlib.contextmanager
def private_engine(kind: str, root: Path) -> Iterator[PrivatePostgres | PrivateRedis]:
    """A started private engine of `kind` (`postgres`, `redis-<appendfsync>`), closed
    (processes and folders gone) afterwards; `migrate` makes offload's schema in it."""
    require_engine(kind)
    engine: PrivatePostgres | PrivateRedis
    if kind == "postgres":
        engine = PrivatePostgres(root)
    else:
        engine = PrivateRedis(root, appendfsync=kind.removeprefix("redis-"))
    with engine:
        yield engine
