"""SQLite file upgrades: a file written by an older offload opens, migrated, with its feed."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import orjson
import pytest

from offload.brokers.sqlite import SCHEMA_VERSION, SQLiteBackend
from offload.contract import JobState, Outcome, status_record
from offload.errors import BackendError

from ..contract._support import claim, envelope

pytestmark = pytest.mark.anyio


async def test_a_schema_1_file_is_migrated_and_its_feed_reads_the_same(tmp_path: Path) -> None:
    # Given a file whose feed entries hold whole status records, as schema 1 wrote them
    path = tmp_path / "old.db"
    backend = SQLiteBackend(str(path))
    await backend.open()
    done, waiting = envelope(owner="alice"), envelope(owner="bob")
    await backend.enqueue([done, waiting])
    (lease,) = await claim(backend, limit=1)
    await backend.progress(lease, 0.5, "half")
    await backend.settle([Outcome(lease=lease, state=JobState.SUCCEEDED, result={"n": 1})])
    before = [(c.seq, c.owner, status_record(c.row)) for c in await backend.changes_since(0)]
    await backend.close()
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "UPDATE offload_events SET record = ? WHERE seq = ?",
            [(orjson.dumps(record).decode(), seq) for seq, _, record in before],
        )
        conn.execute("UPDATE offload_meta SET value = '1' WHERE key = 'schema_version'")
    # When this offload opens it
    backend = SQLiteBackend(str(path))
    await backend.open()
    try:
        # Then every entry reads as the same record, the jobs as they were, and new
        # entries follow on
        after = [(c.seq, c.owner, status_record(c.row)) for c in await backend.changes_since(0)]
        assert after == before and len(after) == 5
        await backend.cancel(waiting.id)
        (last,) = await backend.changes_since(before[-1][0])
        assert last.row.state is JobState.CANCELLED and last.owner == "bob"
    finally:
        await backend.close()
    with sqlite3.connect(path) as conn:
        (version,) = conn.execute(
            "SELECT value FROM offload_meta WHERE key = 'schema_version'"
        ).fetchone()
        (entry,) = conn.execute("SELECT record FROM offload_events WHERE seq = 1").fetchone()
    assert int(version) == SCHEMA_VERSION == 2
    assert "links" not in orjson.loads(entry)  # stored as fields now


async def test_a_file_from_a_newer_offload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    backend = SQLiteBackend(str(path))
    await backend.open()
    await backend.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE offload_meta SET value = '99' WHERE key = 'schema_version'")
    from offload.errors import SchemaError

    with pytest.raises(SchemaError, match="schema version 99"):
        await SQLiteBackend(str(path)).open()


async def test_without_create_a_missing_file_is_an_error_and_stays_missing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "not" / "yet" / "jobs.db"
    backend = SQLiteBackend(str(path))
    with pytest.raises(BackendError, match="offload migrate") as info:
        await backend.open(create=False)
    assert f"sqlite:///{path}" in str(info.value)
    assert not (tmp_path / "not").exists()
    await backend.open()  # the default creates the folder and the file
    await backend.close()
    assert path.is_file()


async def test_without_create_a_foreign_file_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    before = path.read_bytes()
    with pytest.raises(BackendError, match="not an offload database"):
        await SQLiteBackend(str(path)).open(create=False)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["notes.db"]  # no -wal or -shm file either


async def test_a_file_from_before_the_workers_table_gains_it_on_open_at_the_same_version(
    tmp_path: Path,
) -> None:
    # Given a schema 2 file written before the workers table and the newer-version index
    path = tmp_path / "before.db"
    backend = SQLiteBackend(str(path))
    await backend.open()
    env = envelope()
    await backend.enqueue([env])
    await backend.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE offload_workers")
        conn.execute("DROP INDEX offload_jobs_newer")
    # When this offload opens it
    backend = SQLiteBackend(str(path))
    await backend.open()
    try:
        # Then workers record, stats count, and its jobs are as they were
        await backend.record_worker("w1", {"test.job": [1]})
        assert await backend.live_versions(within_s=30) == {"test.job": {1}}
        assert (await backend.stats())["q"]["awaiting_newer_worker"] == 0
        assert [lease.job_id for lease in await claim(backend)] == [env.id]
    finally:
        await backend.close()
    # And its version is still 2, so an offload from before the table opens it too (the
    # table and the index are additions it never reads)
    with sqlite3.connect(path) as conn:
        (version,) = conn.execute(
            "SELECT value FROM offload_meta WHERE key = 'schema_version'"
        ).fetchone()
    assert int(version) == SCHEMA_VERSION == 2
