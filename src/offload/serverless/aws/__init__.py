"""offload on AWS Lambda: `http_handler` (API Gateway, over `create_app` with Mangum),
`sqs_handler` (the worker, triggered by the SQS queue of an `sqs://` OFFLOAD_URL) and
`relay_handler` (a scheduled sweep: lapsed leases and unsent outbox rows)."""

from __future__ import annotations

from .consumer import RelayFunction, SQSConsumer, relay_handler, sqs_handler
from .http import http_handler

__all__ = ["RelayFunction", "SQSConsumer", "http_handler", "relay_handler", "sqs_handler"]
