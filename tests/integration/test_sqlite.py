"""SQLite file upgrades: a file written by an older offload opens, migrated, with its feed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from offload._group import DEFAULT_GROUP_MAX_JOBS
from offload.brokers.sqlite import SCHEMA_VERSION, SQLiteBackend
from offload.brokers.sqlite import backend as backend_module
from offload.contract import JobState, Lapsed, Outcome, status_record
from offload.errors import BackendError, ConfigurationError, StorageFull
from offload.worker.rescue import decide_all

from ..contract._support import Policy, claim, envelope, status, worker_info
from ..sqlite_support import sqlite_file

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
    with sqlite_file(path) as conn:
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
    with sqlite_file(path) as conn:
        (version,) = conn.execute(
            "SELECT value FROM offload_meta WHERE key = 'schema_version'"
        ).fetchone()
        (entry,) = conn.execute("SELECT record FROM offload_events WHERE seq = 1").fetchone()
    assert int(version) == SCHEMA_VERSION == 5
    assert "links" not in orjson.loads(entry)  # stored as fields now


async def test_a_file_from_a_newer_offload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    backend = SQLiteBackend(str(path))
    await backend.open()
    await backend.close()
    with sqlite_file(path) as conn:
        conn.execute("UPDATE offload_meta SET value = '99' WHERE key = 'schema_version'")
    from offload.errors import SchemaError

    with pytest.raises(SchemaError, match=r"schema version 99, newer .*: upgrade offload"):
        await SQLiteBackend(str(path)).open()
    with pytest.raises(SchemaError, match="schema version 99"):
        await SQLiteBackend(str(path)).open(create=False)


async def test_a_folder_that_cannot_be_made_is_said_in_one_line(tmp_path: Path) -> None:
    # A path under a file (or a folder this process may not write) cannot be made
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "a-file" / "sub" / "jobs.db"
    with pytest.raises(ConfigurationError, match=r"cannot create .*a-file/sub, the folder of"):
        await SQLiteBackend(str(path)).open()
    assert not (tmp_path / "a-file").is_dir()


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
    with sqlite_file(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    before = path.read_bytes()
    with pytest.raises(BackendError, match="not an offload database"):
        await SQLiteBackend(str(path)).open(create=False)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["notes.db"]  # no -wal or -shm file either


def _as_schema_2(path: Path, *, workers_table: bool = True) -> None:
    """Turn a file this code wrote into one as schema 2 left it: no paused queues, no
    registry entries (and, without `workers_table`, no workers table nor newer-version
    index either, as early schema 2 files have)."""
    with sqlite_file(path) as conn:
        conn.execute("DROP TABLE offload_paused")
        conn.execute("DROP TABLE offload_workers")
        if workers_table:
            conn.execute(
                "CREATE TABLE offload_workers (id TEXT PRIMARY KEY, kinds TEXT NOT NULL, "
                "seen_at REAL NOT NULL)"
            )
        else:
            conn.execute("DROP INDEX offload_jobs_newer")
        conn.execute("UPDATE offload_meta SET value = '2' WHERE key = 'schema_version'")


def _version(path: Path) -> int:
    with sqlite_file(path) as conn:
        (version,) = conn.execute(
            "SELECT value FROM offload_meta WHERE key = 'schema_version'"
        ).fetchone()
    return int(version)


async def test_a_file_from_before_the_workers_table_gains_it_on_open(tmp_path: Path) -> None:
    # Given a schema 2 file written before the workers table and the newer-version index
    path = tmp_path / "before.db"
    backend = SQLiteBackend(str(path))
    await backend.open()
    env = envelope()
    await backend.enqueue([env])
    await backend.close()
    _as_schema_2(path, workers_table=False)
    # When this offload opens it
    backend = SQLiteBackend(str(path))
    await backend.open()
    try:
        # Then workers record, stats count, and its jobs are as they were
        await backend.record_worker(worker_info("w1", {"test.job": [1]}))
        assert await backend.live_versions(within_s=30) == {"test.job": {1}}
        assert [w.id for w in await backend.workers(lost_after_s=30)] == ["w1"]
        assert (await backend.stats())["q"]["awaiting_newer_worker"] == 0
        assert [lease.job_id for lease in await claim(backend)] == [env.id]
    finally:
        await backend.close()
    assert _version(path) == SCHEMA_VERSION == 5


async def test_a_schema_2_file_is_migrated_to_3_with_its_workers_and_jobs(tmp_path: Path) -> None:
    # Given a schema 2 file with a waiting job and a worker's entry as schema 2 recorded it
    path = tmp_path / "two.db"
    backend = SQLiteBackend(str(path))
    await backend.open()
    env = envelope()
    await backend.enqueue([env])
    await backend.close()
    _as_schema_2(path)
    with sqlite_file(path) as conn:
        conn.execute(
            "INSERT INTO offload_workers VALUES ('old', ?, ?)",
            (orjson.dumps({"test.job": [1]}).decode(), time.time()),
        )
    # When this offload opens it
    backend = SQLiteBackend(str(path))
    await backend.open()
    try:
        # Then it is at schema 5 (3, unique keys, then 5): the old entry still counts for the
        # version check, but has no registry entry to show; queues pause and resume; the job
        # is claimed as before
        assert _version(path) == 5
        assert await backend.live_versions(within_s=30) == {"test.job": {1}}
        assert await backend.workers(lost_after_s=30) == []
        await backend.record_worker(worker_info("new", {"test.job": [2]}))
        assert [w.id for w in await backend.workers(lost_after_s=30)] == ["new"]
        assert await backend.pause("q") is True
        assert await claim(backend) == []
        assert await backend.resume("q") is True
        assert [lease.job_id for lease in await claim(backend)] == [env.id]
    finally:
        await backend.close()
    # And opening it again changes nothing
    backend = SQLiteBackend(str(path))
    await backend.open()
    await backend.close()
    assert _version(path) == 5


async def test_a_file_without_the_schedules_table_gains_it_on_open_at_the_same_version(
    tmp_path: Path,
) -> None:
    # Given a file from before periodic schedules (no offload_schedules table)
    path = tmp_path / "three.db"
    backend = SQLiteBackend(str(path))
    await backend.open()
    await backend.close()
    with sqlite_file(path) as conn:
        conn.execute("DROP TABLE offload_schedules")
    # When this offload opens it, a schedule fires and is read back
    backend = SQLiteBackend(str(path))
    await backend.open()
    try:
        env = envelope(key="s@1")
        (result,) = await backend.fire_schedule("s", spec={"every_s": 1.0}, fires=[(1.0, env)])
        assert result is not None and result.created
        (state,) = await backend.schedule_states()
        assert (state.name, state.last_tick, state.last_job_id) == ("s", 1.0, env.id)
    finally:
        await backend.close()
    # Then the file keeps its version: older offload (which ignores the table) opens it
    assert _version(path) == SCHEMA_VERSION == 5


async def test_a_schema_3_file_is_migrated_to_4_and_its_jobs_hold_no_unique_key(
    tmp_path: Path,
) -> None:
    # Given a schema 3 file (no unique keys) with a waiting job
    path = tmp_path / "three.db"
    backend = SQLiteBackend(str(path))
    await backend.open()
    old = envelope()
    await backend.enqueue([old])
    await backend.close()
    with sqlite_file(path) as conn:
        conn.execute("DROP INDEX offload_jobs_unique")
        conn.execute("ALTER TABLE offload_jobs DROP COLUMN unique_key")
        conn.execute("ALTER TABLE offload_jobs DROP COLUMN unique_mode")
        conn.execute("UPDATE offload_meta SET value = '3' WHERE key = 'schema_version'")
    # When this offload opens it
    backend = SQLiteBackend(str(path))
    await backend.open()
    try:
        # Then it is at schema 5, the old job waits as it did, and unique keys hold
        assert _version(path) == SCHEMA_VERSION == 5
        first = dataclasses.replace(envelope(), unique_key="k", unique="queued")
        second = dataclasses.replace(envelope(), unique_key="k", unique="queued")
        results = await backend.enqueue([first, second])
        assert [(r.id, r.created) for r in results] == [(first.id, True), (first.id, False)]
        assert [lease.job_id for lease in await claim(backend)] == [old.id, first.id]
    finally:
        await backend.close()


async def test_the_indexes_an_enqueue_no_longer_writes_go_on_open(tmp_path: Path) -> None:
    # Given a file made by an offload that kept (enqueued_at, id) and (kind, id) indexes
    path = tmp_path / "older.db"
    backend = SQLiteBackend(str(path))
    await backend.open()
    await backend.close()
    with sqlite_file(path) as conn:
        conn.execute("CREATE INDEX offload_jobs_created ON offload_jobs (enqueued_at, id)")
        conn.execute("CREATE INDEX offload_jobs_kind_id ON offload_jobs (kind, id)")
        conn.execute("UPDATE offload_meta SET value = '4' WHERE key = 'schema_version'")
    # When this offload opens it
    await backend.open()
    await backend.close()
    # Then they are gone, the index a kind's page reads instead is there, and the file is at
    # schema 5: an older offload (which would make the two again) refuses it
    with sqlite_file(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert not names & {"offload_jobs_created", "offload_jobs_kind_id"}
    assert "offload_jobs_state_kind_id" in names
    assert _version(path) == SCHEMA_VERSION == 5


async def test_an_older_file_is_left_as_it_is_by_what_only_inspects(tmp_path: Path) -> None:
    from offload.errors import SchemaError

    # Given a schema 4 file (an older offload's, which refuses schema 5)
    path = tmp_path / "four.db"
    backend = SQLiteBackend(str(path))
    await backend.open()
    await backend.close()
    with sqlite_file(path) as conn:
        conn.execute("UPDATE offload_meta SET value = '4' WHERE key = 'schema_version'")
        conn.execute("CREATE INDEX offload_jobs_created ON offload_jobs (enqueued_at, id)")
    # When an inspecting command's open (create=False) reads it, it is refused, saying
    # what upgrades it, and left at schema 4: the older offload can still open it
    inspecting = SQLiteBackend(str(path))
    with pytest.raises(SchemaError, match=r"version 4, older .* run `offload migrate`"):
        await inspecting.open(create=False)
    assert _version(path) == 4
    # and `offload migrate`'s open upgrades it, and says to which version
    migrating = SQLiteBackend(str(path))
    await migrating.open(check_schema=False)
    try:
        assert await migrating.migrate() == [5] and _version(path) == 5
    finally:
        await migrating.close()
    again = SQLiteBackend(str(path))
    await again.open(create=False)
    try:
        assert await again.migrate() == []
    finally:
        await again.close()


async def test_a_feed_entry_made_from_what_was_written_reads_as_the_row(
    tmp_path: Path,
) -> None:
    backend = SQLiteBackend(str(tmp_path / "feed.db"))
    await backend.open()

    async def record(job_id: str) -> dict[str, Any]:
        row = await backend.get(job_id)
        assert row is not None
        return status_record(row)

    try:
        # Given jobs stored one at a time and in a batch (entries made from the envelopes)
        one = dataclasses.replace(envelope("qa", delay=60), priority=3, owner="carol")
        batch = [envelope("qb"), envelope("qc")]
        await backend.enqueue([one])
        await backend.enqueue(batch)
        stored = await backend.changes_since(0)
        rows = [await record(e.id) for e in (one, *batch)]
        # and one claimed (made from the row the claim returned), then its progress (the
        # trigger's entry, read back in SQL)
        (lease,) = await claim(backend, "qb")
        running = await record(lease.job_id)
        await backend.progress(lease, 0.5, "half")
        progressed = await record(lease.job_id)
        # Then each entry is the status record of the row as it was then, and its owner's
        assert [c.job_id for c in stored] == [one.id, batch[0].id, batch[1].id]
        assert [status_record(c.row) for c in stored] == rows
        assert [c.owner for c in stored] == ["carol", batch[0].owner, batch[1].owner]
        later = await backend.changes_since(stored[-1].seq)
        assert [c.job_id for c in later] == [lease.job_id, lease.job_id]
        assert [status_record(c.row) for c in later] == [running, progressed]
        assert running["state"] == "running" and running["worker"] == "w1"
    finally:
        await backend.close()


async def test_a_prune_reads_on_from_where_its_last_chunk_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each chunk read the finished jobs' index from its start, past every old dead job
    # (kept for good) again: 40 s against 9 s for 200,000 jobs behind 100,000 dead ones
    from offload.brokers.sqlite import backend as module

    monkeypatch.setattr(module, "CHUNK_ROWS", 4)
    backend = SQLiteBackend(str(tmp_path / "history.db"))
    await backend.open()
    try:
        jobs = [envelope("history") for _ in range(20)]
        await backend.enqueue(jobs)
        with sqlite_file(tmp_path / "history.db") as conn:
            conn.executemany(  # dead ones first and among the rest, times tied in pairs
                "UPDATE offload_jobs SET state = ?, finished_at = ? WHERE id = ?",
                [
                    ("dead" if i < 4 or i % 5 == 0 else "succeeded", 1 + i // 2, job.id)
                    for i, job in enumerate(jobs)
                ],
            )
        # When it prunes, 4 a chunk, its statements seen as SQLite runs them
        said: list[str] = []
        backend.conn.set_trace_callback(said.append)
        assert await backend.prune(3600) == 13
        backend.conn.set_trace_callback(None)
        # Then each chunk read on from where the one before stopped (the times go up, and
        # the dead ones before that time were not read again), and only the dead are left
        starts = [
            float(m.group(1))
            for m in (re.search(r"finished_at >= (\S+) AND", text) for text in said)
            if m is not None
        ]
        assert starts == sorted(starts) and starts[0] < 0 and starts[-1] >= 7, starts
        left = await backend.list_jobs(owner=None, limit=50)
        assert sorted(r.state for r in left) == ["dead"] * 7
    finally:
        await backend.close()


async def test_long_writes_go_in_chunks_and_miss_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given chunks of 7 rows, and more jobs than four chunks hold in each state
    from offload.brokers.sqlite import backend as module

    monkeypatch.setattr(module, "CHUNK_ROWS", 7)
    backend = SQLiteBackend(str(tmp_path / "chunks.db"))
    await backend.open()
    try:
        waiting = [envelope("purged") for _ in range(30)]
        ended = [envelope("ended") for _ in range(31)]
        await backend.enqueue([*waiting, *ended])
        ids = [e.id for e in ended]
        with sqlite_file(tmp_path / "chunks.db") as conn:
            conn.executemany(
                "UPDATE offload_jobs SET state = ?, finished_at = 1 WHERE id = ?",
                [("dead" if i < 12 else "succeeded", job_id) for i, job_id in enumerate(ids)],
            )
        # When each long write runs, chunk by chunk
        purged = await backend.purge("purged")
        requeued = await backend.requeue_many(ids)  # the 12 dead ones
        cancelled = await backend.cancel_many(ids[:12], {})
        with sqlite_file(tmp_path / "chunks.db") as conn:
            conn.execute("UPDATE offload_jobs SET finished_at = 1")
        pruned = await backend.prune(3600)  # the 19 succeeded and the 12 cancelled
        # Then every row was reached, none twice
        assert (purged, requeued, cancelled, pruned) == (30, 12, 12, 31)
        assert await backend.stats() == {}
        assert await backend.delete_many(ids) == 0
    finally:
        await backend.close()


async def _lapsed(rescuer: SQLiteBackend) -> list[Lapsed]:
    """The lapsed leases `rescuer` reads, once there are any (reads go on through a stall)."""
    lapsed: list[Lapsed] = []
    deadline = time.monotonic() + 30
    while not lapsed and time.monotonic() < deadline:
        lapsed = await rescuer.expired(limit=10)
    return lapsed


async def _limit_pages(backend: SQLiteBackend, pages: int | None) -> None:
    """Let `backend`'s connection grow the file to `pages` pages at most (None: its size
    now): a full disk to that connection alone."""

    def run() -> None:
        n = pages or backend.conn.execute("PRAGMA page_count").fetchone()[0]
        backend.conn.execute(f"PRAGMA max_page_count = {n}")

    await backend._run(run)


@contextlib.asynccontextmanager
async def _two(path: str) -> AsyncIterator[tuple[SQLiteBackend, SQLiteBackend]]:
    """Two backends on one file, as two processes hold it: open, and closed at the end."""
    first, second = SQLiteBackend(path), SQLiteBackend(path)
    await first.open()
    try:
        await second.open()
        try:
            yield first, second
        finally:
            await second.close()
    finally:
        await first.close()


def _lease_end(path: str) -> float:
    """When the one job's lease in the file at `path` ends (read without a lock)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return float(conn.execute("SELECT lease_expires FROM offload_jobs").fetchone()[0])


