"""Signed, expiring links to results, shared by the web tier and the notifiers."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._signing import load_or_create_key, short_secret, signed_query
from .contract import JobRow, public_error, status_record
from .stores.blobs import BLOB_REF_PREFIX, blob_path, check_key, url_of

if TYPE_CHECKING:
    from .settings import Settings
    from .stores.blobs import BlobStore

#: Where the web tier serves jobs (below its mount path): the base of a record's links.
JOBS_PATH = "/v1/jobs"

#: Hex digits of the name a record shows its worker by, outside operators' views.
WORKER_LABEL_DIGITS = 16


@lru_cache(maxsize=4096)
def worker_label(secret: bytes, worker: str) -> str:
    """The name a job's owner sees its worker by: the same for every job one worker ran, but
    not the worker's own name (`host:pid:…`, for operators: the CLI, the dashboard, logs),
    which would tell every client the servers' host names. Keyed, so no one can try names."""
    digest = hmac.new(secret, b"offload.worker\x00" + worker.encode(), hashlib.sha256)
    return digest.hexdigest()[:WORKER_LABEL_DIGITS]


def key_fallbacks(settings: Settings) -> tuple[bytes, ...]:
    """OFFLOAD_SECRET_KEY_FALLBACKS, checked (settings made in code skip `from_env`).

    Raises:
        ConfigurationError: one is no key, or too short to have signed links.
    """
    from .errors import ConfigurationError
    from .settings import fallbacks_fault

    if fault := fallbacks_fault(settings.secret_key_fallbacks):
        raise ConfigurationError(fault)
    return settings.secret_key_fallbacks


def signing_key(settings: Settings) -> bytes:
    """OFFLOAD_SECRET_KEY, else a key kept beside the blobs (shared by local processes).

    Raises:
        ConfigurationError: the key is too short to sign links (`MIN_SECRET_KEY_BYTES`),
            or there is none and no local folder to keep one in.
    """
    from .errors import ConfigurationError

    if settings.secret_key:
        if not isinstance(settings.secret_key, bytes):  # (a str set in code: a 500 a link)
            raise ConfigurationError("secret_key must be bytes (OFFLOAD_SECRET_KEY's are)")
        if fault := short_secret(settings.secret_key):
            raise ConfigurationError(fault)
        return settings.secret_key
    from .stores import FileBlobStore, open_blobs

    store = open_blobs(settings.blobs_url)
    if not isinstance(store, FileBlobStore):  # no folder every local process shares
        raise ConfigurationError("set OFFLOAD_SECRET_KEY: the blob store is not a local folder")
    return load_or_create_key(Path(store.root) / ".signing-key")


def blob_refs(value: Any) -> list[str]:
    """Every `blob:<key>` reference inside a JSON value, in order."""
    if isinstance(value, str):
        return [value[len(BLOB_REF_PREFIX) :]] if value.startswith(BLOB_REF_PREFIX) else []
    if isinstance(value, dict):
        return [k for v in value.values() for k in blob_refs(v)]
    if isinstance(value, list):
        return [k for v in value for k in blob_refs(v)]
    return []


def linkable(key: str, job_id: str) -> bool:
    """Whether a `blob:<key>` in the result of job `job_id` becomes a signed link: a valid
    key that names the job (contains its id, as `f"reports/{ctx.job_id}.pdf"` does).

    A handler may put text a client sent into its result; were every `blob:` string
    linked, a client could name another owner's file (`blob:reports/<their job>.pdf`) and
    get a link to it. A key holding this job's id names a file of this job alone.
    """
    if not job_id or job_id not in key:
        return False
    try:
        check_key(key)
    except ValueError:
        return False
    return True


def result_refs(result: Any, job_id: str) -> list[str]:
    """The keys of the `blob:` references in job `job_id`'s result that become links."""
    return [key for key in blob_refs(result) if linkable(key, job_id)]


