"""The whole exception tree of offload.

OffloadError
├── ConfigurationError
├── BackendError
│   ├── SchemaError
│   └── StorageFull        (the disk under the backend is full: nothing can be written)
├── JobError
│   ├── UnknownKind
│   ├── JobNotFound
│   ├── InvalidTransition
│   ├── JobTimeout         (also a TimeoutError)
│   └── UpgradeError       (a stored payload could not be brought to the current version)
│       └── MissingUpgrader
├── DeliveryError          (a webhook or email could not be delivered; retried)
│   └── TargetRefused      (the target is not allowed: never retried)
└── HandlerSignal          (raised by handlers to steer their own job)
    ├── Retry
    └── Cancel
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from .retry import retry_delay

if TYPE_CHECKING:
    from .contract import JobState


class OffloadError(Exception):
    """An offload operation failed."""


class ConfigurationError(OffloadError):
    """offload is configured wrongly (a bad URL, a missing extra, a bad setting)."""


class BackendError(OffloadError):
    """The queue or store backend failed; the driver's error is kept as the cause."""

    #: The backend was out of reach for the whole retry deadline: a lost, refused or silent
    #: connection, tried again until then (not an error the server answered).
    out_of_reach: bool = False


class SchemaError(BackendError):
    """The backend's schema is older (or newer) than this version of offload."""


class BlobStoreError(BackendError):
    """The blob store (S3, a folder) failed or cannot be reached: payloads over the claim
    check's size and results' files wait for it; the job backend may be fine."""


class StorageFull(BackendError):
    """The backend's storage is full: nothing more can be written until space is freed
    (what is already written is kept)."""


class JobError(OffloadError):
    """A job could not be handled as asked."""


class UnknownKind(JobError):
    """No message class is registered for this kind."""


class JobNotFound(JobError):
    """No such job (or it belongs to someone else)."""


class InvalidTransition(JobError):
    """The job is not in a state that allows this change."""


class JobTimeout(JobError, TimeoutError):
    """The job did not reach a final state in time; it goes on (wait again, or cancel it).

    Args:
        job_id: the job waited for.
        kind: its kind, when known.
        timeout_s: how long the caller waited.
        state: the state it was last seen in.
    """

    def __init__(
        self, job_id: str, *, kind: str = "", timeout_s: float, state: JobState | None = None
    ) -> None:
        what = f"job {job_id} ({kind})" if kind else f"job {job_id}"
        seen = f": it is {state}" if state is not None else ""
        super().__init__(f"{what} did not finish within {timeout_s:g}s{seen}")
        self.job_id = job_id
        self.kind = kind
        self.timeout_s = timeout_s
        self.state = state


class UpgradeError(JobError):
    """A job's payload, stored at an older version, could not be upgraded to the version its
    handler takes: an upgrader raised, or returned neither a dict nor a Message."""


class MissingUpgrader(UpgradeError):
    """A job is stored at a version from which no chain of upgraders (`@app.upgrade`)
    reaches the version its handler takes: one step is missing."""


class DeliveryError(OffloadError):
    """A notification could not be delivered; the delivery job is retried.

    Args:
        message: what went wrong.
        code: the receiver's answer (an HTTP status or SMTP reply code), when it gave one.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TargetRefused(DeliveryError):
    """The notification's target is not allowed (a private address, a bad URL)."""


class HandlerSignal(Exception):
    """Raised inside a handler to decide the job's fate."""


class Retry(HandlerSignal):
    """Run this job again later, spending one attempt.

    Args:
        delay: seconds (or a `timedelta`) to wait before the next attempt, 0 to 366 days;
            the kind's backoff when None.
        reason: why, recorded as the job's error.

    Raises:
        ValueError: a delay that is no number of seconds from 0 to 366 days (a NaN, an
            infinity): the handler fails with it, and the job is retried by its backoff.
    """

    def __init__(
        self, delay: float | timedelta | None = None, reason: str = "retry requested"
    ) -> None:
        super().__init__(reason)
        self.delay = None if delay is None else retry_delay(delay)
        self.reason = reason


class Cancel(HandlerSignal):
    """Stop this job for good: it ends `cancelled` and is not retried."""

    def __init__(self, reason: str = "cancelled by handler") -> None:
        super().__init__(reason)
        self.reason = reason


class Fail(HandlerSignal):
    """End this job `failed` for good, whatever retry budget it has left: an error no retry
    can mend (a card declined, a file that is not there). `raise Fail("why") from exc` keeps
    the cause in the traceback operators read.

    Args:
        reason: why, recorded as the job's error.
    """

    def __init__(self, reason: str = "failed by handler") -> None:
        super().__init__(reason)
        self.reason = reason


class _ForAnotherWorker(HandlerSignal):
    """Give this job back unspent, for a worker whose code can run it (offload's own use:
    a Django task this worker's code lacks); the job waits as one given back for its
    version does. `reason` says what it waits for."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Unstorable(HandlerSignal):
    """A handler's return value its job's result cannot store (offload's own use: a Django
    task's value `normalize_json` refuses), or, with `step`, a `ctx.once` step's value;
    `cause` says why. The job fails for good: its handler (its step) ran, and a retry would
    only run it again."""

    def __init__(self, cause: Exception, step: str | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.step = step
