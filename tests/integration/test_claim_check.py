"""Claim checks and S3 links end to end: web tier, a real worker, SQLite or PostgreSQL, and
a folder or S3 (moto's server on loopback) as the blob store."""

from __future__ import annotations

import asyncio
import errno
import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from offload import App, Context, JobState, Message, Settings
from offload import _claim_check as claim_check_module
from offload._claim_check import CLAIM_CHECK_FIELD, payload_key, sweep
from offload._links import Presenter
from offload.contract import JobFilter
from offload.errors import BlobStoreError
from offload.web import create_app
from offload.worker.runner import Worker

from ..moto_support import create_bucket, moto_endpoint, unique_bucket
from ..ports import free_port
from ..services import (
    PgSchema,
    drop_redis_prefix,
    redis_prefix,
    redis_url,
    require_pg,
    require_redis,
)

__all__ = ["moto_endpoint"]
pytestmark = pytest.mark.anyio

#: Over the default threshold (256 KiB), under the web tier's body limit (1 MiB).
BIG = 300 * 1024


class Upload(Message):
    name: str
    text: str


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def jobs_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    if request.param == "redis":
        require_redis()
        prefix = redis_prefix()
        try:
            yield redis_url(prefix)
        finally:
            drop_redis_prefix(prefix)
        return
    require_pg()
    schema = PgSchema()
    try:
        yield await schema.create()
    finally:
        await schema.drop()


@pytest.fixture(params=["file", "s3"])
async def blobs_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return str(tmp_path / "blobs")
    endpoint: str = request.getfixturevalue("moto_endpoint")
    bucket = unique_bucket()
    await create_bucket(endpoint, bucket)
    return f"s3://{bucket}/offload?endpoint_url={endpoint}"


@pytest.fixture
async def app(jobs_url: str, blobs_url: str) -> AsyncIterator[App]:
    settings = Settings(
        url=jobs_url,
        blobs_url=blobs_url,
        secret_key=b"test-secret-of-32-bytes-or-more!",
        lease_s=5.0,
    )
    app = App("claim-check", settings=settings)
    app.message("t.upload")(Upload)
    await app.open()
    try:
        yield app
    finally:
        await app.close()


@asynccontextmanager
async def _serve(app: App) -> AsyncIterator[tuple[httpx.AsyncClient, Worker]]:
    worker = Worker(app)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.started.wait(), 10)
    api = create_app(app)
    try:
        async with api.router.lifespan_context(api):
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                yield c, worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


async def _done(client: httpx.AsyncClient, job_id: str) -> dict[str, object]:
    for _ in range(300):
        record: dict[str, object] = (await client.get(f"/v1/jobs/{job_id}")).json()
        if record["state"] in ("succeeded", "failed", "dead"):
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never finished")


async def test_a_large_payload_travels_as_a_blob_and_the_worker_reads_it_back(app: App) -> None:
    seen: list[int] = []

    @app.handles(Upload)
    async def upload(msg: Upload, ctx: Context) -> dict[str, int]:
        seen.append(len(msg.text))
        return {"chars": len(msg.text)}

    async with _serve(app) as (client, _worker):
        # Given a message over the threshold, posted to the web tier
        text = "x" * BIG
        answer = await client.post("/v1/jobs/t.upload", json={"name": "big", "text": text})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        # Then the stored envelope carries a claim check, and the payload is a blob
        row = await app.get(job_id)
        assert row is not None and set(row.payload) == {CLAIM_CHECK_FIELD}
        assert row.payload[CLAIM_CHECK_FIELD]["key"] == payload_key(job_id)
        assert len(await app.blobs.get(payload_key(job_id))) > BIG
        # And a small message stays inline
        small = await client.post("/v1/jobs/t.upload", json={"name": "small", "text": "hi"})
        small_row = await app.get(small.json()["id"])
        assert small_row is not None and small_row.payload == {"name": "small", "text": "hi"}
        # When the worker runs them, Then the handler gets the whole message both times
        record = await _done(client, job_id)
        assert record["state"] == "succeeded" and record["result"] == {"chars": BIG}
        assert (await _done(client, small.json()["id"]))["state"] == "succeeded"
        assert sorted(seen) == [2, BIG]
        # And the status API shows neither the payload nor its blob
        assert "payloads/" not in answer.text and "payloads/" not in str(record)
    # When the job is deleted, Then the sweep deletes its payload blob (and only it)
    assert await app.delete_jobs(JobFilter(kind="t.upload")) == 2
    assert await sweep(app, older_than_s=0) == 1
    with pytest.raises(FileNotFoundError):
        await app.blobs.get(payload_key(job_id))


async def test_a_replayed_key_and_a_failed_store_leave_no_payload_behind(app: App) -> None:
    text = "y" * BIG
    first = await app.enqueue(Upload(name="a", text=text), idempotency_key="k1")
    again = await app.enqueue(Upload(name="a", text=text), idempotency_key="k1")
    assert again.id == first.id and not again.created
    keys = getattr(app.blobs, "keys")  # noqa: B009 - both stores list their keys
    assert [k async for k, _ in keys("payloads")] == [payload_key(first.id)]
    assert await sweep(app, older_than_s=0) == 0  # its job exists: kept