class Presenter:
    """Turns stored rows and feed records into API records with signed, expiring links.

    Args:
        secret: the signing key.
        ttl_s: how long a link stays valid.
        prefix: put before each link's path: empty for the API (relative links), the
            public base URL for links that leave the web tier (webhooks, email).
        mount: the path the web tier is mounted at (`/jobs`, empty at the root): put
            before the job links (`links.self`, `events`, `result`) of every record.
        tracebacks: show what is for operators (OFFLOAD_EXPOSE_TRACEBACKS): failures'
            tracebacks and the worker's own name; else an error is its type and message
            only, and the worker a label of its name (`worker_label`).
        blobs: the blob store; one with links of its own (S3: presigned URLs) gives those
            instead of the web tier's `/files` links, so the bytes never pass through it.
        fallbacks: keys that signed before `secret` (OFFLOAD_SECRET_KEY_FALLBACKS): links
            and tickets they signed are still accepted (`keys`).
    """

    def __init__(
        self,
        secret: bytes,
        ttl_s: float,
        prefix: str = "",
        *,
        mount: str = "",
        tracebacks: bool = False,
        blobs: BlobStore | None = None,
        fallbacks: tuple[bytes, ...] = (),
    ) -> None:
        self.secret = secret
        #: What a signature is checked with: the signing key, then the keys it replaced.
        self.keys = (secret, *fallbacks)
        self.blobs = blobs
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.mount = mount
        self.tracebacks = tracebacks

    def at(self, root_path: str) -> Presenter:
        """This presenter for a web tier mounted at `root_path` (the ASGI scope's): its file
        links and job links start with that path."""
        root = root_path.rstrip("/")
        if not root:
            return self
        return self._like(self.prefix + root, self.mount + root, self.tracebacks)

    def for_operators(self) -> Presenter:
        """This presenter for operators' pages (the dashboard): records show the worker's
        own name and failures' tracebacks."""
        if self.tracebacks:
            return self
        return self._like(self.prefix, self.mount, tracebacks=True)

    def _like(self, prefix: str, mount: str, tracebacks: bool) -> Presenter:
        """This presenter (its keys, link lifetime and store) with another prefix, mount
        path or view."""
        return Presenter(
            self.secret,
            self.ttl_s,
            prefix,
            mount=mount,
            tracebacks=tracebacks,
            blobs=self.blobs,
            fallbacks=self.keys[1:],
        )

    def link(self, key: str, now: float | None = None) -> str:
        if self.blobs is not None:
            own = url_of(self.blobs, key, timedelta(seconds=self.ttl_s))
            if own is not None:
                return own
        path = blob_path(key)
        expires = int((now or time.time()) + self.ttl_s)
        return f"{self.prefix}{path}?{signed_query(self.secret, path, expires)}"

    def sign_refs(self, value: Any, job_id: str) -> Any:
        """Job `job_id`'s result `value` with each `blob:` reference that names the job
        (`linkable`) as a signed link; any other is left as the text it is."""
        if isinstance(value, str):
            if value.startswith(BLOB_REF_PREFIX):
                key = value[len(BLOB_REF_PREFIX) :]
                return self.link(key) if linkable(key, job_id) else value
            return value
        if isinstance(value, dict):
            return {k: self.sign_refs(v, job_id) for k, v in value.items()}
        if isinstance(value, list):
            return [self.sign_refs(v, job_id) for v in value]
        return value

    def record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A status record (as `App.status` makes it) as callers see it: signed links in its
        result, its job links under the mount path, and its error without the traceback
        and its worker by label unless this presenter shows them."""
        changes: dict[str, Any] = {}
        if not self.tracebacks:
            if record.get("error") is not None:
                changes["error"] = public_error(record["error"])
            if record.get("worker") is not None:
                changes["worker"] = worker_label(self.secret, record["worker"])
        if record.get("result") is not None:
            changes["result"] = self.sign_refs(record["result"], record["id"])
        links = record.get("links")
        if self.mount and isinstance(links, dict):
            changes["links"] = {name: self.mount + path for name, path in links.items()}
        return {**record, **changes} if changes else record

    def row(self, row: JobRow) -> dict[str, Any]:
        """The status record of `row`, with signed links in its result."""
        record = status_record(row, prefix=f"{self.mount}{JOBS_PATH}", tracebacks=self.tracebacks)
        if not self.tracebacks and row.worker is not None:
            record["worker"] = worker_label(self.secret, row.worker)
        if record["result"] is not None:
            record["result"] = self.sign_refs(record["result"], row.id)
        return record
