"""The SQS broker: messages on SQS, job rows in PostgreSQL, joined by an outbox."""

from __future__ import annotations

from .backend import SQSBackend

__all__ = ["SQSBackend"]