async def test_a_missing_payload_blob_fails_the_job_for_good(app: App) -> None:
    @app.handles(Upload, max_attempts=3)
    async def upload(msg: Upload, ctx: Context) -> None:
        raise AssertionError("never runs without its message")

    job = await app.enqueue(Upload(name="gone", text="z" * BIG))
    await app.blobs.delete(payload_key(job.id))
    async with _serve(app):
        status = await job.wait(timedelta(seconds=20))
        assert status.state is JobState.FAILED and status.attempt == 1
        assert status.error is not None and "missing" in status.error.message


async def test_an_s3_result_link_redirects_to_a_presigned_url(
    moto_endpoint: str, tmp_path: Path
) -> None:
    bucket = unique_bucket()
    await create_bucket(moto_endpoint, bucket)
    settings = Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=f"s3://{bucket}/results?endpoint_url={moto_endpoint}",
        secret_key=b"test-secret-of-32-bytes-or-more!",
    )
    app = App("s3-links", settings=settings)
    app.message("t.upload")(Upload)

    @app.handles(Upload)
    async def upload(msg: Upload, ctx: Context) -> dict[str, str]:
        source = io.BytesIO(msg.text.encode())
        return {"file": await ctx.put_stream(f"out/{ctx.job_id}/{msg.name}", source)}

    async with app:
        async with _serve(app) as (client, _worker):
            answer = await client.post("/v1/jobs/t.upload", json={"name": "r.txt", "text": "hi"})
            record = await _done(client, answer.json()["id"])
            # The status record links straight to S3, presigned
            link = str(record["result"]["file"])  # type: ignore[index]
            assert link.startswith(f"{moto_endpoint}/{bucket}/results/out/")
            assert "X-Amz-Signature=" in link
            # The result route answers 303 to a presigned URL, never the bytes
            result = await client.get(f"/v1/jobs/{answer.json()['id']}/result")
            assert result.status_code == 303 and not result.content
            location = result.headers["location"]
            assert location.startswith(moto_endpoint) and "X-Amz-Expires=" in location
            # An offload /files link (made before the store moved to S3) redirects there too
            old = urlsplit(
                Presenter(b"test-secret-of-32-bytes-or-more!", 60).link(
                    f"out/{answer.json()['id']}/r.txt"
                )
            )
            moved = await client.get(f"{old.path}?{old.query}")
            assert moved.status_code == 303 and moved.headers["location"].startswith(moto_endpoint)
        async with httpx.AsyncClient() as s3:
            assert (await s3.get(location)).content == b"hi"


def test_the_threshold_is_a_setting_and_a_bad_one_is_a_configuration_error() -> None:
    from offload.errors import ConfigurationError

    assert Settings.from_env({}).claim_check_bytes == 256 * 1024
    assert Settings.from_env({"OFFLOAD_CLAIM_CHECK_BYTES": "0"}).claim_check_bytes == 0
    for bad in ("-1", "lots"):
        with pytest.raises(ConfigurationError, match=r"CLAIM_CHECK_BYTES|bad offload setting"):
            Settings.from_env({"OFFLOAD_CLAIM_CHECK_BYTES": bad})


async def test_a_zero_threshold_keeps_every_payload_inline(tmp_path: Path) -> None:
    settings = Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        claim_check_bytes=0,
    )
    async with App("inline", settings=settings) as app:
        app.message("t.upload")(Upload)
        job = await app.enqueue(Upload(name="inline", text="w" * BIG))
        row = await app.get(job.id)
        assert row is not None and row.payload["text"] == "w" * BIG
    assert not (tmp_path / "blobs" / "payloads").exists()


async def test_the_sweep_deletes_orphans_in_bounded_batches(
    moto_endpoint: str, tmp_path: Path
) -> None:
    # Given two payload blobs with no job (a rolled-back transaction leaves such) on S3
    bucket = unique_bucket()
    await create_bucket(moto_endpoint, bucket)
    settings = Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=f"s3://{bucket}?endpoint_url={moto_endpoint}",
        secret_key=b"test-secret-of-32-bytes-or-more!",
    )
    async with App("sweep", settings=settings) as app:
        for job_id in ("0193a1c2-0000-7000-8000-000000000001", "0193a1c2-0000-7000-8000-2"):
            await app.blobs.put(payload_key(job_id), b"{}")
        # When the sweep looks at one blob at a time, Then each run deletes one
        assert await sweep(app) == 0  # younger than the grace period: kept
        assert await sweep(app, older_than_s=0, limit=1) == 1
        assert await sweep(app, older_than_s=0, limit=1) == 1
        assert await sweep(app, older_than_s=0) == 0


