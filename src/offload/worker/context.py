"""The handler's Context, re-exported: it lives in `offload.context`, beside the message
contract, so that handlers and the delivery kinds' handlers type it without the worker."""

from __future__ import annotations

from ..context import Context, SyncContext

__all__ = ["Context", "SyncContext"]
