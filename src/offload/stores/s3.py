"""S3-compatible object storage as a BlobStore, through aioboto3 (the `s3` extra)."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import BlobStoreError, ConfigurationError
from .blobs import BLOB_REF_PREFIX, StreamSource, check_key, chunks_of, content_type_of

#: Size of one part of a multipart upload (bytes); a streamed source above it goes up in
#: parts of this size, so no more than about one part is held in memory.
DEFAULT_PART_BYTES = 8 << 20
#: The smallest part S3 accepts (every part but the last).
MIN_PART_BYTES = 5 << 20
#: The largest part S3 accepts.
MAX_PART_BYTES = 5 << 30
#: Longest life of a presigned link S3 honours (SigV4: seven days).
MAX_PRESIGN_S = 7 * 86400
#: Seconds a request to S3 may take to connect, and to answer once sent (each try).
S3_CONNECT_TIMEOUT_S = 10.0
S3_READ_TIMEOUT_S = 30.0
#: Tries of one request (the first and two retries, the SDK's standard mode).
S3_ATTEMPTS = 3
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_OPTIONS = ("endpoint_url", "region", "region_name", "addressing_style", "part_size")
_MISSING = "OFFLOAD_BLOBS_URL=s3://… needs the s3 extra: pip install 'offload[s3]'"


@dataclass(frozen=True, kw_only=True)
class S3Location:
    """Where an S3 blob store keeps its objects, parsed from `s3://bucket/prefix?…`."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    part_size: int = DEFAULT_PART_BYTES

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Raises ConfigurationError naming what is wrong with `url`."""
        parts = urlsplit(url)
        bucket = parts.netloc
        if parts.scheme != "s3" or not _BUCKET.match(bucket) or ".." in bucket:
            raise ConfigurationError(
                f"OFFLOAD_BLOBS_URL {url!r}: expected s3://bucket/prefix with a valid bucket name"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - set(_OPTIONS))
        if unknown:
            raise ConfigurationError(
                f"OFFLOAD_BLOBS_URL: unknown S3 option {unknown[0]!r} "
                f"(known: endpoint_url, region, addressing_style, part_size)"
            )
        one = {name: values[-1] for name, values in query.items()}
        prefix = parts.path.strip("/")
        if prefix:
            check_prefix(prefix)
        return cls(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=_endpoint(one.get("endpoint_url")),
            region=one.get("region") or one.get("region_name") or None,
            addressing_style=_style(one.get("addressing_style") or "auto"),
            part_size=_part_size(one.get("part_size")),
        )

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)


def check_prefix(prefix: str) -> None:
    try:
        check_key(prefix)
    except ValueError:
        raise ConfigurationError(f"OFFLOAD_BLOBS_URL: invalid S3 key prefix {prefix!r}") from None


def _endpoint(raw: str | None) -> str | None:
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"OFFLOAD_BLOBS_URL: endpoint_url {raw!r} is not an http(s) URL")
    return raw


def _style(raw: str) -> str:
    if raw not in ("auto", "path", "virtual"):
        raise ConfigurationError("OFFLOAD_BLOBS_URL: addressing_style is auto, path or virtual")
    return raw


def _part_size(raw: str | None) -> int:
    if not raw:
        return DEFAULT_PART_BYTES
    try:
        size = int(raw)
    except ValueError:
        size = -1
    if not MIN_PART_BYTES <= size <= MAX_PART_BYTES:
        raise ConfigurationError(
            f"OFFLOAD_BLOBS_URL: part_size is bytes from {MIN_PART_BYTES} to {MAX_PART_BYTES}"
        )
    return size


#: What a HeadBucket error code means, as the start-up check says it.
_HEAD_ERRORS = {
    "404": "the bucket does not exist (NoSuchBucket)",
    "NoSuchBucket": "the bucket does not exist (NoSuchBucket)",
    "NotFound": "the bucket does not exist (NoSuchBucket)",
    "403": "access denied: check the AWS credentials and the bucket policy",
    "AccessDenied": "access denied: check the AWS credentials and the bucket policy",
    "301": "the bucket is in another region: set ?region=",
    "400": "the request was refused (bad request: check region and endpoint_url)",
}


def _shown_endpoint(url: str) -> str:
    """An endpoint URL without any user:password in it."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return url.replace(parts.netloc, parts.netloc.rpartition("@")[2], 1)


