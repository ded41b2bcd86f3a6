"""The S3 blob store against a real S3 API (moto's server on loopback)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest

from offload.errors import BlobStoreError, ConfigurationError
from offload.stores import open_blobs
from offload.stores import s3 as s3_module
from offload.stores.blobs import FileBlobStore, put_stream
from offload.stores.s3 import MIN_PART_BYTES, S3BlobStore

from ..moto_support import create_bucket, moto_endpoint, unique_bucket

__all__ = ["moto_endpoint"]
pytestmark = pytest.mark.anyio


@pytest.fixture
async def s3_store(moto_endpoint: str) -> S3BlobStore:
    bucket = unique_bucket()
    await create_bucket(moto_endpoint, bucket)
    store = open_blobs(f"s3://{bucket}/app/blobs?endpoint_url={moto_endpoint}&region=us-east-1")
    assert isinstance(store, S3BlobStore)
    return store


async def test_put_get_delete_round_trip(s3_store: S3BlobStore) -> None:
    ref = await s3_store.put("reports/r1.pdf", b"%PDF-1.4 one")
    assert ref == "blob:reports/r1.pdf"
    assert await s3_store.get("reports/r1.pdf") == b"%PDF-1.4 one"
    assert s3_store.path_of("reports/r1.pdf") is None
    await s3_store.put("reports/r1.pdf", b"%PDF-1.4 two")  # replaces
    assert await s3_store.get("reports/r1.pdf") == b"%PDF-1.4 two"
    assert [k async for k, _ in s3_store.keys("reports")] == ["reports/r1.pdf"]
    await s3_store.delete("reports/r1.pdf")
    await s3_store.delete("reports/r1.pdf")  # a missing blob is not an error
    with pytest.raises(FileNotFoundError):
        await s3_store.get("reports/r1.pdf")
    with pytest.raises(ValueError):
        await s3_store.put("../escape", b"x")


def sigv4_verifies(link: str, secret: str) -> bool:
    """Whether a presigned link's X-Amz-Signature is SigV4's over its own query (expiry
    included), computed here independently of the SDK that made it."""
    parts = urlsplit(link)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = dict(query)["X-Amz-Signature"]
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
        for k, v in sorted(query)
        if k != "X-Amz-Signature"
    )
    request = "\n".join(
        ["GET", parts.path, canonical_query, f"host:{parts.netloc}", "", "host", "UNSIGNED-PAYLOAD"]
    )
    stamp, scope = dict(query)["X-Amz-Date"], dict(query)["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(request.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), given)


async def test_presigned_link_downloads_the_bytes_and_expires(s3_store: S3BlobStore) -> None:
    # Given a stored blob and a presigned link to it for 90 seconds
    await s3_store.put("exports/e1.csv", b"a,b\n1,2\n")
    before = datetime.now(UTC).replace(microsecond=0)
    link = s3_store.url("exports/e1.csv", timedelta(seconds=90))
    assert "/app/blobs/exports/e1.csv" in link
    async with httpx.AsyncClient() as client:
        # When it is followed, Then it downloads the bytes, as a file
        ok = await client.get(link)
        assert ok.status_code == 200 and ok.content == b"a,b\n1,2\n"
        assert 'filename="e1.csv"' in ok.headers["content-disposition"]
    # And it expires 90 s after it was made: moto's server does not refuse expired links
    # (AWS does), so check what AWS checks: the expiry is inside the SigV4 signature
    query = dict(parse_qsl(urlsplit(link).query))
    made = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert before <= made <= datetime.now(UTC) and query["X-Amz-Expires"] == "90"
    assert sigv4_verifies(link, "testing")
    stretched = link.replace("X-Amz-Expires=90", "X-Amz-Expires=999999")
    assert not sigv4_verifies(stretched, "testing")  # a longer life breaks the signature
    # And a link is never longer than SigV4 allows, nor shorter than a second
    week = dict(parse_qsl(urlsplit(s3_store.url("exports/e1.csv", timedelta(days=30))).query))
    assert week["X-Amz-Expires"] == str(7 * 86400)


async def _pieces(total: int, size: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield bytes([sent // size % 251]) * n
        sent += n


async def test_streaming_put_from_each_source_kind(s3_store: S3BlobStore, tmp_path: Path) -> None:
    # Small sources go up in one PUT; an async iterator above the part size in parts
    small = tmp_path / "small.bin"
    small.write_bytes(b"small file")
    assert await s3_store.put_stream("s/path.bin", small) == "blob:s/path.bin"
    assert await s3_store.get("s/path.bin") == b"small file"
    await s3_store.put_stream("s/fileobj.bin", io.BytesIO(b"from a file object"))
    assert await s3_store.get("s/fileobj.bin") == b"from a file object"
    total = MIN_PART_BYTES * 2 + 12345
    await put_stream(s3_store, "s/iter.bin", _pieces(total, 300_000))
    expected = b"".join([c async for c in _pieces(total, 300_000)])
    assert await s3_store.get("s/iter.bin") == expected


async def test_local_store_streams_into_place(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    total = 3 * 1024 * 1024 + 7
    ref = await store.put_stream("big/one.bin", _pieces(total, 65536))
    assert ref == "blob:big/one.bin"
    data = store.path_of("big/one.bin").read_bytes()
    assert len(data) == total
    assert [p.name for p in (tmp_path / "blobs" / "big").iterdir()] == ["one.bin"]  # no temp
    await store.put_stream("big/two.bin", io.BytesIO(b"xyz"))
    assert store.url("big/two.bin", timedelta(minutes=1)) is None  # the web tier signs
    assert sorted([k async for k, _ in store.keys("big")]) == ["big/one.bin", "big/two.bin"]


_BOUNDED = """
import asyncio, sys, tracemalloc
from offload.stores import open_blobs
store = open_blobs(sys.argv[1])

