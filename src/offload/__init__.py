"""offload: the Web-Queue-Worker pattern for Python.

Declare a typed message, enqueue it from the web tier, handle it in a worker process,
and follow the job to its result.
"""

from __future__ import annotations

from ._erase import Erasure
from .app import App, Job
from .context import Context, SyncContext
from .contract import (
    Envelope,
    FromPrincipal,
    JobFilter,
    JobRow,
    JobState,
    Lease,
    Message,
    Outcome,
    Throughput,
    WorkerInfo,
)
from .errors import (
    BackendError,
    BlobStoreError,
    Cancel,
    ConfigurationError,
    Fail,
    InvalidTransition,
    JobError,
    JobNotFound,
    JobTimeout,
    OffloadError,
    Retry,
    SchemaError,
    StorageFull,
    UnknownKind,
)
from .retry import Backoff
from .settings import Settings
from .status import JobStatus

__all__ = [
    "App",
    "BackendError",
    "Backoff",
    "BlobStoreError",
    "Cancel",
    "ConfigurationError",
    "Context",
    "Envelope",
    "Erasure",
    "Fail",
    "FromPrincipal",
    "InvalidTransition",
    "Job",
    "JobError",
    "JobFilter",
    "JobNotFound",
    "JobRow",
    "JobState",
    "JobStatus",
    "JobTimeout",
    "Lease",
    "Message",
    "OffloadError",
    "Outcome",
    "Retry",
    "SchemaError",
    "Settings",
    "StorageFull",
    "SyncContext",
    "Throughput",
    "UnknownKind",
    "WorkerInfo",
]
__version__ = "0.1.0"