def _is_missing(exc: Exception) -> bool:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code")) in ("NoSuchKey", "404", "NotFound")


class S3BlobStore:
    """Blobs as objects in one bucket under a key prefix, on AWS S3 or any S3-compatible
    server (MinIO, Ceph, moto): `OFFLOAD_BLOBS_URL=s3://bucket/prefix?endpoint_url=…`.

    Credentials and the default region come from the standard AWS environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE,
    AWS_DEFAULT_REGION, instance and container roles). Each call opens a client on the
    running event loop and closes it, so one store serves any loop and thread.
    Download links are presigned S3 URLs: the bytes never pass through the web tier.
    """

    def __init__(self, location: S3Location) -> None:
        # Checked now, imported on first use: the SDK takes a while to import, and a web
        # process should be ready before it has served a link.
        if importlib.util.find_spec("aioboto3") is None:  # pragma: no cover - in dev installs
            raise ConfigurationError(_MISSING)
        self.location = location
        self._session: Any = None
        self._signer: Any = None  # a botocore client that only presigns (no I/O)

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        return cls(S3Location.parse(url))

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.location.bucket!r}, prefix={self.location.prefix!r})"

    def describe(self) -> str:
        """`s3://bucket/prefix at endpoint` (AWS: the region, or the SDK's default)."""
        loc = self.location
        where = f"s3://{loc.bucket}/{loc.prefix}" if loc.prefix else f"s3://{loc.bucket}"
        at = _shown_endpoint(loc.endpoint_url) if loc.endpoint_url else "AWS"
        return f"{where} at {at}" + (f" ({loc.region})" if loc.region else "")

    async def probe(self, timeout_s: float) -> None:
        """HeadBucket on the bucket, each connection and read bounded by `timeout_s`, with
        no retries: the bucket exists and these credentials may use it.

        Raises:
            BlobStoreError: one line naming the store and what failed.
        """
        from aiobotocore.config import AioConfig
        from botocore.exceptions import BotoCoreError, ClientError

        if self._session is None:
            import aioboto3

            self._session = aioboto3.Session()
        config = AioConfig(
            s3={"addressing_style": self.location.addressing_style},
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"total_max_attempts": 1},
        )
        try:
            async with self._session.client("s3", config=config, **self._config()) as s3:
                await s3.head_bucket(Bucket=self.location.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            why = _HEAD_ERRORS.get(code, f"HeadBucket answered {code}")
            raise BlobStoreError(f"blob store {self.describe()}: {why}") from None
        except BotoCoreError as exc:
            raise BlobStoreError(f"blob store {self.describe()}: {exc}") from None

    def _config(self) -> dict[str, Any]:
        loc = self.location
        return {"endpoint_url": loc.endpoint_url, "region_name": loc.region}

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[Any]:
        from aiobotocore.config import AioConfig
        from botocore.exceptions import BotoCoreError, ClientError

        if self._session is None:
            import aioboto3

            self._session = aioboto3.Session()
        config = AioConfig(
            s3={"addressing_style": self.location.addressing_style},
            # Bounded, so that a store that accepts and never answers fails the call (a
            # web request's claim check, a handler's put) instead of holding it for good:
            # the SDK's own 60 s a read, five times over, took minutes.
            connect_timeout=S3_CONNECT_TIMEOUT_S,
            read_timeout=S3_READ_TIMEOUT_S,
            retries={"mode": "standard", "total_max_attempts": S3_ATTEMPTS},
        )
        async with self._session.client("s3", config=config, **self._config()) as client:
            # No `Expect: 100-continue` on uploads: the HTTP client waits for the continue
            # with no time limit of its own, so a store that never answers held a put for good
            client.meta.events.register("before-sign.s3", _no_expect_continue)
            try:
                yield client
            except ClientError as exc:
                if _is_missing(exc):
                    raise FileNotFoundError(str(exc)) from exc
                raise BlobStoreError(f"S3 {self.location.bucket}: {exc}") from exc
            except BotoCoreError as exc:
                raise BlobStoreError(f"S3 {self.location.bucket}: {exc}") from exc

    def path_of(self, key: str) -> Path | None:
        check_key(key)
        return None

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        async with self._client() as s3:
            await s3.put_object(
                Bucket=self.location.bucket,
                Key=self.location.object_key(key),
                Body=data,
                ContentType=content_type or content_type_of(key),
            )
        return BLOB_REF_PREFIX + key

    async def put_stream(
        self, key: str, source: StreamSource, content_type: str | None = None
    ) -> str:
        """Store a file path, binary file object or async iterator of bytes: one PUT when it
        fits in one part, else a multipart upload of `part_size` parts (aborted on error),
        holding about one part in memory at a time."""
        part = self.location.part_size
        chunks = chunks_of(source, min(part, 1 << 20))
        head = bytearray()
        async for chunk in chunks:
            head += chunk
            if len(head) > part:
                break
        else:
            return await self.put(key, bytes(head), content_type)
        await self._multipart(key, head, chunks, content_type)
        return BLOB_REF_PREFIX + key

    async def _multipart(
        self,
        key: str,
        buffer: bytearray,
        rest: AsyncIterator[bytes],
        content_type: str | None,
    ) -> None:
        loc, part = self.location, self.location.part_size
        target = {"Bucket": loc.bucket, "Key": loc.object_key(key)}
        async with self._client() as s3:
            started = await s3.create_multipart_upload(
                **target, ContentType=content_type or content_type_of(key)
            )
            upload = {**target, "UploadId": started["UploadId"]}
            done: list[dict[str, Any]] = []

            async def send(body: bytes) -> None:
                answer = await s3.upload_part(**upload, PartNumber=len(done) + 1, Body=body)
                done.append({"PartNumber": len(done) + 1, "ETag": answer["ETag"]})

            try:
                async for chunk in rest:
                    buffer += chunk
                    while len(buffer) > part:  # keep a last part of at least one byte
                        with memoryview(buffer) as view:
                            body = bytes(view[:part])  # one copy, not a slice and a copy
                        del buffer[:part]
                        await send(body)
                        del body
                await send(bytes(buffer))
                await s3.complete_multipart_upload(**upload, MultipartUpload={"Parts": done})
            except BaseException:
                await s3.abort_multipart_upload(**upload)
                raise

    async def get(self, key: str) -> bytes:
        async with self._client() as s3:
            answer = await s3.get_object(
                Bucket=self.location.bucket, Key=self.location.object_key(key)
            )
            async with answer["Body"] as body:
                data: bytes = await body.read()
        return data

    async def delete(self, key: str) -> None:
        async with self._client() as s3:
            await s3.delete_object(Bucket=self.location.bucket, Key=self.location.object_key(key))

    async def keys(self, prefix: str) -> AsyncIterator[tuple[str, float]]:
        """Every stored key under the folder `prefix`, with its last-modified time (epoch s)."""
        loc = self.location
        below = loc.object_key(prefix.rstrip("/")) + "/"
        strip = len(loc.prefix) + 1 if loc.prefix else 0
        async with self._client() as s3:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=below)
            async for page in pages:
                for item in page.get("Contents", ()):
                    yield item["Key"][strip:], item["LastModified"].timestamp()

    def url(self, key: str, ttl: timedelta) -> str:
        """A presigned GET link to `key`, valid for `ttl` (1 s to 7 days), that downloads it
        as an attachment. Presigning is local computation: no request is made."""
        seconds = max(1, min(MAX_PRESIGN_S, int(ttl.total_seconds())))
        name = key.rsplit("/", 1)[-1]
        url: str = self._presigner().generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.location.bucket,
                "Key": self.location.object_key(key),
                "ResponseContentDisposition": f'attachment; filename="{name}"',
            },
            ExpiresIn=seconds,
        )
        return url

    def _presigner(self) -> Any:
        # botocore (under aioboto3) signs synchronously, so links can be made while a status
        # record is built, outside any event loop; this client never sends a request.
        if self._signer is None:
            import botocore.session
            from botocore.config import Config

            config = Config(
                signature_version="s3v4", s3={"addressing_style": self.location.addressing_style}
            )
            session = botocore.session.get_session()  # AWS_PROFILE and friends, as aioboto3
            self._signer = session.create_client("s3", config=config, **self._config())
        return self._signer


def _no_expect_continue(request: Any, **_: Any) -> None:
    """Drop the SDK's `Expect: 100-continue` from a request before it is signed and sent."""
    if "Expect" in request.headers:
        del request.headers["Expect"]
