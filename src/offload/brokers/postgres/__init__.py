"""PostgreSQL: broker and job store in one schema, woken by LISTEN/NOTIFY (needs psycopg)."""

from __future__ import annotations

from .backend import SCHEMA_VERSION, PostgresBackend

__all__ = ["SCHEMA_VERSION", "PostgresBackend"]
