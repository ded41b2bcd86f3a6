"""One OpenTelemetry trace from an HTTP request to the webhook, across real processes:
`offload web` and `offload worker` each configure the SDK (as a user would) and export their
spans to a file the test reads; a loopback receiver takes the webhook."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..receivers import Receiver
from ..tracing_support import read_spans, tree
from .conftest import Stack, backend_url

TEMPLATE = Path(__file__).parent / "traced_template"
#: The checkout's root: the processes import `tests.tracing_support` for their exporter.
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    shutil.copytree(TEMPLATE, tmp_path, dirs_exist_ok=True)
    with backend_url(request.param, tmp_path) as url:
        s = Stack(tmp_path, url)
        s.env["PYTHONPATH"] += os.pathsep + str(ROOT)
        try:
            yield s
        finally:
            s.stop()


#: The spans the trace must hold, by name: how many of each.
EXPECTED = {
    "POST /v1/jobs/{kind}": 1,
    "send reports": 1,
    "process reports": 1,
    "render report": 1,
    "render page": 2,
    "process offload.notify": 1,
    "POST": 1,
}


def _spans_of_trace(stack: Stack, trace_id: str) -> list[dict[str, Any]]:
    """The spans of `trace_id` from both processes, once every expected one has ended."""
    deadline = time.monotonic() + 30
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [
            s
            for name in ("web.jsonl", "worker.jsonl")
            for s in read_spans(stack.root / name)
            if s["trace_id"] == trace_id
        ]
        names = [s["name"] for s in found]
        if all(names.count(name) >= n for name, n in EXPECTED.items()):
            return found
        time.sleep(0.05)
    raise AssertionError(f"missing spans: {found}\n{stack.output()}")


def _one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (span,) = [s for s in spans if s["name"] == name]
    return span


def _start(stack: Stack, receiver: Receiver) -> None:
    stack.env.update(OFFLOAD_WEBHOOK_ALLOW_PRIVATE="1", OFFLOAD_NOTIFY_BACKOFF="0.05")
    stack.env["TRACE_FILE"] = str(stack.root / "web.jsonl")
    stack.start_web("tracedapp.web:app")
    stack.env["TRACE_FILE"] = str(stack.root / "worker.jsonl")
    stack.start_worker(app="tracedapp.handlers:app")


def test_one_trace_follows_a_job_from_the_request_to_its_webhook(stack: Stack) -> None:
    with Receiver(200) as receiver:
        _start(stack, receiver)
        # Given a job submitted over HTTP with a webhook,
        alice = stack.client("alice")
        response = alice.post(
            "/v1/jobs/traced.report",
            params={"callback_url": receiver.url},
            json={"user_id": "u1", "pages": 2},
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        # when the web process has recorded the request and the producer span,
        (send,) = [
            s
            for s in read_spans(stack.root / "web.jsonl")
            if s["name"] == "send reports" and s["attributes"]["messaging.message.id"] == job_id
        ]
        # then the trace holds the request, the job's run, its handler's spans and the
        # delivery, across both processes.
        spans = _spans_of_trace(stack, send["trace_id"])
        print("\n" + tree(spans))
        request = _one(spans, "POST /v1/jobs/{kind}")
        process = _one(spans, "process reports")
        notify = _one(spans, "process offload.notify")
        post = _one(spans, "POST")
        assert request["kind"] == "SERVER" and request["service"] == "web"
        assert request["attributes"]["http.route"] == "/v1/jobs/{kind}"
        # The producer span: a child of the request (through FastAPI's endpoint span).
        assert send["kind"] == "PRODUCER" and send["service"] == "web"
        ancestors = _ancestors(spans, send)
        assert request in ancestors
        assert send["attributes"] == {
            "messaging.system": "offload",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": "reports",
            "messaging.message.id": job_id,
            "offload.job.kind": "traced.report",
        }
        # The consumer span: in the worker, the producer's child and linked to it.
        assert process["kind"] == "CONSUMER" and process["service"] == "worker"
        assert process["pid"] != send["pid"]
        assert process["parent_id"] == send["span_id"]
        assert process["links"] == [{"trace_id": send["trace_id"], "span_id": send["span_id"]}]
        attributes = process["attributes"]
        assert attributes["messaging.operation.type"] == "process"
        assert attributes["messaging.destination.name"] == "reports"
        assert attributes["messaging.message.id"] == job_id
        assert attributes["offload.job.kind"] == "traced.report"
        assert attributes["offload.job.attempt"] == 1
        assert attributes["offload.job.state"] == "succeeded"
        assert process["status"] == "UNSET"
        # The handler's spans are the consumer span's children.
        render = _one(spans, "render report")
        assert render["parent_id"] == process["span_id"]
        pages = [s for s in spans if s["name"] == "render page"]
        assert [p["parent_id"] for p in pages] == [render["span_id"]] * 2
        # The delivery job continues the job's trace, and its webhook is a CLIENT span.
        assert notify["parent_id"] == process["span_id"]
        assert notify["links"] == [{"trace_id": send["trace_id"], "span_id": process["span_id"]}]
        assert notify["attributes"]["offload.job.kind"] == "offload.webhook"
        assert post["kind"] == "CLIENT" and post["parent_id"] == notify["span_id"]
        assert post["attributes"] == {
            "offload.delivery.channel": "webhook",
            "offload.notification.id": post["attributes"]["offload.notification.id"],
            "offload.job.id": job_id,
            "http.request.method": "POST",
            "url.full": receiver.url,
            "server.address": "127.0.0.1",
            "server.port": receiver.port,
            "http.response.status_code": 200,
        }
        # and the receiver got the context of that request: it could continue the trace.
        (hook,) = receiver.requests
        _, trace_id, parent_id, flags = hook.headers["traceparent"].split("-")
        assert (trace_id, parent_id) == (send["trace_id"], post["span_id"])
        assert int(flags, 16) & 1  # sampled


def _ancestors(spans: list[dict[str, Any]], span: dict[str, Any]) -> list[dict[str, Any]]:
    by_id = {s["span_id"]: s for s in spans}
    found = []
    while span["parent_id"] in by_id:
        span = by_id[span["parent_id"]]
        found.append(span)
    return found
