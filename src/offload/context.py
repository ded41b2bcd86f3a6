"""Context: what a handler gets beside its message (the worker makes one per attempt)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, overload

from ._jsonable import jsonable
from ._loop import running_loop
from ._text import storable
from .contract import Lease
from .errors import BackendError, _Unstorable
from .stores.blobs import StreamSource, put_stream

if TYPE_CHECKING:
    from .brokers import Backend
    from .stores import BlobStore

logger = logging.getLogger("offload.job")
#: Progress reports closer together than this (seconds) are coalesced: the latest waiting
#: is stored once this has passed since the last one stored (and as its attempt ends,
#: before its outcome), so a handler that reports every row of a million costs the backend
#: ten writes a second, and its watchers ten events, not a million of each.
PROGRESS_EVERY_S = 0.1
#: After a progress update the backend could not store, how long later ones are skipped
#: (seconds): each would wait out the retry deadline again while the outage lasts.
PROGRESS_PAUSE_S = 5.0
#: A process's progress that was not stored is said at most once per `PROGRESS_PAUSE_S` (at
#: debug in between, counted in the next warning's `unsaid`): every running handler meets the
#: same outage, and each said it (the worker's own loops say an outage once per 10 s).
_progress_unsaid = {"until": float("-inf"), "count": 0}
_MAKING = threading.Lock()
T = TypeVar("T")
#: What a step's value is read back as (`Context.once`): its JSON.
JSONValue = str | int | float | bool | None | dict[str, Any] | list[Any]
#: A step's value that reads back as the type it is, a JSON scalar (another reads back as
#: its JSON: a model as a dict, a tuple as a list, a datetime as text; the items of a dict
#: or list as theirs, typed Any).
S = TypeVar("S", bound=str | int | float | bool | None)
#: What a context's call is to a type checker in an async handler (`Context`).
_Call = Coroutine[object, None, T]


class Context:
    """The job's id and attempt, progress reporting, blobs, a logger, idempotent steps and
    the cancellation signal.

    In an async handler `await ctx.progress(...)`; in a plain (threaded) handler call
    `ctx.progress(...)` without await: it blocks until the progress is stored.
    """

    def __init__(
        self, lease: Lease, backend: Backend, blobs: BlobStore, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.lease = lease
        self.job_id = lease.job_id
        self.attempt = lease.envelope.attempt
        self.max_attempts = lease.envelope.max_attempts
        self.kind = lease.envelope.kind
        self.owner = lease.envelope.owner
        self._blobs = blobs
        self.log = _JobLog(
            logger,
            {
                "job_id": self.job_id,
                "kind": self.kind,
                "queue": lease.envelope.queue,
                "attempt": self.attempt,
            },
        )
        self._cancelled: threading.Event | None = None
        self._backend = backend
        self._loop = loop
        self._progress_paused_until = 0.0  # monotonic: `progress` skips until then
        self._progress_at = float("-inf")  # monotonic: when the last report was stored
        #: The latest report waiting to be stored (`PROGRESS_EVERY_S`), and what stores it.
        self._progress_next: tuple[float | None, str | None] | None = None
        self._progress_later: asyncio.Task[None] | None = None
        self._progress_hurry: asyncio.Event | None = None  # set: store it now
        self._progress_lock: asyncio.Lock | None = None  # reports stored in their order
        self._progress_holds = True  # what the last report stored was told
        self._progress_error: Exception | None = None  # what storing one later raised
        #: The attempt settled or was dropped: a report made after (a thread or task of the
        #: handler's that runs on) is stored at once, by no task that would outlive it.
        self._progress_over = False
        #: The worker (or its caller) asked the run to end (`_end_run`).
        self._ending = False
        #: Where a handler's thread hands its calls to the worker's loop (`_bridge`): the
        #: worker's own, which it closes as it stops (`Handoffs`).
        self._handoffs = _NEVER_CLOSED
        #: Whether the run may still act for its job (its worker's lease check), or None
        #: (a context its caller holds the lease of: the serverless consumer's).
        self._holds: Callable[[], Awaitable[bool]] | None = None

    @property
    def blobs(self) -> BlobStore:
        """The blob store: `await ctx.blobs.put(key, data)` in an async handler; in a plain
        (threaded) handler `ctx.blobs.put(key, data)` without await, which blocks until the
        blob is stored (run on the worker's loop), as `progress` does. A write (`put`,
        `delete`) of a run whose worker lost the job's lease raises RuntimeError."""
        store = self._fenced_store()
        if self._on_loop():
            return cast("BlobStore", store)
        return cast("BlobStore", _BlockingBlobs(store, self._bridge))

    async def _fenced(self) -> None:
        """Raise unless the run may still act for its job (`_holds`): a worker that stalled
        past the lease and woke (its handler's timer before its heartbeat), or whose
        heartbeat found the lease lost, ran a side step again while another worker's run of
        the job ran it, and wrote over the file that run had written.

        Raises:
            RuntimeError: the job's lease is lost (or could not be confirmed).
        """
        if self._holds is not None and not await self._holds():
            raise RuntimeError(
                f"job {self.job_id}: this worker no longer holds the job's lease (another "
                "worker may run it now): the step or write did not happen"
            )

    @property
    def cancelled(self) -> threading.Event:
        """Set when the job was cancelled (DELETE), timed out, or the worker is stopping.

        Made on first use: most attempts never look, and making an Event (a lock and a
        condition) for each was about 5% of a worker's own time per no-op job."""
        made = self._cancelled
        if made is None:
            with _MAKING:  # a handler thread and the loop may ask at once: one Event
                made = self._cancelled
                if made is None:
                    made = self._cancelled = threading.Event()
        return made

    def _end_run(self) -> None:
        """The worker (or the serverless consumer) asks this run to end, before it cancels
        it: the handler is told (`cancelled`), and whatever the run raises from now on ends
        it as asked (its cleanup may raise), not as a failure of its own."""
        self._ending = True
        self.cancelled.set()

    def _on_loop(self) -> bool:
        """Whether the caller runs on the worker's loop (an async handler), not in a thread."""
        return running_loop() is self._loop

    def _bridge(self, coro: Awaitable[Any], *, cut: bool = True) -> Any:
        """Awaitable in the worker's loop; blocking (run on that loop) from a handler thread;
        awaitable on a loop of the handler's own (`asyncio.run` in a plain handler).

        Raises:
            RuntimeError: the worker that ran this attempt has stopped (`Handoffs.close`), or
                its loop has closed: what the call needed will never run.
        """
        running = running_loop()
        if running is self._loop:
            return coro
        # (`cut=False`: a call that its run's cut leaves alone, a step's record after `fn` ran)
        future = self._handoffs.hand(coro, self._loop, tag=self if cut else None)
        if future is None:
            raise self._gone()
        if running is None:
            try:
                return future.result()
            except concurrent.futures.CancelledError:
                if self._handoffs.refuses(self):
                    raise self._gone() from None
                raise
        return self._awaited_here(future)  # (a coroutine, as it is typed)

    async def _awaited_here(self, future: concurrent.futures.Future[Any]) -> Any:
        """A call handed to the worker's loop, awaited on a loop of the handler's own."""
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._handoffs.refuses(self) and not (task is not None and task.cancelling()):
                raise self._gone() from None  # (the worker stopped, not this task)
            raise

    def _gone(self) -> _WorkerGone:
        if not self._handoffs.stopped_for(self):  # (this run's calls cut: `Handoffs.cut`)
            return _WorkerGone(
                f"job {self.job_id}: this worker no longer holds the job's lease for this "
                "run (lost, or its attempt is over and the job may run again): return when "
                "ctx.cancelled is set"
            )
        return _WorkerGone(
            f"job {self.job_id}: the worker that ran this attempt has stopped (its "
            "handler's thread ran on past the attempt's end): return when ctx.cancelled "
            "is set"
        )

    def _report_progress(self, fraction: float | None = None, message: str | None = None) -> Any:
        """Report progress: `fraction` in 0..1 and a short message. Returns False (or an
        awaitable of False) when this worker no longer holds the job."""
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError("progress fraction must be between 0 and 1")
        if message is not None:
            message = storable(message[:200])
        try:
            return self._bridge(self._progress(fraction, message))
        except _WorkerGone:
            if running_loop() is not None:  # (a loop of the handler's own is told so)
                raise
            return False  # (a thread's: its worker has stopped, it holds the job no more)

    async def _progress(self, fraction: float | None, message: str | None) -> bool:
        """Store the report now, or, within `PROGRESS_EVERY_S` of the last one stored, once
        that has passed (a later report made meanwhile stands for it). Returns what the
        backend said of it (False: this worker holds the job no more), or for one that
        waits, what it said of the last one stored."""
        if (error := self._progress_error) is not None:
            self._progress_error = None
            raise error  # (a report stored later failed: this call is told, as it was)
        now = monotonic()
        if self._progress_lock is None:
            self._progress_lock = asyncio.Lock()
        if now - self._progress_at >= PROGRESS_EVERY_S:
            self._progress_next = None  # (a report waiting is older: this one stands)
            return await self._store_progress(now, fraction, message)
        if self._progress_over:  # (past its attempt: dropped, stored by no task that waits)
            return self._progress_holds
        self._progress_next = (fraction, message)
        if self._progress_later is None:
            self._progress_hurry = hurry = asyncio.Event()
            later = asyncio.get_running_loop().create_task(self._store_later(hurry))
            self._progress_later = later
        return self._progress_holds

    async def _store_progress(self, at: float, fraction: float | None, message: str | None) -> bool:
        self._progress_at = at
        assert self._progress_lock is not None
        async with self._progress_lock:  # (after one stored before it, not overtaking it)
            holds = await self._progress_stored(fraction, message)
        self._progress_holds = holds
        return holds

    async def _store_later(self, hurry: asyncio.Event) -> None:
        """Store the report waiting once its time has come, and the next that comes
        meanwhile, until none waits; hurried (`_progress_settled`), the one waiting then at
        once, and no more (a handler's thread or task that reports on past its attempt's end
        would hold its outcome back). An error other than an outage (`_progress_stored`
        takes those) is kept for the handler's next report or the attempt's end."""
        try:
            while self._progress_next is not None:
                due = self._progress_at + PROGRESS_EVERY_S - monotonic()
                if due > 0 and not hurry.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(hurry.wait(), min(due, PROGRESS_EVERY_S))
                    if not hurry.is_set():
                        continue  # (due now, unless one was stored at once meanwhile)
                report, self._progress_next = self._progress_next, None  # (the latest)
                if report is not None:
                    await self._store_progress(monotonic(), *report)
                if hurry.is_set():
                    break
        except Exception as exc:
            self._progress_error = exc
        finally:
            if self._progress_hurry is hurry:  # (its own, not a later task's)
                self._progress_later = self._progress_hurry = None

    async def _progress_settled(self) -> None:
        """Store the report still waiting, as the attempt ends (its outcome comes next, and
        would fence a later one out).

        Raises:
            Exception: what storing a report that waited raised (not an outage: the
                backend's own error, as the handler's call would have raised it).
        """
        self._progress_over = True
        later = self._progress_later
        if later is not None and self._progress_hurry is not None:
            self._progress_hurry.set()
            await later
        if (error := self._progress_error) is not None:
            self._progress_error = None
            raise error

    def _progress_dropped(self) -> None:
        """Let the report still waiting go: the run was asked to end (a stop, a cancel)."""
        self._progress_over = True
        if self._progress_later is not None:
            self._progress_later.cancel()
        self._progress_later = self._progress_hurry = None
        self._progress_next = self._progress_error = None

    async def _progress_stored(self, fraction: float | None, message: str | None) -> bool:
        """Store the progress, at best: it is for those who watch the job, so a backend that
        cannot be reached (past the retry deadline) costs them this update, not the job its
        attempt; and the calls of the next `PROGRESS_PAUSE_S` are skipped at once, not each
        held up to that deadline. Returns True then (this worker may well still hold the
        job: its outcome is fenced by its lease whatever it is told here)."""
        if self._progress_paused_until > monotonic():
            return True
        try:
            return bool(await self._backend.progress(self.lease, fraction, message))
        except BackendError as exc:
            now = monotonic()
            self._progress_paused_until = now + PROGRESS_PAUSE_S
            said = {"action": "progress_not_stored", "job_id": self.job_id, "kind": self.kind}
            if now < _progress_unsaid["until"]:
                _progress_unsaid["count"] += 1
                logger.debug("progress not stored: %s", exc, extra=said)
                return True
            unsaid, _progress_unsaid["count"] = _progress_unsaid["count"], 0
            _progress_unsaid["until"] = now + PROGRESS_PAUSE_S
            logger.warning(  # (not self.log: an adapter replaces `extra` before 3.13)
                "progress not stored (the next %g s of it skipped%s): %s",
                PROGRESS_PAUSE_S,
                f"; {unsaid} more since the last warning" if unsaid else "",
                exc,
                extra={**said, "unsaid": unsaid},
            )
            return True

    def _run_once(self, step: str, fn: Callable[[], Any]) -> Any:
        """Run a side step once per job across retries and re-deliveries.

        The step's JSON result is stored once `fn` returns; a repeat returns it without
        running `fn` again. Every attempt gets the step's value as stored (a pydantic model
        as its JSON, a tuple as a list), the first one stored: where another worker stored
        its own meanwhile (this one lost its lease while `fn` ran), that one. (A worker that
        dies, or loses its lease, while `fn` runs may run it again: give external calls
        `idempotency_key(step)`.) `fn` may be a plain function or an async one; from a
        plain handler, a plain `fn` runs in the handler's thread, so a blocking step blocks
        that handler alone.

        Raises:
            ValueError: a step named `offload.…`, offload's own records' names.
        """
        _check_step(step)
        if self._on_loop():
            return self._once(step, fn)
        if running_loop() is not None:  # a loop of the handler's own: awaitable there
            return self._once_here(step, fn)
        found, value = self._bridge(self._backend.recall(self.job_id, step))
        if found:
            return value
        self._bridge(self._fenced())
        value = fn()
        if inspect.isawaitable(value):
            value = self._bridge(value)
        # Recorded even if the run was cut meanwhile: `fn` ran, and a retry that finds its
        # value does not run it again.
        return self._bridge(self._kept(step, value), cut=False)

    async def _once_here(self, step: str, fn: Callable[[], Any]) -> Any:
        """`once` on a loop of the handler's own: `fn` runs there (an async step may use
        what that loop made; a blocking one blocks it, not the worker's), its value is
        stored on the worker's loop."""
        found, value = await self._bridge(self._backend.recall(self.job_id, step))
        if found:
            return value
        await self._bridge(self._fenced())
        value = fn()
        if inspect.isawaitable(value):
            value = await value
        return await self._bridge(self._kept(step, value), cut=False)

    async def _once(self, step: str, fn: Callable[[], Any]) -> Any:
        found, value = await self._backend.recall(self.job_id, step)
        if found:
            return value
        await self._fenced()
        value = fn()
        if inspect.isawaitable(value):
            value = await value
        return await self._kept(step, value)

    async def _kept(self, step: str, value: Any) -> Any:
        """Store a step's value unless one is stored already, and return the one that stands
        (as stored: a model as its JSON)."""
        stored = _step_value(step, value)
        await self._backend.remember(self.job_id, step, stored, first=True)
        found, first = await self._backend.recall(self.job_id, step)
        return first if found else stored

    def _put_stream(self, key: str, source: StreamSource, content_type: str | None = None) -> Any:
        """Store a large file in the blob store without holding it in memory: `source` is a
        file path, a binary file object or an async iterator of bytes (S3: a multipart
        upload above the part size; a folder: a temp file renamed into place). Returns the
        reference `blob:<key>` to put in the result (awaitable in an async handler)."""
        return self._bridge(put_stream(self._fenced_store(), key, source, content_type))

    def _fenced_store(self) -> Any:
        """The blob store whose writes check the run's lease first (`_FencedBlobs`); the
        store itself for a context without that check (the serverless consumer's)."""
        return self._blobs if self._holds is None else _FencedBlobs(self._blobs, self._fenced)

    if TYPE_CHECKING:
        # What an async handler's calls are to a type checker: awaitables, so that one left
        # unawaited (which does nothing: no progress stored, a step never run) is reported
        # (mypy's unused-coroutine, pyright's reportUnusedCoroutine). A plain handler's
        # context is a `SyncContext`, whose calls return their values.

        def progress(
            self, fraction: float | None = None, message: str | None = None
        ) -> _Call[bool]: ...

        @overload
        def once(self, step: str, fn: Callable[[], Awaitable[S]]) -> _Call[S]: ...

        @overload
        def once(self, step: str, fn: Callable[[], S]) -> _Call[S]: ...

        @overload
        def once(
            self, step: str, fn: Callable[[], Awaitable[Mapping[str, object]]]
        ) -> _Call[dict[str, Any]]: ...

        @overload
        def once(
            self, step: str, fn: Callable[[], Mapping[str, object]]
        ) -> _Call[dict[str, Any]]: ...

        @overload
        def once(
            self, step: str, fn: Callable[[], Awaitable[list[Any] | tuple[Any, ...]]]
        ) -> _Call[list[Any]]: ...

        @overload
        def once(
            self, step: str, fn: Callable[[], list[Any] | tuple[Any, ...]]
        ) -> _Call[list[Any]]: ...

        @overload
        def once(self, step: str, fn: Callable[[], object]) -> _Call[JSONValue]: ...

        def once(self, step: str, fn: Callable[[], Any]) -> Any: ...

        def put_stream(
            self, key: str, source: StreamSource, content_type: str | None = None
        ) -> _Call[str]: ...

    else:
        progress = _report_progress
        once = _run_once
        put_stream = _put_stream
        for _method, _name in ((progress, "progress"), (once, "once"), (put_stream, "put_stream")):
            _method.__name__, _method.__qualname__ = _name, f"Context.{_name}"
        del _method, _name

    def idempotency_key(self, step: str = "") -> str:
        """A stable key for an external call (payments, emails): the same on every attempt."""
        return f"{self.job_id}:{step}" if step else self.job_id