async def main():
    await store.put("warm-up.txt", b"the SDK loads its models once, before the count")
    tracemalloc.start()
    await store.put_stream("big/file.bin", sys.argv[2])
    print(tracemalloc.get_traced_memory()[1])

asyncio.run(main())
"""


@pytest.mark.timeout(120)
async def test_streaming_upload_of_a_large_file_holds_about_one_part(
    moto_endpoint: str, tmp_path: Path
) -> None:
    # Given a file of 12 parts' size (60 MiB) and a store with the smallest part size S3 allows
    bucket = unique_bucket()
    await create_bucket(moto_endpoint, bucket)
    url = f"s3://{bucket}?endpoint_url={moto_endpoint}&part_size={MIN_PART_BYTES}"
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for i in range(12):
            f.write(bytes([i]) * MIN_PART_BYTES)
    # When a separate process (so the moto server's own memory is not counted) streams it
    # up under tracemalloc
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _BOUNDED, url, str(big)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split()[-1])
    # Then it held a few parts' worth at most, far below the file's 60 MiB
    assert peak < 5 * MIN_PART_BYTES, f"peak {peak} bytes"
    # And the object is whole
    store = open_blobs(url)
    assert await store.get("big/file.bin") == big.read_bytes()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("s3://", "valid bucket name"),
        ("s3://Bad_Bucket/x", "valid bucket name"),
        ("s3://bucket/x?endpoint=http://127.0.0.1:1", "unknown S3 option 'endpoint'"),
        ("s3://bucket/x?endpoint_url=127.0.0.1:9000", "not an http(s) URL"),
        ("s3://bucket/x?part_size=1024", "part_size"),
        ("s3://bucket/x?addressing_style=sideways", "addressing_style"),
        ("s3://bucket/../x", "invalid S3 key prefix"),
        ("gs://bucket/x", "unsupported OFFLOAD_BLOBS_URL scheme 'gs'"),
    ],
)
def test_a_bad_s3_url_is_a_clear_configuration_error(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words.replace("(", r"\(").replace(")", r"\)")):
        open_blobs(url)


async def test_an_unreachable_bucket_is_a_backend_error(moto_endpoint: str) -> None:
    from offload.errors import BackendError

    store = open_blobs(f"s3://{unique_bucket('missing')}?endpoint_url={moto_endpoint}")
    with pytest.raises(BackendError, match="NoSuchBucket"):
        await store.put("a.txt", b"x")


async def test_a_store_that_accepts_and_never_answers_fails_the_call_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A frozen S3 (it accepts, never answers) held a put for good: the HTTP client waited
    # for the `100 Continue` of its upload with no limit. Each request is bounded now (here
    # made short for the test).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")  # (none: refused before any request)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setattr(s3_module, "S3_READ_TIMEOUT_S", 0.3)
    monkeypatch.setattr(s3_module, "S3_CONNECT_TIMEOUT_S", 0.3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        store = open_blobs(f"s3://bucket/app?endpoint_url=http://127.0.0.1:{port}&region=us-east-1")
        began = time.monotonic()
        with pytest.raises(BlobStoreError, match="S3 bucket"):
            await asyncio.wait_for(store.put("reports/a.txt", b"x"), 20)
        assert time.monotonic() - began < 30  # three tries of 0.3 s, and backoff
