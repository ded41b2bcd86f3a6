"""The retry policy, re-exported: it lives in `offload.retry`, a leaf both halves import."""

from __future__ import annotations

from ..retry import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_CAP_S,
    DEFAULT_JITTER,
    Backoff,
    should_retry,
)

__all__ = [
    "DEFAULT_BACKOFF_BASE_S",
    "DEFAULT_BACKOFF_CAP_S",
    "DEFAULT_JITTER",
    "Backoff",
    "should_retry",
]
