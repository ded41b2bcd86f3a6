"""The BlobStore seam and its local filesystem implementation."""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

from ..errors import BlobStoreError, ConfigurationError

#: A result value that names a stored blob starts with this; the web tier signs it.
BLOB_REF_PREFIX = "blob:"
#: Bytes read from a streamed source at a time (the most a local streaming put holds).
DEFAULT_CHUNK_BYTES = 1 << 20
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,511}$")

#: What a streaming put reads: a file path, a binary file object or an async iterator of bytes.
StreamSource = str | os.PathLike[str] | IO[bytes] | AsyncIterable[bytes]


def check_key(key: str) -> str:
    """A blob key is a relative path of safe characters, with no `..` segment."""
    if not _KEY.fullmatch(key) or any(p in ("", ".", "..") for p in key.split("/")):
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


async def chunks_of(source: StreamSource, size: int = DEFAULT_CHUNK_BYTES) -> AsyncIterator[bytes]:
    """The bytes of a streaming put's source, `size` at most at a time (never all at once).

    File reads run in a thread, so a slow disk does not stall the event loop.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:  # noqa: ASYNC230 - each read runs in a thread below
            async for chunk in chunks_of(f, size):
                yield chunk
        return
    if hasattr(source, "read"):
        reader: IO[bytes] = source  # type: ignore[assignment]
        while chunk := await asyncio.to_thread(reader.read, size):
            yield chunk
        return
    async for chunk in source:
        if chunk:
            yield bytes(chunk)


async def put_stream(
    store: BlobStore, key: str, source: StreamSource, content_type: str | None = None
) -> str:
    """Store a streamed source under `key` with the store's own streaming put; a store
    without one (a user's) gets the bytes joined in memory. Returns `blob:<key>`."""
    streaming = getattr(store, "put_stream", None)
    if streaming is not None:
        ref: str = await streaming(key, source, content_type)
        return ref
    data = b"".join([chunk async for chunk in chunks_of(source)])
    return await store.put(key, data, content_type)


def url_of(store: BlobStore, key: str, ttl: timedelta) -> str | None:
    """The store's own expiring download link for `key` (S3: presigned), or None when the
    web tier serves the blob through its signed `/files` links (a local folder)."""
    url = getattr(store, "url", None)
    return None if url is None else url(key, ttl)


def describe_blobs(store: BlobStore) -> str:
    """Where `store` keeps its blobs, fit to print (never a credential): a folder's resolved
    path, `s3://bucket/prefix at endpoint`, or the class of a store of the user's own."""
    describe = getattr(store, "describe", None)
    return describe() if describe is not None else type(store).__name__


async def probe_blobs(store: BlobStore, timeout_s: float) -> None:
    """Check at start-up that `store` can be used, within about `timeout_s` seconds (a
    store of the user's own without a `probe` method is taken as it is).

    Raises:
        BlobStoreError: one line naming the store and what failed.
    """
    probe = getattr(store, "probe", None)
    if probe is None:
        return
    try:
        await asyncio.wait_for(probe(timeout_s), timeout_s * 2)
    except TimeoutError:
        raise BlobStoreError(
            f"blob store {describe_blobs(store)}: no answer within {timeout_s:g} s "
            "(OFFLOAD_CONNECT_TIMEOUT)"
        ) from None


class FileBlobStore:
    """Blobs as files under one folder; writes are atomic (temp file, then rename)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        # Resolved now: a handler's os.chdir must not move later blobs elsewhere.
        self.root = Path(root).absolute()

    def describe(self) -> str:
        """The folder's resolved path."""
        return str(self.root.resolve())

    async def probe(self, timeout_s: float) -> None:
        """Check that the folder exists (or can be made) and takes a file.

        Raises:
            BlobStoreError: it cannot be made or written, saying why.
        """
        await asyncio.to_thread(self._probe)

    def _probe(self) -> None:
        probe = self.root / f".offload-probe.{os.getpid()}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise BlobStoreError(
                f"blob store folder {self.describe()} is not writable: {reason}"
            ) from None

    def path_of(self, key: str) -> Path:
        return self.root / check_key(key)

    def _temp_of(self, key: str) -> tuple[Path, Path]:
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, path.with_name(f".{path.name}.{os.getpid()}.{id(path):x}.tmp")

    def _put(self, key: str, data: bytes) -> None:
        path, tmp = self._temp_of(key)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk's half-written file: each retry left one
            raise

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        with self._failing("write", key):
            await asyncio.to_thread(self._put, key, data)
        return BLOB_REF_PREFIX + key

    @contextlib.contextmanager
    def _failing(self, what: str, key: str) -> Iterator[None]:
        """The folder's own failures (a full disk, a permission, a file where a folder
        should be) as `BlobStoreError`; a blob that is not there stays FileNotFoundError."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise BlobStoreError(
                f"blob store folder {self.describe()}: cannot {what} {key}: {reason}"
            ) from exc

    async def put_stream(
        self, key: str, source: StreamSource, content_type: str | None = None
    ) -> str:
        """Store a file path, binary file object or async iterator of bytes chunk by chunk
        into a temp file, then rename it into place: readers never see half a blob."""
        # The folder's own failures (a full disk) are BlobStoreError, as `put` raises; the
        # source's (a read error, a lost connection) come out as they are.
        with self._failing("write", key):
            path, tmp = await asyncio.to_thread(self._temp_of, key)
        try:
            with self._failing("write", key):
                f = open(tmp, "wb")  # noqa: ASYNC230 - each write runs in a thread
            with f:
                async for chunk in chunks_of(source):
                    with self._failing("write", key):
                        await asyncio.to_thread(f.write, chunk)
            with self._failing("write", key):
                await asyncio.to_thread(os.replace, tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return BLOB_REF_PREFIX + key

    async def get(self, key: str) -> bytes:
        with self._failing("read", key):
            return await asyncio.to_thread(self.path_of(key).read_bytes)

    async def delete(self, key: str) -> None:
        with self._failing("delete", key):
            await asyncio.to_thread(self.path_of(key).unlink, True)

    def url(self, key: str, ttl: timedelta) -> str | None:
        """None: a local folder has no links of its own; the web tier signs `/files` links."""
        check_key(key)
        return None

    async def keys(self, prefix: str) -> AsyncIterator[tuple[str, float]]:
        """Every stored key under the folder `prefix`, with its modification time (epoch s)."""
        for key, mtime in await asyncio.to_thread(lambda: list(self._walk(prefix))):
            yield key, mtime

    def _walk(self, prefix: str) -> Iterator[tuple[str, float]]:
        top = self.root / check_key(prefix.rstrip("/"))
        for folder, dirs, files in os.walk(top):
            dirs.sort()  # in name order, as S3 lists: job ids are time-ordered
            for name in sorted(files):
                if name.startswith("."):  # temp files and the signing key
                    continue
                path = Path(folder) / name
                try:
                    yield path.relative_to(self.root).as_posix(), path.stat().st_mtime
                except FileNotFoundError:
                    continue  # deleted while walking


def content_type_of(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def blob_path(key: str) -> str:
    """The web path that serves a blob (signed query parameters go after it)."""
    return "/files/" + quote(check_key(key))


def open_blobs(url: str) -> BlobStore:
    """`file:///abs/dir`, `file://relative/dir`, a bare folder path, or
    `s3://bucket/prefix?endpoint_url=…&region=…` (the `s3` extra).

    Raises:
        ConfigurationError: an unknown scheme, a bad S3 URL, or the `s3` extra missing.
    """
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = (parts.netloc + parts.path) if parts.scheme else url
        return FileBlobStore(path or "blobs")
    if parts.scheme == "s3":
        from .s3 import S3BlobStore

        return S3BlobStore.from_url(url)
    raise ConfigurationError(f"unsupported OFFLOAD_BLOBS_URL scheme {parts.scheme!r}")