async def test_a_rescue_that_waited_out_a_held_lock_pays_the_stall_first(tmp_path: Path) -> None:
    # Given a job leased for 0.6 s by one process, and another process's rescuer
    path = str(tmp_path / "stall.db")
    async with _two(path) as (holder, rescuer):
        env = envelope()
        await holder.enqueue([env])
        (lease,) = await claim(holder, lease_for=0.6)
        # when a third program holds the write lock past the lease, the rescuer sees the lease
        # lapse meanwhile (reads go on) and asks to rescue it,
        locked, release = threading.Event(), threading.Event()

        def hold() -> None:
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(30)
            conn.execute("ROLLBACK")
            conn.close()

        thread = threading.Thread(target=hold)
        thread.start()
        assert locked.wait(10)
        lapsed = await _lapsed(rescuer)
        assert [lapse.lease.job_id for lapse in lapsed] == [env.id]
        decisions = decide_all(lapsed, lambda kind: Policy(), time.time())
        applying = asyncio.ensure_future(rescuer.rescue(decisions))
        await asyncio.sleep(1.0)  # the stall goes on a while past the lapse: the fault itself
        release.set()
        # then, the lock free again, the rescue finds the lease live (it got the wait back)
        assert await applying == [False]
        thread.join()
        (answer,) = await holder.extend([lease], lease_for=0.6)
        assert answer.held and (await status(holder, env.id))["state"] == "running"