class SyncBlobs(Protocol):
    """The blob store as a plain handler calls it (`ctx.blobs` of a `SyncContext`): each
    call blocks until it is done on the worker's loop."""

    def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        """Store `data` under `key` (replacing it); returns the reference `blob:<key>`."""
        ...

    def get(self, key: str) -> bytes:
        """The stored bytes. Raises FileNotFoundError."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; a missing one is not an error."""
        ...

    def path_of(self, key: str) -> Path | None:
        """A local file for `key` when the store is on this filesystem, else None."""
        ...


class SyncContext(Context):
    """The context of a plain (`def`) handler, typed for its calls without `await`: with
    `ctx: SyncContext`, `ctx.progress(...)` is a `bool`, `ctx.blobs.put(...)` a `str` and
    `ctx.once(step, fn)` what `fn` returns where that is JSON, else its JSON (a model reads
    back as a dict). The worker passes one to every plain handler (an async handler gets a
    `Context`, whose calls a type checker takes as awaitables); it behaves as `Context`
    does."""

    if TYPE_CHECKING:

        @property
        def blobs(self) -> SyncBlobs:  # type: ignore[override]  # (the same store, unawaited)
            ...

        def progress(  # type: ignore[override]  # (its value, unawaited)
            self, fraction: float | None = None, message: str | None = None
        ) -> bool: ...

        @overload  # type: ignore[override]
        def once(self, step: str, fn: Callable[[], Awaitable[S]]) -> S: ...

        @overload
        def once(self, step: str, fn: Callable[[], S]) -> S: ...

        @overload
        def once(
            self, step: str, fn: Callable[[], Awaitable[Mapping[str, object]]]
        ) -> dict[str, Any]: ...

        @overload
        def once(self, step: str, fn: Callable[[], Mapping[str, object]]) -> dict[str, Any]: ...

        @overload
        def once(
            self, step: str, fn: Callable[[], Awaitable[list[Any] | tuple[Any, ...]]]
        ) -> list[Any]: ...

        @overload
        def once(self, step: str, fn: Callable[[], list[Any] | tuple[Any, ...]]) -> list[Any]: ...

        @overload
        def once(self, step: str, fn: Callable[[], object]) -> JSONValue: ...

        def once(  # pyright: ignore[reportIncompatibleMethodOverride]
            self, step: str, fn: Callable[[], Any]
        ) -> Any: ...

        def put_stream(  # type: ignore[override]
            self, key: str, source: StreamSource, content_type: str | None = None
        ) -> str: ...