@pytest.mark.parametrize("store", ["s3 down", "folder unwritable"])
async def test_a_blob_store_that_fails_is_named_by_the_503(tmp_path: Path, store: str) -> None:
    # S3 down (nothing listens on its endpoint, a loopback port), or a folder whose
    # `payloads` is a file: a large payload cannot be checked in, so the request is refused
    # and nothing is stored; the 503 names the blob store (S3's said the job backend was
    # unavailable, which answered all along; the folder's was a 500).
    if store == "s3 down":
        blobs = f"s3://bucket/offload?endpoint_url=http://127.0.0.1:{free_port()}"
    else:
        (tmp_path / "blobs").mkdir()
        (tmp_path / "blobs" / "payloads").write_bytes(b"")
        blobs = str(tmp_path / "blobs")
    settings = Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=blobs,
        secret_key=b"test-secret-of-32-bytes-or-more!",
    )
    app = App("claim-check", settings=settings)
    app.message("t.upload")(Upload)
    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as web:
            refused = await web.post("/v1/jobs/t.upload", json={"name": "a", "text": "x" * BIG})
            assert refused.status_code == 503, refused.text
            assert refused.json()["detail"] == "the blob store is unavailable; try again shortly"
            assert refused.json()["type"].endswith("/backend-unavailable")
            assert await app.count_jobs(JobFilter()) == 0


@asynccontextmanager
async def _on_a_folder(tmp_path: Path, name: str) -> AsyncIterator[App]:
    """An open App on a SQLite file and a blob folder, its uploads declared."""
    settings = Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"t" * 32,
    )
    async with App(name, settings=settings) as app:
        app.message("t.upload")(Upload)
        yield app


async def _kept_and_an_orphan(app: App, orphan_id: str) -> None:
    """Three payloads of stored jobs, and one of a job that is not there."""
    for n in range(3):
        await app.enqueue(Upload(name=str(n), text="x" * BIG))
    await app.blobs.put(payload_key(orphan_id), b"{}")


async def test_the_sweep_goes_on_past_payloads_whose_jobs_are_kept(tmp_path: Path) -> None:
    # Given three payloads of jobs kept (dead ones are kept for good) before an orphan: a
    # sweep of two at a time always began at the oldest, and never reached the orphan.
    async with _on_a_folder(tmp_path, "sweep") as app:
        await _kept_and_an_orphan(app, "ffffffff-0000-7000-8000-000000000001")  # last by name
        found = [await sweep(app, older_than_s=0, limit=2) for _ in range(3)]
        assert found == [0, 1, 0]
        keys = getattr(app.blobs, "keys")  # noqa: B009 - the folder lists its keys
        assert len([k async for k, _ in keys("payloads")]) == 3


async def test_a_batch_whose_second_payload_cannot_be_stored_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first payload's blob was written before the store failed, outside the clean-up.
    blobs = tmp_path / "blobs"
    async with _on_a_folder(tmp_path, "full") as app:
        replace = os.replace
        calls: list[str] = []

        def full_after_one(src: Any, dst: Any) -> None:
            calls.append(str(dst))
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            replace(src, dst)

        monkeypatch.setattr("offload.stores.blobs.os.replace", full_after_one)
        with pytest.raises(BlobStoreError, match="No space left on device"):
            await app.enqueue_many([Upload(name=str(n), text="x" * BIG) for n in range(3)])
        assert await app.count_jobs(JobFilter()) == 0
    # Neither the first payload nor the half-written second one's temp file is left.
    assert [p.name for p in blobs.rglob("*") if p.is_file() and p.name != ".signing-key"] == []


async def test_the_sweep_goes_on_in_a_listing_of_any_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some S3-compatible stores list keys in another order than by name: a sweep that went
    # on after the last key it had seen by name skipped orphans for good.
    async with _on_a_folder(tmp_path, "sweep") as app:
        await _kept_and_an_orphan(app, "00000000-0000-7000-8000-000000000001")  # first by name
        keys = getattr(app.blobs, "keys")  # noqa: B009 - the folder lists its keys

        async def backwards(prefix: str) -> AsyncIterator[tuple[str, float]]:
            for key in reversed([k async for k in keys(prefix)]):
                yield key

        monkeypatch.setattr(app.blobs, "keys", backwards)
        found = [await sweep(app, older_than_s=0, limit=2) for _ in range(3)]
        assert found == [0, 1, 0]


async def test_a_failed_batch_waits_a_bounded_time_to_delete_what_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a store that does not answer, each delete waited out its own deadline, one after
    # another (275 s for a batch of five); what is left is an orphan for the sweep.
    async with _on_a_folder(tmp_path, "stalled") as app:
        put = app.blobs.put
        written: list[str] = []

        async def second_fails(key: str, data: bytes, content_type: str | None = None) -> str:
            written.append(key)
            if len(written) > 1:
                raise BlobStoreError("the store failed")
            return await put(key, data, content_type)

        async def never_answers(key: str) -> None:
            await asyncio.sleep(3600)

        monkeypatch.setattr(app.blobs, "put", second_fails)
        monkeypatch.setattr(app.blobs, "delete", never_answers)
        monkeypatch.setattr(claim_check_module, "DISCARD_WAIT_S", 0.2)
        began = asyncio.get_running_loop().time()
        with pytest.raises(BlobStoreError, match="the store failed"):
            await app.enqueue_many([Upload(name=str(n), text="x" * BIG) for n in range(3)])
        assert asyncio.get_running_loop().time() - began < 10
        assert await app.count_jobs(JobFilter()) == 0
