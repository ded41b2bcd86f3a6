"""Webhook and email delivery across real processes: `offload web` takes the options,
`offload worker` delivers, configured only by environment variables."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook

from ..receivers import MailSink, Receiver, parts
from .conftest import Stack

SECRET = "whsec_" + base64.b64encode(b"e2e webhook secret, 32 bytes!!!!").decode()


def _deliveries(stack: Stack, job_id: str, count: int) -> list[dict[str, Any]]:
    alice = stack.client("alice")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sent: list[dict[str, Any]] = alice.get(f"/v1/jobs/{job_id}").json()["deliveries"]
        if len(sent) == count and all(d["state"] == "delivered" for d in sent):
            return sent
        time.sleep(0.05)
    raise AssertionError(f"deliveries never completed: {sent}\n{stack.output()}")


def test_webhook_and_email_are_delivered_by_the_worker_process(stack: Stack) -> None:
    with Receiver(502, 200) as receiver, MailSink() as sink:
        stack.env.update(
            OFFLOAD_WEBHOOK_SECRETS=SECRET,
            OFFLOAD_WEBHOOK_ALLOW_PRIVATE="1",
            OFFLOAD_SMTP_URL=sink.url,
            OFFLOAD_EMAIL_FROM="jobs@e2e.example",
            OFFLOAD_PUBLIC_URL="https://e2e.example",
            OFFLOAD_NOTIFY_BACKOFF="0.05",
        )
        stack.start_web()
        stack.start_worker()
        # Given a job submitted with both delivery options,
        response = stack.client("alice").post(
            "/v1/jobs/e2e.export",
            params={"callback_url": receiver.url, "notify_email": "alice@example.com"},
            json={"user_id": "u1", "steps": 1},
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        # when it ends, the worker delivers both: the webhook on its second attempt,
        webhook, email = _deliveries(stack, job_id, 2)
        assert [a["code"] for a in webhook["attempts"]] == [502, 200]
        assert [a["code"] for a in email["attempts"]] == [250]
        # signed with the secret from the environment,
        last = receiver.requests[-1]
        body = Webhook(SECRET).verify(last.body, last.headers)
        assert body["type"] == "job.succeeded" and body["data"]["id"] == job_id
        link = body["data"]["result"]["file"]
        assert link.startswith(f"https://e2e.example/files/exports/{job_id}.txt?expires=")
        # and the email carries the same link in both parts.
        (message,) = sink.messages
        assert message["Message-ID"] == f"<{webhook['id']}@e2e.example>"
        found = dict(parts(message))
        assert (
            link.split("?")[0] in found["text/plain"] and link.split("?")[0] in found["text/html"]
        )
    assert orjson.loads(receiver.requests[0].body)["data"]["id"] == job_id