if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:  # (subscripted at run time only from Python 3.11.? on)
    _Adapter = logging.LoggerAdapter


class _JobLog(_Adapter):
    """`ctx.log`: its records carry the job's fields and the `extra` a call passes (a
    plain LoggerAdapter replaced the call's with its own before Python 3.13)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


class _WorkerGone(RuntimeError):
    """A handler's thread called its context after its worker stopped."""


class Handoffs:
    """The calls that a worker's handlers' threads hand to its loop (`Context._bridge`).

    As it stops, the worker closes them (`aclose`): a call still waiting is cancelled (its
    cleanup awaited, within a bound), and one made after is refused at once. Without it, a
    call handed over as the loop made its last run would wait for ever, and hold its
    process's exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: The calls not yet ended, each with the tag it was handed with (its context).
        self._waiting: dict[concurrent.futures.Future[Any], object] = {}
        #: The tags whose calls were cut (`cut`), each with whether its worker was stopping
        #: (weakly: a long-lived worker keeps no context it cut).
        self._cut: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        #: The calls under way on the loop (touched only there).
        self._running: set[asyncio.Task[Any]] = set()
        self.closed = False

    def hand(
        self, coro: Awaitable[Any], loop: asyncio.AbstractEventLoop, *, tag: object = None
    ) -> concurrent.futures.Future[Any] | None:
        """`coro` handed to `loop` to run; None (`coro` closed, never run) once closed, or
        once `loop` has, or once `tag`'s calls were cut."""
        call = _Handed(coro, self._lock)
        future = None
        with self._lock:
            if not (self.closed or (tag is not None and tag in self._cut) or loop.is_closed()):
                run = self._run(call)
                try:
                    future = asyncio.run_coroutine_threadsafe(run, loop)
                except RuntimeError:  # (the loop closed just now)
                    run.close()
                else:
                    self._waiting[future] = tag
        if future is None:
            call.abandon()
            return None
        # (outside the lock: it may run at once)
        future.add_done_callback(functools.partial(self._ended, call))
        return future

    async def _run(self, call: _Handed) -> Any:
        if not call.start():  # (cancelled before the loop took it: it never runs)
            raise asyncio.CancelledError
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            return await call.awaitable
        finally:
            self._running.discard(task)

    def _ended(self, call: _Handed, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._waiting.pop(future, None)
        if future.cancelled():
            call.abandon()  # (one the loop never took is closed, not left unawaited)

    def close(self) -> None:
        """Cancel the calls still waiting and refuse those to come (from any thread: a
        call under way on the loop is cancelled there, at its next step)."""
        with self._lock:
            self.closed = True
            waiting, self._waiting = list(self._waiting), {}
        for future in waiting:
            future.cancel()

    def cut(self, tag: object, *, stopping: bool = False) -> None:
        """Cancel the calls handed with `tag` (one context's) and refuse its next ones, as
        `close` does all: a stopping worker's grace is over, and the thread that made them
        waits on them still (a `ctx.once` step's long await held one SIGTERM's stop)."""
        with self._lock:
            self._cut[tag] = stopping
            waiting = [future for future, of in self._waiting.items() if of is tag]
        for future in waiting:
            future.cancel()

    def refuses(self, tag: object) -> bool:
        """Whether a call handed with `tag` now is refused (closed, or `tag` cut)."""
        return self.closed or (tag is not None and tag in self._cut)

    def stopped_for(self, tag: object) -> bool:
        """Whether calls of `tag` are refused because its worker stops (closed, or cut as
        it stopped), not because its run lost the job."""
        return self.closed or (tag is not None and self._cut.get(tag, False))

    async def aclose(self, within_s: float) -> int:
        """`close`, on the worker's loop, then wait `within_s` at most for the calls under
        way there to end (a cancelled query's cleanup: cut short by the loop's end, it
        warned and left its connection to be closed). Returns how many still run: each
        ignored its cancellation (a step that catches `CancelledError` and goes on), and
        the loop's end would wait for it, maybe for ever."""
        self.close()
        for _ in range(2):  # (a call handed just before gets its task, then its cancel)
            await asyncio.sleep(0)
        running = {task for task in self._running if not task.done()}
        if running:
            _, running = await asyncio.wait(running, timeout=within_s)
        return len(running)


class _Handed:
    """One call handed to the loop: it starts there, or, cancelled before the loop took
    it, is closed (never run)."""

    __slots__ = ("_lock", "_state", "awaitable")

    def __init__(self, awaitable: Awaitable[Any], lock: threading.Lock) -> None:
        self.awaitable = awaitable
        self._lock = lock
        self._state = 0  # 1: started, 2: abandoned

    def start(self) -> bool:
        with self._lock:
            if self._state:
                return False
            self._state = 1
            return True

    def abandon(self) -> None:
        with self._lock:
            if self._state:
                return
            self._state = 2
        if inspect.iscoroutine(self.awaitable):
            self.awaitable.close()


#: A context's hand-offs until its worker gives it its own (a context made elsewhere).
_NEVER_CLOSED = Handoffs()


class _FencedBlobs:
    """A blob store whose async methods but its reads (`get`, `probe`) first make sure the
    run may still act for its job (`fenced`: `Context._fenced`): `put`, `delete`,
    `put_stream` and those of a store of the user's own; the rest are the store's. (A plain
    handler's thread whose run was cut, `Handoffs.cut`, has every call refused, reads too:
    it hands nothing to the loop any more.)"""

    _READS = frozenset({"get", "probe"})

    def __init__(self, store: BlobStore, fenced: Callable[[], Awaitable[None]]) -> None:
        self._store = store
        self._fenced = fenced

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if name in self._READS or not inspect.iscoroutinefunction(found):
            return found

        async def write(*args: Any, **kwargs: Any) -> Any:
            await self._fenced()
            return await found(*args, **kwargs)

        return write


class _BlockingBlobs:
    """A blob store as a handler's thread calls it: each of its async methods blocks until
    it is done on the worker's loop (`bridge`); the rest (`path_of`) are the store's."""

    def __init__(self, store: BlobStore, bridge: Callable[[Awaitable[Any]], Any]) -> None:
        self._store = store
        self._bridge = bridge

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if not inspect.iscoroutinefunction(found):
            return found
        return lambda *args, **kwargs: self._bridge(found(*args, **kwargs))


def _step_value(step: str, value: Any) -> Any:
    """A `ctx.once` step's value as its record stores it, as a result is (a pydantic model
    as its JSON).

    Raises:
        _Unstorable: what no record stores (a set, a NUL character): the job fails for good,
            as its step ran (a retry would run it again, each attempt).
    """
    try:
        return jsonable(value)
    except (TypeError, ValueError) as exc:
        raise _Unstorable(exc, step) from exc


def _check_step(step: str) -> None:
    if step.startswith("offload."):
        raise ValueError(
            f"a step named {step!r}: names starting with 'offload.' are offload's own "
            "(a job's delivery records)"
        )
