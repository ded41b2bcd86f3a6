"""offload on AWS Lambda: `http_handler` (API Gateway, over `create_app` with Mangum),
`sqs_handler` (the worker, triggered by the SQS queue of an `sqs://` OFFLOAD_URL) and
`relay_handler` (a scheduled sweep: lapsed leases and unsent outbox rows)."""

from __future__ import annotations

#: The packages the `aws` and `postgres` extras bring that these functions import.
_EXTRAS = frozenset({"aioboto3", "aiobotocore", "boto3", "botocore", "mangum", "psycopg"})

try:
    from .consumer import RelayFunction, SQSConsumer, relay_handler, sqs_handler
    from .http import http_handler
except ModuleNotFoundError as exc:  # an extra not installed: say which
    _missing = (exc.name or "").partition(".")[0]
    if _missing not in _EXTRAS:
        raise
    raise ImportError(
        f"offload.serverless.aws needs {_missing!r} (not installed): "
        "pip install 'offload[aws,postgres]'"
    ) from exc

__all__ = ["RelayFunction", "SQSConsumer", "http_handler", "relay_handler", "sqs_handler"]