async def test_a_stall_longer_than_the_busy_timeout_is_paid_from_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lock held past the busy timeout (a minute) failed the writes waiting for it; the
    # write tried again after it paid only its own last seconds, and a rescuer then ran
    # again jobs whose holders could not heartbeat (16 of 32 in a trial's 70 s lock)
    monkeypatch.setattr(backend_module, "DEFAULT_BUSY_TIMEOUT_S", 0.3)
    path = str(tmp_path / "long-stall.db")
    async with _two(path) as (holder, rescuer):
        # Given a job leased for 0.6 s by one process,
        env = envelope()
        await holder.enqueue([env])
        (lease,) = await claim(holder, lease_for=0.6)
        with write_lock_held(path):
            # when another program holds the write lock past the lease, and the rescuer's
            # process gave up a write for want of it (its heartbeat, say),
            with pytest.raises(BackendError, match="locked"):
                await rescuer.record_worker(worker_info("r"))
            lapsed = await _lapsed(rescuer)
            assert [lapse.lease.job_id for lapse in lapsed] == [env.id]
        # then, the lock free again, its rescue (which waited for nothing itself) pays the
        # stall from where its process began waiting: the lease is live, nothing applied
        decisions = decide_all(lapsed, lambda kind: Policy(), time.time())
        assert await rescuer.rescue(decisions) == [False]
        (answer,) = await holder.extend([lease], lease_for=0.6)
        assert answer.held and (await status(holder, env.id))["state"] == "running"


