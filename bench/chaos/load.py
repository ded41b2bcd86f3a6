"""The load: jobs submitted over HTTP and through `App.enqueue_many` (with idempotency keys,
duplicate submissions and replays), and a sample of jobs followed over server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from offload import App

from .contracts import Work
from .ledger import Ledger, Submission
from .stack import PRINCIPAL, TOKEN

#: Seconds an HTTP request may take before it counts as a transport error.
DEFAULT_HTTP_TIMEOUT_S = 15.0
#: Seconds between two tries of a submission whose connection was refused (web down).
DEFAULT_REFUSED_RETRY_S = 0.2
FINAL_STATES = {"succeeded", "failed", "cancelled", "dead"}


class Plan:
    """The seeded stream of jobs to submit, paced: job i is due `i / rate` seconds in."""

    def __init__(self, seed: int, total: int, upfront: int, seconds: float) -> None:
        self.rng = random.Random(seed)
        self.total = total
        self.upfront = upfront
        self.rate = max(1.0, (total - upfront) / max(seconds * 0.9, 1.0))
        self.next = 0
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.keys: list[Submission] = []  # keyed submissions, for replays

    def take(self, stop: threading.Event) -> tuple[Submission, bool] | None:
        """The next job to submit and whether it replays an earlier key (None: done)."""
        with self.lock:
            if self.next >= self.total or stop.is_set():
                return None
            i = self.next
            self.next += 1
            rng = self.rng
            if self.keys and rng.random() < 0.1:
                return rng.choice(self.keys), True
            sleep_ms = int(rng.choice([2, 5, 10, 20, 50, 100, 200, 300]) * rng.uniform(0.8, 1.2))
            key = f"chaos-{i}" if rng.random() < 0.3 else None
            sub = Submission(i, sleep_ms, rng.random() < 0.05, key)
            if key is not None:
                self.keys.append(sub)
            due = max(0, i - self.upfront) / self.rate
        wait = self.started + due - time.monotonic()
        if wait > 0:
            stop.wait(wait)
        return sub, False


def http_client(base: str) -> httpx.Client:
    return httpx.Client(
        base_url=base,
        timeout=DEFAULT_HTTP_TIMEOUT_S,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


def is_problem(answer: httpx.Response) -> bool:
    """An RFC 9457 problem document, as every HTTP error of offload must be."""
    content_type: str = answer.headers.get("content-type", "")
    return content_type.startswith("application/problem+json")


def post_job(
    client: httpx.Client, ledger: Ledger, sub: Submission, stop: threading.Event
) -> str | None:
    """POST one job; record the answer (a 202's id, or the failure). A refused connection
    (the web process is down, the request was never sent) is recorded and the same job sent
    again until it is heard or the load stops: a client would, and a slow restart on a busy
    machine then delays the job rather than dropping it from the run."""
    headers = {"Idempotency-Key": sub.key} if sub.key else {}
    while True:
        try:
            answer = client.post("/v1/jobs/chaos.work", json=sub.body(), headers=headers)
            break
        except httpx.TransportError as exc:
            ledger.fail("transport", f"POST: {type(exc).__name__}")
            refused = isinstance(exc, httpx.ConnectError)
            if not refused or stop.wait(DEFAULT_REFUSED_RETRY_S):
                return None
    if answer.status_code == 202:
        job_id = str(answer.json()["id"])
        ledger.accept(job_id, sub, "http")
        return job_id
    if answer.status_code >= 500 and not is_problem(answer):
        ledger.fail("bare 5xx", f"POST {answer.status_code}: {answer.text[:200]}")
    elif answer.status_code >= 500:
        ledger.fail("5xx", f"POST {answer.status_code}: {answer.text[:200]}")
    else:
        ledger.fail("4xx", f"POST {answer.status_code}: {answer.text[:200]}")
    return None


def http_loop(
    base: str, plan: Plan, ledger: Ledger, stop: threading.Event, on_accept: Callable[[str], None]
) -> None:
    """Submit over HTTP until the plan is done: a keyed job is sometimes sent twice at once
    (a duplicate submission), and earlier keys are replayed."""
    with http_client(base) as client, ThreadPoolExecutor(2) as pair:
        while (step := plan.take(stop)) is not None:
            sub, _replay = step
            if sub.key is not None and plan.rng.random() < 0.3:
                answers = list(pair.map(lambda s: post_job(client, ledger, s, stop), [sub, sub]))
            else:
                answers = [post_job(client, ledger, sub, stop)]
            for job_id in filter(None, answers):
                on_accept(job_id)


def many_loop(app: App, plan: Plan, ledger: Ledger, stop: threading.Event, batch: int) -> None:
    """Submit through `App.enqueue_many` from this process: batches without a key, and
    single keyed jobs (replayed later, as over HTTP)."""
    asyncio.run(ManyLoader(app, plan, ledger, stop, batch).run())


class ManyLoader:
    """The `enqueue_many` half of the load, on its own event loop."""

    def __init__(
        self, app: App, plan: Plan, ledger: Ledger, stop: threading.Event, batch: int
    ) -> None:
        self.app = app
        self.plan = plan
        self.ledger = ledger
        self.stop = stop
        self.batch = batch

    async def run(self) -> None:
        while not await self.opened():
            if self.stop.is_set():
                return
            await asyncio.sleep(0.5)
        try:
            await self.load()
        finally:
            with contextlib.suppress(Exception):  # the engine may be down at this moment
                await self.app.close()

    async def opened(self) -> bool:
        """Open the app; a failure is recorded as a failed `enqueue_many` (a first
        `enqueue_many` opens the app itself, and would fail the same way)."""
        try:
            await self.app.open()
        except Exception as exc:
            self.ledger.fail("enqueue", f"open: {type(exc).__name__}: {exc}"[:200])
            return False
        return True

    async def load(self) -> None:
        subs: list[Submission] = []
        while (step := self.plan.take(self.stop)) is not None:
            sub = step[0]
            if sub.key is not None:  # a keyed job goes alone (the key names one job)
                await self.submit([sub], sub.key)
            else:
                subs.append(sub)
            if len(subs) >= self.batch:
                await self.submit(subs, None)
                subs = []
        if subs:
            await self.submit(subs, None)

    async def submit(self, subs: list[Submission], key: str | None) -> None:
        try:
            jobs = await self.app.enqueue_many(
                [Work(n=s.n, sleep_ms=s.sleep_ms, flaky=s.flaky) for s in subs],
                idempotency_key=key,
                owner=PRINCIPAL,
            )
        except Exception as exc:  # every failure is recorded, none ends the load
            self.ledger.fail("enqueue", f"{type(exc).__name__}: {exc}"[:200])
            return
        for job, sub in zip(jobs, subs, strict=True):
            self.ledger.accept(job.id, sub, "enqueue_many")


def follow(base: str, job_id: str, ledger: Ledger, deadline: float) -> None:
    """Follow one job's event stream to its final state, reconnecting with Last-Event-ID
    when the stream breaks (the web process was killed); record the last state seen."""
    last_id: str | None = None
    state: str | None = None
    with http_client(base) as client:
        while state not in FINAL_STATES and time.time() < deadline:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
                    if r.status_code >= 500:
                        ledger.fail("5xx", f"events {r.status_code}")
                    elif r.status_code == 200:
                        for line in r.iter_lines():
                            if line.startswith("id: "):
                                last_id = line[4:]
                            elif line.startswith("event: "):
                                state = line[7:]
            except httpx.TransportError:
                pass
            if state not in FINAL_STATES:
                time.sleep(0.5)
    with ledger.lock:
        ledger.streams[job_id] = state
