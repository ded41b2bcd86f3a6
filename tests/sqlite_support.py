"""Tests' own connections to SQLite files."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def sqlite_file(path: str | Path, **options: Any) -> Iterator[sqlite3.Connection]:
    """A connection to the SQLite file `path` for the block: its work committed at the end
    (rolled back on an error), and the connection closed. `with sqlite3.connect(...)` alone
    commits but leaves the connection open, for the garbage collector to close, which
    Python 3.13 warns of (an error under the suite's warning filters, in whatever test
    runs then)."""
    conn = sqlite3.connect(path, **options)
    try:
        with conn:
            yield conn
    finally:
        conn.close()
