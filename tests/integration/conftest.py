"""Shared fixtures of the integration tests: a fresh PostgreSQL schema."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ..services import PgSchema, require_pg


@pytest.fixture
async def schema() -> AsyncIterator[PgSchema]:
    """A fresh schema, migrated, dropped after the test (a test file may define its own)."""
    require_pg()
    s = PgSchema()
    await s.create()
    yield s
    await s.drop()
