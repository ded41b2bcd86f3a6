"""Killed database connections cost latency, never an error: the web tier answers every
request, the event stream replays and follows, the worker runs every job once, and no
idempotency key makes two jobs, while the app's connections are killed again and again."""

from __future__ import annotations

import contextlib
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ..services import (
    PG_URL,
    REDIS_URL,
    PgSchema,
    drop_redis_prefix,
    redis_prefix,
    redis_url,
    require_pg,
    require_redis,
)
from .conftest import TEMPLATE, Stack

#: Jobs submitted while connections are being killed.
JOBS = 40


def _pg_killer(name: str) -> Callable[[], int]:
    import psycopg

    def kill() -> int:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchall()
        return len(rows)

    return kill


def _redis_killer(name: str) -> Callable[[], int]:
    import redis

    def kill() -> int:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            ids = [c["id"] for c in client.client_list() if c.get("name") == name]
            for client_id in ids:
                client.client_kill_filter(_id=client_id)
            return len(ids)
        finally:
            client.close()

    return kill


@contextlib.contextmanager
def _backend(name: str) -> Iterator[tuple[str, Callable[[], int]]]:
    """A private backend whose connections all carry one name, and a function that kills
    them (those of this test's processes only)."""
    if name == "postgres":
        require_pg()
        schema = PgSchema()  # its URL sets application_name to the schema's name
        try:
            yield schema.create_sync(), _pg_killer(schema.name)
        finally:
            schema.drop_sync()
    else:
        require_redis()
        prefix = redis_prefix()
        client = "offload-kill-" + prefix.rstrip(":")
        try:
            yield redis_url(prefix, client_name=client), _redis_killer(client)
        finally:
            drop_redis_prefix(prefix)


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def killable(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Stack, Callable[[], int]]]:
    shutil.copytree(TEMPLATE, tmp_path, dirs_exist_ok=True)
    with _backend(request.param) as (url, kill):
        stack = Stack(tmp_path, url)
        stack.backend = request.param
        try:
            yield stack, kill
        finally:
            stack.stop()


class Killer(threading.Thread):
    """Kills the app's connections every 50-250 ms until stopped."""

    def __init__(self, kill: Callable[[], int]) -> None:
        super().__init__(daemon=True)
        self.kill = kill
        self.killed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.killed += self.kill()
            self.stopping.wait(random.uniform(0.05, 0.25))

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class EventReader(threading.Thread):
    """Reads /v1/events from the start, reconnecting with Last-Event-ID every few events
    (so the stream replays from the store again and again), until it saw every job
    succeed. A stream that breaks (an error inside it) is a failure; one that ends
    cleanly is resumed."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.client = stack.client()
        self.last = 0
        self.succeeded: set[str] = set()
        self.wanted: set[str] | None = None
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def done(self) -> bool:
        return self.wanted is not None and self.wanted <= self.succeeded

    def run(self) -> None:
        while not (self.stopping.is_set() or self.done()):
            try:
                self._read_some()
            except httpx.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def _read_some(self) -> None:
        headers = {"Last-Event-ID": str(self.last)}
        with self.client.stream("GET", "/v1/events", headers=headers) as response:
            if response.status_code != 200:
                self.failures.append(f"HTTP {response.status_code}: {response.read()!r}")
                return
            seen, event = 0, ""
            for line in response.iter_lines():
                if line.startswith("id: "):
                    self.last = int(line[4:])
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "succeeded":
                    self.succeeded.add(line.split('"id":"', 1)[1].split('"', 1)[0])
                if line.startswith("data: "):
                    seen += 1
                if seen >= 10 or self.done() or self.stopping.is_set():
                    return


def test_killed_connections_cost_no_error_and_no_duplicate(
    killable: tuple[Stack, Callable[[], int]],
) -> None:
    stack, kill = killable
    stack.start_web()
    worker = stack.start_worker()
    deadline = time.monotonic() + 30
    while "worker started" not in stack.output():  # kills hit a running worker, not its start
        assert time.monotonic() < deadline and worker.poll() is None, stack.output()
        time.sleep(0.05)
    alice = stack.client()
    statuses: Counter[int] = Counter()
    ids: dict[str, str] = {}
    reader = EventReader(stack)

    # Given a web tier, a worker and an event reader, all busy,
    reader.start()
    try:
        _submit_while_killing(stack, kill, statuses, ids)
        reader.wanted = set(ids.values())
        # then every request was answered, every job ran once, and no key made two jobs,
        assert not [s for s in statuses if s >= 500], (statuses, stack.output())
        assert len(ids) == JOBS
        for job_id in ids.values():
            assert (
                stack.wait_state(alice, job_id, {"succeeded"}, timeout=60)["state"] == "succeeded"
            )
        listed = alice.get("/v1/jobs", params={"kind": "e2e.noop", "limit": 200}).json()
        assert len(listed["items"]) == JOBS
        runs = Counter(stack.log_lines("noop.log"))
        assert set(runs) == set(ids.values()) and set(runs.values()) == {1}
        # the event stream saw every job succeed without ever breaking,
        reader.join(timeout=60)
        assert reader.done(), (reader.succeeded, reader.failures)
        assert not reader.failures, reader.failures
    finally:
        reader.stopping.set()
        reader.join()
    # and no process logged an error it did not handle.
    assert worker.poll() is None
    output = stack.output()
    assert "Task exception was never retrieved" not in output, output
    assert "Exception in ASGI application" not in output, output


def _submit_while_killing(
    stack: Stack, kill: Callable[[], int], statuses: Counter[int], ids: dict[str, str]
) -> None:
    """Submit JOBS jobs, each twice with one Idempotency-Key, and read each back, while the
    app's connections are killed between and during the requests (and for a while after,
    while the worker runs them)."""
    alice = stack.client()
    killer = Killer(kill)
    killer.start()
    try:
        for n in range(JOBS):
            key = f"job-{n}"
            for _ in range(2):  # every submission is sent twice (a client's retry)
                answer = alice.post(
                    "/v1/jobs/e2e.noop", json={"n": n}, headers={"Idempotency-Key": key}
                )
                statuses[answer.status_code] += 1
                if answer.status_code < 300:
                    assert ids.setdefault(key, answer.json()["id"]) == answer.json()["id"]
            if key in ids:
                statuses[alice.get(f"/v1/jobs/{ids[key]}").status_code] += 1
        deadline = time.monotonic() + 60
        while killer.killed < 20:  # enough kills to matter
            assert time.monotonic() < deadline, f"only {killer.killed} connections killed"
            time.sleep(0.05)
    finally:
        killer.stop()
