"""The BlobStore seam and its local filesystem implementation."""

from __future__ import annotations

import asyncio
import mimetypes
import os
import re
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

from ..errors import ConfigurationError

#: A result value that names a stored blob starts with this; the web tier signs it.
BLOB_REF_PREFIX = "blob:"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,511}$")


def check_key(key: str) -> str:
    """A blob key is a relative path of safe characters, with no `..` segment."""
    if not _KEY.match(key) or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}")
    return key


@runtime_checkable
class BlobStore(Protocol):
    """Files: results and large payloads, served through signed, expiring links."""

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        """Store `data` under `key` (replacing it); returns the reference `blob:<key>`."""
        ...

    async def get(self, key: str) -> bytes:
        """The stored bytes. Raises FileNotFoundError."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; a missing one is not an error."""
        ...

    def path_of(self, key: str) -> Path | None:
        """A local file for `key` when the store is on this filesystem, else None."""
        ...


class FileBlobStore:
    """Blobs as files under one folder; writes are atomic (temp file, then rename)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path_of(self, key: str) -> Path:
        return self.root / check_key(key)

    def _put(self, key: str, data: bytes) -> None:
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        await asyncio.to_thread(self._put, key, data)
        return BLOB_REF_PREFIX + key

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path_of(key).read_bytes)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path_of(key).unlink, True)


def content_type_of(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def blob_path(key: str) -> str:
    """The web path that serves a blob (signed query parameters go after it)."""
    return "/files/" + quote(check_key(key))


def open_blobs(url: str) -> BlobStore:
    """`file:///abs/dir`, `file://relative/dir` or a bare folder path."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = (parts.netloc + parts.path) if parts.scheme else url
        return FileBlobStore(path or "blobs")
    raise ConfigurationError(f"unsupported OFFLOAD_BLOBS_URL scheme {parts.scheme!r}")
