"""SQS as the queue, PostgreSQL as the job store, joined by a transactional outbox.

Every job row lives in PostgreSQL (the `PostgresBackend` this broker wraps answers status,
listing, the change feed, search, schedules and limits). What SQS carries is one message
per job each time the job becomes ready to claim: when it is stored, retried, released,
rescued or requeued. The row change and an outbox row commit in one transaction (a trigger
on the connections of this broker writes the outbox row: migration 9); the message is then
sent and the outbox row deleted in one more transaction, which commits only after SQS took
the message. A send that failed, or a process that died between the commit and the send,
leaves the row, and the relay (`relay`) sends it later. A message may thus arrive twice:
the consumer's fenced claim of the PostgreSQL row decides, so it runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit, urlunsplit

import aioboto3
import orjson
import psycopg
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as SdkConnectionError

from ...clock import Clock
from ...contract import EnqueueResult, Envelope, Lease, Outcome, Settled
from ...errors import BackendError, ConfigurationError
from .._sql import queries
from ..base import Broker, Capability, JobSearch, JobStore, Limiter, ScheduleStore
from ..postgres import PostgresBackend
from ..postgres.backend import _lease_of

log = logging.getLogger("offload.sqs")
Q = queries(__package__)

#: Seconds an outbox row waits before the relay sends it (its own sender had this long).
DEFAULT_RELAY_AGE_S = 5.0
#: Seconds between two relay passes of an open broker (0: only when called).
DEFAULT_RELAY_EVERY_S = 5.0
#: Seconds a job waits ready, its message not taken, before the scheduled relay sends its
#: message again (it was lost: a dead-letter queue took it after deliveries no function could
#: run, or SQS lost it).
DEFAULT_RESEND_AFTER_S = 900.0
#: Rows one relay pass reads at most per transaction.
RELAY_BATCH = 100
#: SQS's longest message delay (seconds): a job due later is sent early and sent again.
MAX_DELAY_S = 900
#: Messages per SendMessageBatch, SQS's limit.
SEND_BATCH = 10
#: SendMessageBatch calls in flight at once (aiobotocore pools 10 connections).
SEND_CONCURRENCY = 8
#: The version of the message body ({"v", "job", "queue"}).
BODY_VERSION = 1
#: How long a send of outbox rows (or the queue's URL) may wait on SQS before it is left to
#: the relay: an enqueue answers within it while SQS takes connections and answers nothing
#: (the SDK's own bound, two tries of 10 s, held a cold web function's request 42 s).
SEND_WAIT_S = 3.0
#: The environment variables in which an operator chooses the SDK's retries themselves.
_RETRY_SETTINGS = ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")


def sdk_config() -> AioConfig:
    """How long a call to SQS may take before it fails (the outbox row then waits for the
    relay): 2 s to connect, 10 s to answer, and one more try unless AWS_MAX_ATTEMPTS or
    AWS_RETRY_MODE says otherwise. The SDK's default, five tries with backoff and a minute
    to connect, held a web request 10.8 s while SQS did not answer."""
    theirs = any(name in os.environ for name in _RETRY_SETTINGS)
    retries = {} if theirs else {"retries": {"mode": "standard", "total_max_attempts": 2}}
    return AioConfig(connect_timeout=2, read_timeout=10, **retries)


#: What the SDK raises when SQS did not answer (no connection, or no reply in time), as
#: opposed to an answer (a missing queue) or a mistake of ours (no credentials).
_UNANSWERED = (SdkConnectionError, HTTPClientError)
#: Error codes of an SQS that answered but is out of service or throttling: as unanswered.
_UNAVAILABLE_CODES = frozenset(
    {"ServiceUnavailable", "InternalError", "InternalFailure", "ThrottlingException",
     "RequestThrottled", "Throttling", "SlowDown"}
)  # fmt: skip


def _unanswered(exc: BaseException | None) -> bool:
    """Whether an SDK error means SQS is not serving now (no connection, no reply, a 5xx
    or throttling), as opposed to a refusal (no such queue) or a mistake of ours."""
    if isinstance(exc, _UNANSWERED):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return int(status or 0) >= 500 or code in _UNAVAILABLE_CODES
    return False


_OPTIONS = {"endpoint_url", "region", "relay_age", "relay_every", "resend_after"}
_STORE = re.compile(r"(?:^|&)store=(.*)$", re.S)


def parse_url(url: str) -> tuple[str, dict[str, str], str]:
    """(SQS queue name, options, store URL) of `sqs://QUEUE?option=…&store=postgresql://…`.

    `store` comes last and takes the rest of the URL as it is (its own `?` and `&`
    included), or percent-encoded anywhere.

    Raises:
        ConfigurationError: no queue name, no PostgreSQL store, an unknown option.
    """
    parts = urlsplit(url)
    query = url.split("?", 1)[1] if "?" in url else ""
    store = ""
    found = _STORE.search(query)
    if found and "://" in found.group(1).split("&", 1)[0]:  # plain, so last: the rest
        store, query = found.group(1), query[: found.start()]
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    if "store" in options:  # percent-encoded, not last
        store = options.pop("store")
    if "://" not in store:
        store = unquote(store)
    queue = parts.netloc
    if not queue:
        raise ConfigurationError("OFFLOAD_URL sqs://QUEUE-NAME?…: the SQS queue name is missing")
    if not store.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError(
            "the SQS broker keeps its job rows in PostgreSQL: end OFFLOAD_URL with "
            "&store=postgresql://… (sqs://QUEUE-NAME?endpoint_url=…&store=postgresql://…)"
        )
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ConfigurationError(
            f"unknown sqs:// option(s) {sorted(unknown)}; expected {sorted(_OPTIONS)} and store"
        )
    return queue, options, store


def outbox_store_url(store: str) -> str:
    """`store` with the session setting that makes its connections write outbox rows."""
    parts = urlsplit(store)
    options = parse_qs(parts.query)
    libpq = " ".join([*options.pop("options", []), "-c offload.outbox=on"]).strip()
    query = urlencode({**{k: v[-1] for k, v in options.items()}, "options": libpq}, quote_via=quote)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class SQSBackend:
    """Broker on Amazon SQS (or an API like it) whose job rows live in PostgreSQL.

    Methods it does not define are the wrapped `store`'s (`PostgresBackend`). A plain
    `offload worker` on the same URL claims from PostgreSQL as it would there; the SQS
    messages of the jobs it ran then find nothing to claim and are acknowledged.
    """

    #: Its connections belong to the event loop that opened it (`App` refuses another).
    loop_bound = True

    capabilities = frozenset(
        {Capability.DELAY, Capability.PUSH, Capability.DEDUP, Capability.TRANSACTIONAL_ENQUEUE}
    )

    def __init__(
        self,
        store: PostgresBackend,
        *,
        queue: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        relay_age_s: float = DEFAULT_RELAY_AGE_S,
        relay_every_s: float = DEFAULT_RELAY_EVERY_S,
        resend_after_s: float = DEFAULT_RESEND_AFTER_S,
    ) -> None:
        self.store = store
        self.queue = queue
        self.endpoint_url = endpoint_url
        self.region = region
        self.relay_age_s = relay_age_s
        self.relay_every_s = relay_every_s
        self.resend_after_s = resend_after_s
        self.queue_url: str | None = None
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._relay: asyncio.Task[None] | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Clock | None = None,
        connect_timeout_s: float | None = None,
        retry_deadline_s: float | None = None,
    ) -> SQSBackend:
        """`sqs://QUEUE-NAME?endpoint_url=…&region=…&relay_age=5&relay_every=5&store=postgresql://…`."""
        queue, options, store = parse_url(url)
        pg = PostgresBackend.from_url(
            outbox_store_url(store),
            clock=clock,
            connect_timeout_s=connect_timeout_s,
            retry_deadline_s=retry_deadline_s,
        )
        return cls(
            pg,
            queue=queue,
            endpoint_url=options.get("endpoint_url"),
            region=options.get("region"),
            relay_age_s=float(options.get("relay_age", DEFAULT_RELAY_AGE_S)),
            relay_every_s=float(options.get("relay_every", DEFAULT_RELAY_EVERY_S)),
            resend_after_s=float(options.get("resend_after", DEFAULT_RESEND_AFTER_S)),
        )

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks: the store's status, feed and search.
        if name.startswith("__") or name == "store":
            raise AttributeError(name)
        return getattr(self.store, name)

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self, *, check_schema: bool = True, create: bool = True) -> None:
        """Open the store, then the SQS client, and find the queue's URL. SQS not answering
        then is no failure (a cold start during its outage: the job rows, and everything read
        from them, are PostgreSQL's): the URL is looked up again at the next send, and the
        outbox keeps the jobs until one goes.

        Raises:
            BackendError: PostgreSQL unreachable, or SQS answered that the queue does not
                exist (or may not be used).
        """
        if self._client is not None:
            return
        await self.store.open(check_schema=check_schema, create=create)
        stack = contextlib.AsyncExitStack()
        try:
            session = aioboto3.Session()
            self._client = await stack.enter_async_context(
                session.client(
                    "sqs",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    config=sdk_config(),
                )
            )
            async with asyncio.timeout(SEND_WAIT_S):
                await self._queue_url()
        except TimeoutError:
            log.warning(
                "SQS queue %r does not answer within %g s: the outbox keeps the jobs until it does",
                self.queue,
                SEND_WAIT_S,
                extra={"action": "sqs_send_error"},
            )
        except BackendError as exc:
            if _unanswered(exc.__cause__) and self._client is not None:
                log.warning(
                    "SQS queue %r does not answer (%s): the outbox keeps the jobs until it does",
                    self.queue,
                    exc.__cause__,
                    extra={"action": "sqs_send_error"},
                )
            else:  # it answered no: the URL or the credentials are wrong
                await self._abandon(stack)
                raise
        except (BotoCoreError, ClientError) as exc:
            await self._abandon(stack)
            raise BackendError(f"SQS queue {self.queue!r}: {exc}") from exc
        except asyncio.CancelledError:  # (a deadline): what it opened is closed
            await self._abandon(stack)
            raise
        self._stack = stack
        if self.relay_every_s > 0:
            self._relay = asyncio.create_task(self._relay_loop(), name="offload-sqs-relay")

    async def _abandon(self, stack: contextlib.AsyncExitStack) -> None:
        """Close what an `open` that fails had opened: the SQS client, then the store."""
        self._client = None
        await stack.aclose()
        await self.store.close()

    async def close(self) -> None:
        if self._relay is not None:
            self._relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay
            self._relay = None
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()
        await self.store.close()

    async def migrate(self) -> list[int]:
        return await self.store.migrate()

    # -- what makes a job ready: each sends its jobs' messages after its commit ---------------

    async def enqueue(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        """`PostgresBackend.enqueue` (with the outbox rows), then the messages are sent."""
        results = await self.store.enqueue(envelopes)
        await self.send_jobs(r.id for r in results if r.created)
        return results

    async def enqueue_in(
        self, conn: psycopg.AsyncConnection[Any], envelopes: Sequence[Envelope], **kw: Any
    ) -> list[EnqueueResult]:
        """Enqueue inside the caller's transaction: the outbox rows commit with it, and the
        relay sends them (this call cannot know when the caller commits)."""
        await conn.execute("SET LOCAL offload.outbox = 'on'")
        return await self.store.enqueue_in(conn, envelopes, **kw)

    async def settle(self, outcomes: Sequence[Outcome]) -> Settled:
        applied = await self.store.settle(outcomes)
        await self.send_jobs(_ids(outcomes))
        return applied

    async def rescue(self, decisions: Sequence[Outcome]) -> Settled:
        applied = await self.store.rescue(decisions)
        await self.send_jobs(_ids(decisions))
        return applied

    async def requeue(self, job_id: str) -> Any:
        row = await self.store.requeue(job_id)
        await self.send_jobs([job_id])
        return row

    async def requeue_many(self, ids: Sequence[str]) -> int:
        count = await self.store.requeue_many(ids)
        await self.send_jobs(ids)
        return count

    async def cancel(self, job_id: str, follow_ups: Sequence[Envelope] = ()) -> Any:
        row = await self.store.cancel(job_id, follow_ups)
        await self.send_jobs(e.id for e in follow_ups)
        return row

    async def cancel_many(
        self, ids: Sequence[str], follow_ups: Mapping[str, Sequence[Envelope]]
    ) -> int:
        count = await self.store.cancel_many(ids, follow_ups)
        await self.send_jobs(e.id for notes in follow_ups.values() for e in notes)
        return count

    async def fire_schedule(
        self, name: str, *, spec: Mapping[str, Any], fires: Sequence[tuple[float, Envelope]]
    ) -> list[EnqueueResult | None]:
        results = await self.store.fire_schedule(name, spec=spec, fires=fires)
        await self.send_jobs(r.id for r in results if r is not None and r.created)
        return results

    # -- the outbox -------------------------------------------------------------------------

    async def send_jobs(self, ids: Iterable[str]) -> int:
        """Send the messages of these jobs' outbox rows and delete the rows, in a transaction
        that commits after SQS took them. A failure is logged, not raised: the caller's
        change is committed, and the relay sends the rows that stay. Returns how many went."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        return await self._take_and_send(Q["take_jobs"], {"ids": wanted})

    async def relay(self, *, older_than_s: float | None = None) -> int:
        """Send every outbox row older than `older_than_s` (default `relay_age_s`): the rows
        whose own send was lost. Returns how many messages went."""
        age = self.relay_age_s if older_than_s is None else older_than_s
        sent = 0
        while True:
            count = await self._take_and_send(Q["take_old"], {"age": age, "limit": RELAY_BATCH})
            sent += count
            if count < RELAY_BATCH:
                return sent

    async def resend_stale(self, *, older_than_s: float | None = None) -> int:
        """Send again the message of each job that has waited ready, in a queue not paused
        and with no outbox row, longer than `older_than_s` (default `resend_after_s`): its
        message was lost (a dead-letter queue took it after deliveries that no function
        could run, or SQS lost it), and nothing else would send one. It is marked resent
        (`resent_at`) before the send, so sent again once per that age at most (a failed
        send takes the mark back); a message that was not lost but waits behind a backlog
        then arrives twice, and the fenced claim runs it once. At most `RELAY_BATCH` jobs
        a call, the longest waiting first. Returns how many went."""
        age = self.resend_after_s if older_than_s is None else older_than_s
        params = {"age": age, "limit": RELAY_BATCH, "now": self.store._now()}
        async with self.store._conn() as conn:  # BackendError: the server does not answer
            cur = await _tuples(conn).execute(Q["resend_stale"], params)
            jobs = [(r[0], r[1], r[2]) for r in await cur.fetchall()]
        try:
            await self._send(jobs)
        except BackendError as exc:
            log.warning(
                "SQS send failed, resent next time: %s", exc, extra={"action": "sqs_send_error"}
            )
            # (PostgreSQL failing too, the marks stay: those are sent again a `resend_after` on)
            with contextlib.suppress(BackendError):
                async with self.store._conn() as conn:
                    ids = [job_id for job_id, _, _ in jobs]
                    await conn.execute(Q["resend_undo"], {"ids": ids})
            return 0
        sent = len(jobs)
        if sent:
            log.warning(
                "sent again the messages of %d jobs that waited ready over %gs (lost messages)",
                sent,
                age,
                extra={"action": "sqs_resend", "count": sent},
            )
        return sent

    async def _relay_loop(self) -> None:
        while True:
            await asyncio.sleep(self.relay_every_s)
            with contextlib.suppress(BackendError):
                sent = await self.relay()
                if sent:
                    log.info("relayed %d messages", sent, extra={"action": "sqs_relay"})

    async def _take_and_send(self, sql: str, params: dict[str, Any]) -> int:
        try:  # (a pooled connection lent as the store lends one: a gone server fails fast)
            async with self.store._conn() as conn, conn.transaction():
                cur = await _tuples(conn).execute(sql, params)
                rows = await cur.fetchall()
                async with asyncio.timeout(SEND_WAIT_S):  # else rolled back: rows kept
                    await self._send([(r[1], r[2], r[3]) for r in rows])
                return len(rows)
        except (psycopg.Error, BackendError, TimeoutError) as exc:
            log.warning(
                "SQS send failed, the outbox keeps the messages for the relay: %s",
                exc or f"no answer within {SEND_WAIT_S:g} s",
                extra={"action": "sqs_send_error"},
            )
            return 0

    async def _send(self, jobs: Sequence[tuple[str, str, float]]) -> None:
        """Send one message per (job id, offload queue, run_at), delayed up to when it is due.

        Raises:
            BackendError: SQS refused or did not answer (some may have gone: duplicates).
        """
        if not jobs:
            return
        now = self.store._clock_now()
        queue_url = await self._queue_url()
        batches = [jobs[i : i + SEND_BATCH] for i in range(0, len(jobs), SEND_BATCH)]
        limit = asyncio.Semaphore(SEND_CONCURRENCY)

        async def send(batch: Sequence[tuple[str, str, float]]) -> None:
            entries = [
                {"Id": str(n), "MessageBody": body(job_id, queue), "DelaySeconds": delay_s(at, now)}
                for n, (job_id, queue, at) in enumerate(batch)
            ]
            async with limit:
                try:
                    answer = await self._sqs().send_message_batch(
                        QueueUrl=queue_url, Entries=entries
                    )
                except (BotoCoreError, ClientError) as exc:
                    raise BackendError(f"SQS: {exc}") from exc
            if answer.get("Failed"):
                raise BackendError(f"SQS refused messages: {answer['Failed']}")

        errors = await asyncio.gather(*(send(b) for b in batches), return_exceptions=True)
        for error in errors:
            if isinstance(error, BaseException):
                raise error

    async def send_later(self, job_id: str, queue: str, run_at: float) -> None:
        """Send a job's message again, delayed until `run_at` or `MAX_DELAY_S` (a job not due
        yet, or held back by a paused queue).

        Raises:
            BackendError: SQS refused or did not answer.
        """
        await self._send([(job_id, queue, run_at)])

    async def change_visibility(self, receipt: str, timeout_s: float) -> None:
        """Keep a received message hidden for `timeout_s` more seconds (a long job).

        Raises:
            BackendError: SQS refused (the receipt is stale) or did not answer.
        """
        try:
            await self._sqs().change_message_visibility(
                QueueUrl=await self._queue_url(),
                ReceiptHandle=receipt,
                VisibilityTimeout=int(timeout_s),
            )
        except (BotoCoreError, ClientError) as exc:
            raise BackendError(f"SQS: {exc}") from exc

    def _sqs(self) -> Any:
        if self._client is None:
            raise BackendError("the SQS backend is not open")
        return self._client

    async def _queue_url(self) -> str:
        """The queue's URL, looked up once it answers.

        Raises:
            BackendError: SQS did not answer (caused by one of `_UNANSWERED`), or answered
                no, or the SDK could not ask (no credentials).
        """
        if self.queue_url is None:
            try:
                answer = await self._sqs().get_queue_url(QueueName=self.queue)
            except (BotoCoreError, ClientError) as exc:
                raise BackendError(f"SQS queue {self.queue!r}: {exc}") from exc
            self.queue_url = str(answer["QueueUrl"])
        return self.queue_url

    # -- the consumer's claim ---------------------------------------------------------------

    async def claim_job(self, job_id: str, *, worker_id: str, lease_for: float) -> Lease | None:
        """Lease the job a message names, if it waits, is due and its queue is not paused:
        one attempt spent, a fresh token (as `claim`). None otherwise (it ran, runs, is not
        due, or another consumer holds its row this instant)."""
        token = secrets.token_hex(12)
        params = {
            "id": job_id,
            "token": token,
            "lease_for": lease_for,
            "worker": worker_id,
            "now": self.store._now(),
        }
        async with self.store._conn() as conn:  # BackendError: the server does not answer
            cur = await _tuples(conn).execute(Q["claim_job"], params)
            row = await cur.fetchone()
        return None if row is None else _lease_of(row, token, worker_id)


def _tuples(conn: psycopg.AsyncConnection[dict[str, Any]]) -> psycopg.AsyncConnection[Any]:
    """The store's pooled connection, whose rows are tuples (psycopg's default)."""
    return cast(psycopg.AsyncConnection[Any], conn)


def _forward(name: str) -> Any:
    async def forward(self: SQSBackend, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self.store, name)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = name
    forward.__doc__ = f"`PostgresBackend.{name}`: the job rows live there."
    return forward


# Every seam method this class does not define is the store's, as a real method: isinstance
# checks against the seams' protocols look methods up without calling __getattr__.
for _seam in (Broker, JobStore, JobSearch, ScheduleStore, Limiter):
    for _name, _member in vars(_seam).items():
        if callable(_member) and not _name.startswith("_") and _name not in vars(SQSBackend):
            setattr(SQSBackend, _name, _forward(_name))


def _ids(outcomes: Sequence[Outcome]) -> list[str]:
    """The jobs an outcome may make ready again, and its follow-ups, those of a cancelled
    end too (sent only if stored: a resend's answer cannot tell whether they were)."""
    return [o.lease.job_id for o in outcomes] + [
        e.id for o in outcomes for e in (*o.follow_ups, *o.on_cancel)
    ]


def body(job_id: str, queue: str) -> str:
    """The message of one ready job: its id and offload queue (the row holds the rest)."""
    return orjson.dumps({"v": BODY_VERSION, "job": job_id, "queue": queue}).decode()


def delay_s(run_at: float, now: float) -> int:
    """SQS DelaySeconds of a job due at `run_at`: until then, at most `MAX_DELAY_S`."""
    return max(0, min(MAX_DELAY_S, int(run_at - now + 0.999)))