async def test_a_file_this_process_may_only_read_is_refused_as_it_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker on a read-only file started, then failed every claim for ever, and a web
    # tier answered ready and a 503 to each request
    path = tmp_path / "data" / "jobs.db"
    with caplog.at_level("INFO", logger="offload.sqlite"):
        backend = SQLiteBackend(str(path))
        await backend.open()  # (made, and said so: a volume that did not mount is seen)
    assert any(getattr(r, "action", "") == "sqlite_created" for r in caplog.records)
    try:
        # (a connection SQLite opened read-only answers writes as one that may not write)
        def check() -> None:
            backend.conn.execute("PRAGMA query_only = 1")
            try:
                backend._writable(backend.conn)
            finally:
                backend.conn.execute("PRAGMA query_only = 0")

        with pytest.raises(ConfigurationError, match=r"jobs\.db is read-only to this process"):
            await backend._run(check)
    finally:
        await backend.close()


async def test_a_write_tried_again_only_much_later_pays_no_old_stall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process whose write gave up for want of the lock, and which wrote next long after
    # (a web tier's next enqueue), did not wait meanwhile: it must not add that time to the
    # leases (a dead worker's job would be rescued that much later)
    monkeypatch.setattr(backend_module, "DEFAULT_BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(backend_module, "STALL_CARRY_S", 0.3)
    path = str(tmp_path / "stale.db")
    async with _two(path) as (holder, other):
        await holder.enqueue([envelope()])
        await claim(holder, lease_for=30.0)

        before = _lease_end(path)
        with write_lock_held(path), pytest.raises(BackendError, match="locked"):
            await other.record_worker(worker_info("o"))
        await asyncio.sleep(0.5)  # past STALL_CARRY_S, the lock free all along
        await other.record_worker(worker_info("o"))
        assert _lease_end(path) == before


async def test_a_write_refused_for_room_while_others_wrote_pays_no_stall(
    tmp_path: Path,
) -> None:
    # A web tier's big enqueue refused for want of room, while workers' small heartbeats
    # still fitted, is no stall: its next write added the time since to every lease
    path = str(tmp_path / "big.db")
    async with _two(path) as (holder, web):
        await holder.enqueue([envelope()])
        (lease,) = await claim(holder, lease_for=30.0)
        await _limit_pages(web, None)
        with pytest.raises(StorageFull):
            await web.enqueue([envelope(payload={"x": "y" * 200_000})])
        await _limit_pages(web, 1 << 30)
        await asyncio.sleep(1.0)
        await holder.extend([lease], lease_for=30.0)  # the worker wrote meanwhile
        renewed = _lease_end(path)
        await web.record_worker(worker_info("w"))  # (within STALL_CARRY_S of the refusal)
        assert _lease_end(path) == renewed


async def test_a_full_disk_is_paid_to_the_leases_as_a_stall(tmp_path: Path) -> None:
    path = str(tmp_path / "full.db")
    async with _two(path) as (holder, rescuer):
        # Given a job leased for 0.6 s by one process,
        env = envelope()
        await holder.enqueue([env])
        (lease,) = await claim(holder, lease_for=0.6)
        # when the disk fills (no process may write: no heartbeat either) past the lease,
        # and the rescuer's process failed a write for want of room,
        await _limit_pages(rescuer, None)
        with pytest.raises(StorageFull):
            await rescuer.enqueue([envelope(payload={"x": "y" * 200_000})])
        lapsed = await _lapsed(rescuer)
        assert [lapse.lease.job_id for lapse in lapsed] == [env.id]
        # then, room again, its rescue pays the time the disk was full to the leases live
        # then, and applies nothing (it ran the job again while its holder had finished it,
        # its outcome waiting for room, in a trial)
        await _limit_pages(rescuer, 1 << 30)
        decisions = decide_all(lapsed, lambda kind: Policy(), time.time())
        assert await rescuer.rescue(decisions) == [False]
        (answer,) = await holder.extend([lease], lease_for=0.6)
        assert answer.held and (await status(holder, env.id))["state"] == "running"


async def test_a_stall_is_paid_once_to_the_leases_live_when_it_began(tmp_path: Path) -> None:
    from offload.brokers.sqlite.stalls import pause_leases

    path = tmp_path / "paid.db"
    backend = SQLiteBackend(str(path))
    await backend.open()
    try:
        live, lapsed = envelope(), envelope()
        await backend.enqueue([live, lapsed])
        leases = await claim(backend, lease_for=60)
        await backend.close()
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("UPDATE offload_jobs SET lease_expires = 1000 WHERE id = ?", (live.id,))
        conn.execute("UPDATE offload_jobs SET lease_expires = 900 WHERE id = ?", (lapsed.id,))
        # Given a writer that waited from 950 to 1010 for the lock: 60 s are paid to the lease
        # live at 950, not to the one that lapsed before
        assert pause_leases(conn, 950.0, 1010.0, 0.5) == 60.0
        # and a second writer that waited through the same stall pays only what is unpaid
        assert pause_leases(conn, 940.0, 1010.2, 0.5) == 0.0
        assert pause_leases(conn, 940.0, 1012.0, 0.5) == 2.0
        expiries = dict(conn.execute("SELECT id, lease_expires FROM offload_jobs").fetchall())
        conn.close()
        assert expiries == {live.id: 1062.0, lapsed.id: 900.0}
        assert {lease.job_id for lease in leases} == {live.id, lapsed.id}
    finally:
        await backend.close()


async def test_status_reads_answer_while_the_writer_thread_is_busy(tmp_path: Path) -> None:
    """A job's row and a page of jobs are read on a connection of their own: while the
    backend's one writer thread is held inside a write transaction, they still answer."""
    backend = SQLiteBackend(str(tmp_path / "jobs.db"))
    await backend.open()
    try:
        (stored,) = await backend.enqueue([envelope(owner="alice")])
        release = threading.Event()
        began = threading.Event()

        def hold_the_writer() -> None:
            with backend._tx():
                began.set()
                release.wait(60)

        held = asyncio.create_task(backend._run(hold_the_writer))
        try:
            await asyncio.to_thread(began.wait, 60)
            row = await asyncio.wait_for(backend.get(stored.id), 30)
            page = await asyncio.wait_for(backend.list_jobs(owner="alice"), 30)
            assert row is not None and row.id == stored.id
            assert [r.id for r in page] == [stored.id]
            assert not held.done()  # the writer was still inside its transaction
        finally:
            release.set()
            await held
    finally:
        await backend.close()


@contextlib.contextmanager
def write_lock_held(path: str) -> Iterator[None]:
    """Another program's connection holding the write lock of the file at `path` inside."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("COMMIT")
        other.close()


async def still_waiting(call: asyncio.Future[Any]) -> None:
    """The loop turns (nothing blocks it) and `call` has not ended: it waits for the lock."""
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert not call.done()


def test_a_writer_takes_the_lock_once_another_connection_frees_it_and_keeps_its_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # _begin tries again itself (SQLite's busy handler sleeps up to 100 ms between tries);
    # the connection's busy timeout, which its other statements rely on, is the same after
    # an attempt that failed, and once the transaction ends (not while it holds the lock:
    # no statement runs to restore it there).
    path = str(tmp_path / "begin.db")
    sqlite3.connect(path).close()
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    timeout_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]

    with write_lock_held(path):
        with pytest.raises(backend_module._Busy):  # without `wait`: at once
            backend_module._begin(conn, wait=False)
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == timeout_ms
        monkeypatch.setattr(backend_module, "DEFAULT_BUSY_TIMEOUT_S", 0.05)
        with pytest.raises(sqlite3.OperationalError, match="locked"):  # held past the bound
            backend_module._begin(conn, wait=True)
        monkeypatch.undo()
        tries = 0
        real_sleep = time.sleep

        def counted(seconds: float) -> None:
            nonlocal tries
            tries += 1
            real_sleep(seconds)

        monkeypatch.setattr(backend_module.time, "sleep", counted)
        waiting = threading.Thread(target=lambda: backend_module._begin(conn, wait=True))
        waiting.start()
        deadline = time.monotonic() + 30
        while tries < 3 and time.monotonic() < deadline:  # it tried, and tries again
            real_sleep(0.001)
        assert waiting.is_alive() and tries >= 3
    waiting.join(30)
    assert not waiting.is_alive() and conn.in_transaction  # it holds the lock now
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    conn.execute("COMMIT")
    backend_module._end_busy_wait(conn)
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == timeout_ms
    conn.close()


async def test_an_enqueue_while_another_process_writes_waits_for_the_lock_and_stores_once(
    tmp_path: Path,
) -> None:
    # Given a backend whose writer thread is idle (a lone enqueue then writes on the
    # event loop's thread, if the write lock is free at once)
    path = str(tmp_path / "inline.db")
    backend = SQLiteBackend(path)
    await backend.open()
    try:
        first = envelope()
        assert [r.id for r in await backend.enqueue([first])] == [first.id]
        # when another program holds the write lock as the next enqueue comes,
        second = envelope()
        with write_lock_held(path):
            storing = asyncio.ensure_future(backend.enqueue([second]))
            await still_waiting(storing)
        # then it is stored once the lock is free, on the writer thread that waited for it
        assert [r.id for r in await asyncio.wait_for(storing, 30)] == [second.id]
        assert (await status(backend, second.id))["state"] == "queued"
        # and the connection waits for the lock as long as before (the attempt that did
        # not wait restored the busy timeout)
        timeout_ms = backend.conn.execute("PRAGMA busy_timeout").fetchone()[0]
        assert timeout_ms == 60_000
    finally:
        await backend.close()


async def test_progress_is_one_statement_and_waits_for_a_lock_another_program_holds(
    tmp_path: Path,
) -> None:
    # Given a running job (progress is one statement; a trigger of the backend's connection
    # writes its feed entry in it)
    path = str(tmp_path / "progress.db")
    backend = SQLiteBackend(path)
    await backend.open()
    try:
        env = envelope()
        await backend.enqueue([env])
        (lease,) = await claim(backend)
        statements: list[str] = []
        backend.conn.set_trace_callback(statements.append)
        assert await backend.progress(lease, 0.25, "loading") is True
        backend.conn.set_trace_callback(None)
        # (the trace names a statement again as it enters its trigger)
        (update,) = {s for s in statements if not s.startswith("PRAGMA")}
        assert "UPDATE offload_jobs SET progress_fraction" in update
        # when another program holds the write lock as the next report comes,
        with write_lock_held(path):
            reporting = asyncio.ensure_future(backend.progress(lease, 0.5, "half"))
            await still_waiting(reporting)
        # then it is stored once the lock is free, with one feed entry per report
        assert await asyncio.wait_for(reporting, 30) is True
        changes = await backend.changes_since(0, job_id=env.id)
        assert [(c.row.state, c.row.progress_fraction) for c in changes] == [
            (JobState.QUEUED, None),
            (JobState.RUNNING, None),
            (JobState.RUNNING, 0.25),
            (JobState.RUNNING, 0.5),
        ]
        assert (await status(backend, env.id))["progress"] == {"fraction": 0.5, "message": "half"}
        # and the connection waits for locks as long as before
        assert backend.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60_000
        # while another program's progress-like update writes no entry (the trigger is the
        # backend connection's own, TEMP)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("UPDATE offload_jobs SET progress_fraction = 0.75 WHERE id = ?", (env.id,))
        other.close()
        assert len(await backend.changes_since(0, job_id=env.id)) == 4
    finally:
        await backend.close()


async def test_a_progress_report_that_waited_out_a_stall_pays_it_to_the_leases(
    tmp_path: Path,
) -> None:
    # Given a running job, and a backend that counts a 50 ms wait for the lock as a stall
    path = str(tmp_path / "progress-stall.db")
    backend = SQLiteBackend(path)
    await backend.open()
    try:
        env = envelope()
        await backend.enqueue([env])
        (lease,) = await claim(backend, lease_for=60)
        backend._stall_s = 0.05

        def expires() -> float:
            row = backend.conn.execute(
                "SELECT lease_expires FROM offload_jobs WHERE id = ?", (env.id,)
            ).fetchone()
            return float(row[0])

        before = expires()
        tried: list[float] = []  # when the report first tried its statement
        backend.conn.set_trace_callback(lambda sql: tried.append(time.time()))
        # when another program holds the write lock longer than that as a report comes,
        with write_lock_held(path):
            reporting = asyncio.ensure_future(backend.progress(lease, 0.5, "half"))
            await still_waiting(reporting)
            released = time.time()
        # then the report is stored once, and the whole wait was added to the live lease
        assert await asyncio.wait_for(reporting, 30) is True
        backend.conn.set_trace_callback(None)
        assert expires() - before >= released - tried[0] > backend._stall_s
        changes = await backend.changes_since(0, job_id=env.id)
        assert [c.row.progress_fraction for c in changes] == [None, None, 0.5]
    finally:
        await backend.close()


def hops(backend: SQLiteBackend) -> list[str]:
    """The names of the calls `backend` hands to its writer thread from now on."""
    handed: list[str] = []
    run = backend._run

    async def counted(fn, *args):  # type: ignore[no-untyped-def]
        handed.append(getattr(fn, "__name__", repr(fn)))
        return await run(fn, *args)

    backend._run = counted  # type: ignore[method-assign]
    return handed


async def test_a_lone_enqueue_and_a_burst_both_store_every_job_once(tmp_path: Path) -> None:
    # Lone calls write on the loop's thread; concurrent ones join group commits (a group
    # larger than the inline bound goes to the writer thread): every job once, none lost.
    backend = SQLiteBackend(str(tmp_path / "mix.db"))
    await backend.open()
    try:
        handed = hops(backend)
        lone = [envelope() for _ in range(5)]
        for env in lone:
            await backend.enqueue([env])
        assert "_enqueue" not in handed  # no hop to the writer thread and back
        burst = [envelope() for _ in range(40)]
        answers = await asyncio.gather(*(backend.enqueue([env]) for env in burst))
        assert [a[0].id for a in answers] == [env.id for env in burst]
        # A group commit's largest (64 jobs) is written there too; a bigger batch hops.
        group = [envelope() for _ in range(DEFAULT_GROUP_MAX_JOBS)]
        assert [r.id for r in await backend.enqueue(group)] == [env.id for env in group]
        assert "_enqueue" not in handed
        batch = [envelope() for _ in range(DEFAULT_GROUP_MAX_JOBS + 1)]
        assert [r.id for r in await backend.enqueue(batch)] == [env.id for env in batch]
        assert handed.count("_enqueue") == 1
        for env in [*lone, *burst, *group, *batch]:
            assert (await status(backend, env.id))["state"] == "queued"
        count = backend.conn.execute("SELECT count(*) FROM offload_jobs").fetchone()[0]
        assert count == len(lone) + len(burst) + len(group) + len(batch)
    finally:
        await backend.close()


async def test_a_waiting_claimer_polls_on_the_loops_thread_and_wakes_for_another_process(
    tmp_path: Path,
) -> None:
    # Given a claimer that found nothing and waits, its polls reading the database's
    # version on the loop's thread (the writer thread has nothing of it meanwhile)
    path = str(tmp_path / "poll.db")
    async with _two(path) as (mine, theirs):
        handed = hops(mine)
        assert await claim(mine) == []
        waiting = asyncio.ensure_future(mine.wait(["q"], 30.0))
        # When another connection (as another process would) stores a job
        await theirs.enqueue([envelope()])
        # Then the wait ends (long before its 30 s), no poll having gone to the writer
        # thread, and the job is claimed
        await asyncio.wait_for(waiting, 10)
        assert "_version" not in handed
        assert len(await claim(mine)) == 1


async def test_a_claim_of_a_few_jobs_stays_on_the_loops_thread_and_a_batch_or_a_held_lock_hops(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "claims.db")
    backend = SQLiteBackend(path)
    await backend.open()
    try:
        handed = hops(backend)
        # A few ready jobs (at most the inline bound) are claimed on the loop's thread
        few = [envelope() for _ in range(3)]
        await backend.enqueue(few)
        leases = await claim(backend, limit=10)
        assert sorted(lease.envelope.id for lease in leases) == sorted(e.id for e in few)
        assert "_claim" not in handed
        # more than the bound go to the writer thread, in one batch
        many = [envelope() for _ in range(20)]
        await backend.enqueue(many)
        leases = await claim(backend, limit=50)
        assert sorted(lease.envelope.id for lease in leases) == sorted(e.id for e in many)
        assert handed.count("_claim") == 1
        # and while another program holds the write lock, the claim waits for it on the
        # writer thread (the loop turns meanwhile), then takes the job
        one = envelope()
        await backend.enqueue([one])
        with write_lock_held(path):
            claiming = asyncio.ensure_future(claim(backend, limit=10))
            await still_waiting(claiming)
        leases = await asyncio.wait_for(claiming, 30)
        assert [lease.envelope.id for lease in leases] == [one.id]
        assert handed.count("_claim") == 2
        assert backend.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60_000
        claimed = "SELECT count(*) FROM offload_jobs WHERE state = 'running'"
        assert backend.conn.execute(claimed).fetchone()[0] == 24
    finally:
        await backend.close()


async def test_a_feed_entry_read_back_in_sql_shows_the_rows_times_to_the_millisecond(
    tmp_path: Path,
) -> None:
    # A time 2.4 µs before a millisecond's end: JSON's 15 digits (10 µs) rounded it into
    # the next millisecond in the entry read back in SQL, not in the row (a quiet CI run
    # failed test_a_feed_entry_made_from_what_was_written_reads_as_the_row so, once).
    from offload.clock import FakeClock

    later = int(time.time()) + 3600  # (the envelope is due now, by this host's clock)
    backend = SQLiteBackend(str(tmp_path / "feed.db"), clock=FakeClock(later + 0.2169976))
    await backend.open()
    try:
        await backend.enqueue([envelope("qt")])
        (lease,) = await claim(backend, "qt")
        await backend.progress(lease, 0.5, "half")  # its entry: made in SQL
        (*_, progressed) = await backend.changes_since(0)
        row = await backend.get(lease.job_id)
        assert row is not None
        shown = status_record(progressed.row)
        assert status_record(row)["started_at"].endswith(".216Z")
        assert shown["started_at"] == status_record(row)["started_at"]
    finally:
        await backend.close()
