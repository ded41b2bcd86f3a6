"""A second connection, on a thread of its own, for the reads a web page waits on."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Reader:
    """Status reads (a job, a page of jobs, the change feed) on their own connection and
    thread. In WAL mode a reader never waits for the writer, so these reads no longer queue
    behind the writes (a burst of enqueues, a worker's acks) that hold the backend's one
    thread: a web page that shows jobs answers while a burst is being stored.

    Args:
        connect: opens the connection (on the reader's thread); it is made read-only here.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    def _open(self) -> None:
        conn = self._connect()
        conn.execute("PRAGMA query_only=ON")
        self._conn = conn

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="offload-sqlite-read")
        try:
            await self.run_plain(self._open)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    async def run_plain(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)` on the reader's thread (sqlite3 errors propagate)."""
        assert self._conn is not None
        return await self.run_plain(fn, self._conn, *args)
