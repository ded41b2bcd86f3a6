"""Signed, expiring links to results, shared by the web tier and the notifiers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._signing import load_or_create_key, signed_query
from .contract import JobRow, public_error, status_record
from .stores.blobs import BLOB_REF_PREFIX, blob_path

if TYPE_CHECKING:
    from .settings import Settings


def signing_key(settings: Settings) -> bytes:
    """OFFLOAD_SECRET_KEY, else a key kept beside the blobs (shared by local processes)."""
    if settings.secret_key:
        return settings.secret_key
    from .errors import ConfigurationError
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


class Presenter:
    """Turns stored rows and feed records into API records with signed, expiring links.

    Args:
        secret: the signing key.
        ttl_s: how long a link stays valid.
        prefix: put before each link's path: empty for the API (relative links), the
            public base URL for links that leave the web tier (webhooks, email).
        tracebacks: show failures' tracebacks (OFFLOAD_EXPOSE_TRACEBACKS); else an error
            is its type and message only.
    """

    def __init__(
        self, secret: bytes, ttl_s: float, prefix: str = "", *, tracebacks: bool = False
    ) -> None:
        self.secret = secret
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.tracebacks = tracebacks

    def link(self, key: str, now: float | None = None) -> str:
        path = blob_path(key)
        expires = int((now or time.time()) + self.ttl_s)
        return f"{self.prefix}{path}?{signed_query(self.secret, path, expires)}"

    def sign_refs(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith(BLOB_REF_PREFIX):
            return self.link(value[len(BLOB_REF_PREFIX) :])
        if isinstance(value, dict):
            return {k: self.sign_refs(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.sign_refs(v) for v in value]
        return value

    def record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A status record as callers see it: signed links in its result, and its error
        without the traceback unless this presenter shows them."""
        if not self.tracebacks and record.get("error") is not None:
            record = {**record, "error": public_error(record["error"])}
        if record.get("result") is None:
            return record
        return {**record, "result": self.sign_refs(record["result"])}

    def row(self, row: JobRow) -> dict[str, Any]:
        """The status record of `row`, with signed links in its result."""
        return self.record(status_record(row, tracebacks=self.tracebacks))
