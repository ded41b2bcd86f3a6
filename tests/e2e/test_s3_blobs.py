"""`offload web` and `offload worker` processes sharing an S3 bucket (moto's server on
loopback): a large message is checked in by the web process and read back by the worker,
and the result file is served by presigned links."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from offload._claim_check import CLAIM_CHECK_FIELD, payload_key
from offload.stores import open_blobs

from ..moto_support import create_bucket, moto_endpoint, unique_bucket
from .conftest import Stack

__all__ = ["moto_endpoint"]
pytestmark = pytest.mark.slow


def test_processes_check_in_a_large_message_and_link_the_result_on_s3(
    stack: Stack, moto_endpoint: str
) -> None:
    # Given a bucket, and a web and a worker process that keep their blobs in it
    bucket = unique_bucket()
    asyncio.run(create_bucket(moto_endpoint, bucket))
    blobs_url = f"s3://{bucket}/e2e?endpoint_url={moto_endpoint}"
    stack.env["OFFLOAD_BLOBS_URL"] = blobs_url
    stack.env["OFFLOAD_CLAIM_CHECK_BYTES"] = "1024"
    # Both probe the store before they start: moto's server, one Python process on a
    # machine the suite keeps busy, once took longer than the default 5 s to answer.
    stack.env["OFFLOAD_CONNECT_TIMEOUT"] = "30"
    assert stack.env["AWS_ACCESS_KEY_ID"] == "testing"  # the fixture's, inherited
    stack.start_web()
    stack.start_worker()
    client = stack.client()
    # When a message over the threshold is posted
    user = "u" * 3000
    answer = client.post("/v1/jobs/e2e.export", json={"user_id": user, "steps": 1})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    # Then the web process stored it as a blob, and the worker ran it with the whole message
    store = open_blobs(blobs_url)
    checked_in = asyncio.run(store.get(payload_key(job_id)))
    assert user.encode() in checked_in and CLAIM_CHECK_FIELD not in answer.text
    record = stack.wait_state(client, job_id, {"succeeded", "failed", "dead"})
    assert record["state"] == "succeeded", stack.output()
    # And the result links straight to S3: the record and the result route, presigned
    link = str(record["result"]["file"])  # type: ignore[index]
    assert link.startswith(f"{moto_endpoint}/{bucket}/e2e/exports/") and "X-Amz-Signature" in link
    result = client.get(f"/v1/jobs/{job_id}/result", follow_redirects=False)
    assert result.status_code == 303 and result.headers["location"].startswith(moto_endpoint)
    assert httpx.get(result.headers["location"]).content == f"report for {user}".encode()
