"""SQLite: broker and job store on one database file (or a private in-memory database)."""

from __future__ import annotations

from .backend import SCHEMA_VERSION, SQLiteBackend

__all__ = ["SCHEMA_VERSION", "SQLiteBackend"]
