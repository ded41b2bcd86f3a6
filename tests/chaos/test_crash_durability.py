"""A 202 means durable on the engine: every enqueue acknowledged before a crash of
PostgreSQL (`pg_ctl stop -m immediate`, fsync on) or of Redis with `appendfsync always`
(SIGKILL) is there once the engine is back."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.chaos.durability import crash_under_load

from .engine_support import migrate, private_engine

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.mark.parametrize("kind", ["postgres", "redis-always"])
async def test_no_acknowledged_enqueue_is_lost_in_a_crash(kind: str, tmp_path: Path) -> None:
    with private_engine(kind, tmp_path) as engine:
        await migrate(engine.url)
        # Given enqueues from eight writers at once, when the engine crashes under them,
        acknowledged, missing = await crash_under_load(engine, writers=8, load_s=1.0)
        # then each one acknowledged before the crash is there after the restart.
        assert acknowledged > 0
        assert missing == 0
